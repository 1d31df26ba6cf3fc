"""A channel breakout, long-only: the example plugin of docs/strategies.md.

Long ``max_units`` once the mid rises above the highest mid of the previous ``window`` ticks, flat
once it falls below their lowest. Enable it with
``plugins = ["nodes.strategy.examples.breakout:Breakout"]``; its table is ``[strategy.params.breakout]``.
"""
import dataclasses
from collections import deque
from decimal import Decimal

from nodes.strategy.base import Strategy, price_of


@dataclasses.dataclass(frozen=True, kw_only=True)
class BreakoutParams:
    window: int = 20                  # ticks in the channel
    max_units: int = 1                # long target, in order sizes
    size: Decimal = Decimal(0)        # order size; 0: strategy.order_size

    def __post_init__(self):          # a ValueError stops the node at start, naming the table
        if self.window < 2 or self.max_units < 1 or self.size < 0:
            raise ValueError(f"need window >= 2, max_units >= 1, size >= 0, got {self}")


class Breakout(Strategy):
    Params = BreakoutParams

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        self.mids = {p: deque(maxlen=params.window) for p in ctx.products}
        self.target = {p: 0 for p in ctx.products}

    def on_tick(self, tick, env):
        p = tick.product
        mids, px = self.mids[p], price_of(tick)
        if len(mids) == mids.maxlen:
            if px > max(mids):
                self.target[p] = self.params.max_units
            elif px < min(mids):
                self.target[p] = 0
        mids.append(px)
        return self.toward(p, self.target[p])   # one order unit toward the target, or None

    def state(self):                  # shown by `tickmesh ctl query strategy strategy`
        return {p: {"target_units": self.target[p], "units": self.units(p)} for p in self.ctx.products}
