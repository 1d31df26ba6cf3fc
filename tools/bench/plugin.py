"""The tick-to-trade benchmark's strategy plugin: one market order on every tick.

Loaded by dotted path like any plugin (``[strategy] plugins = ["tools.bench.plugin:EveryTick"]``).
It alternates buying and selling one unit so the position stays within a unit of flat, which keeps
every risk check passing with ordinary limits. The strategy node's gate still applies: a tick that
arrives while the previous order is working is suppressed (``suppressed_pending``), so the
benchmark paces ticks well apart.
"""
import dataclasses
from decimal import Decimal

from nodes.strategy.base import Strategy


@dataclasses.dataclass(frozen=True, kw_only=True)
class EveryTickParams:
    size: Decimal = Decimal(0)          # order size; 0: strategy.order_size


class EveryTick(Strategy):
    Params = EveryTickParams

    def on_tick(self, tick, env):
        p = tick.product
        return [self.sell(p)] if self.ctx.position(p) > 0 else [self.buy(p)]
