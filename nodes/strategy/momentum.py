"""Momentum: long ``max_units`` after the price rose more than ``threshold_bps`` over the last
``lookback`` ticks, flat after it fell more than that; in between the target is kept. Long-only.
"""
import dataclasses
from collections import deque
from decimal import Decimal

from .base import Strategy, price_of


@dataclasses.dataclass(frozen=True, kw_only=True)
class MomentumParams:
    lookback: int = 20                     # ticks
    threshold_bps: Decimal = Decimal("10")  # |return| over the lookback that flips the target
    max_units: int = 1
    size: Decimal = Decimal(0)             # 0: strategy.order_size

    def __post_init__(self):
        if self.lookback < 1 or self.threshold_bps < 0 or self.max_units < 1 or self.size < 0:
            raise ValueError("need lookback >= 1, threshold_bps >= 0, max_units >= 1, size >= 0")


class Momentum(Strategy):
    Params = MomentumParams

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        self.hist = {p: deque(maxlen=params.lookback + 1) for p in ctx.products}
        self.target = {p: 0 for p in ctx.products}
        self.last_ret_bps = {p: None for p in ctx.products}

    def on_tick(self, tick, env):
        p = tick.product
        h = self.hist[p]
        h.append(price_of(tick))
        if len(h) <= self.params.lookback or h[0] <= 0:
            return None
        ret_bps = (h[-1] / h[0] - 1) * 10000
        self.last_ret_bps[p] = ret_bps
        th = self.params.threshold_bps
        if ret_bps > th:
            self.target[p] = self.params.max_units
        elif ret_bps < -th:
            self.target[p] = 0
        return self.toward(p, self.target[p])

    def state(self):
        return {p: {"return_bps": str(self.last_ret_bps[p]) if self.last_ret_bps[p] is not None else None,
                    "target_units": self.target[p], "units": self.units(p)} for p in self.ctx.products}
