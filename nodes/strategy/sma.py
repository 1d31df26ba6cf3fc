"""SMA crossover: long ``max_units`` while the fast average is above the slow one, flat below.

Averages are of the tick's mid (exact Decimal sums over fixed windows). ``threshold_bps`` is a
hysteresis band: the target changes only when fast crosses slow by more than it, so noise around
the cross does not churn orders (and fees). Long-only: spot venues do not lend.
"""
import dataclasses
from collections import deque
from decimal import Decimal

from .base import Strategy, price_of


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmaParams:
    fast: int = 5                         # ticks in the fast average
    slow: int = 20                        # ticks in the slow average
    threshold_bps: Decimal = Decimal("1")  # fast must beat slow by this much (basis points) to flip
    max_units: int = 1                    # long target, in order sizes
    size: Decimal = Decimal(0)            # order size; 0: strategy.order_size

    def __post_init__(self):
        if not 1 <= self.fast < self.slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={self.fast} slow={self.slow}")
        if self.max_units < 1 or self.threshold_bps < 0 or self.size < 0:
            raise ValueError("max_units must be >= 1, threshold_bps and size >= 0")


class _Avg:
    __slots__ = ("n", "win", "total")

    def __init__(self, n):
        self.n, self.win, self.total = n, deque(), Decimal(0)

    def add(self, x):
        self.win.append(x)
        self.total += x
        if len(self.win) > self.n:
            self.total -= self.win.popleft()

    @property
    def ready(self):
        return len(self.win) == self.n

    @property
    def value(self):
        return self.total / self.n


class SmaCrossover(Strategy):
    Params = SmaParams

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        self.fast = {p: _Avg(params.fast) for p in ctx.products}
        self.slow = {p: _Avg(params.slow) for p in ctx.products}
        self.target = {p: 0 for p in ctx.products}

    def on_tick(self, tick, env):
        p = tick.product
        f, s = self.fast[p], self.slow[p]
        px = price_of(tick)
        f.add(px)
        s.add(px)
        if not s.ready:
            return None
        fv, sv = f.value, s.value
        band = sv * self.params.threshold_bps / 10000
        if fv > sv + band:
            self.target[p] = self.params.max_units
        elif fv < sv - band:
            self.target[p] = 0
        return self.toward(p, self.target[p])

    def state(self):
        return {p: {"fast": str(self.fast[p].value) if self.fast[p].ready else None,
                    "slow": str(self.slow[p].value) if self.slow[p].ready else None,
                    "target_units": self.target[p], "units": self.units(p)} for p in self.ctx.products}
