"""Tabular Q-learning strategy: acts greedily on a table trained offline by ``tools.train``.

The model file carries its feature definition (``nodes.strategy.rl.FeatureSpec``), so the live
states are computed exactly as in training; the plugin decides on every ``decision_every``-th tick
of a product, with its position in order-size units as the last part of the state. See docs/rl.md.
"""
import dataclasses
import random
from decimal import Decimal
from pathlib import Path

from nodes.config import ROOT

from . import rl
from .base import Strategy


@dataclasses.dataclass(frozen=True, kw_only=True)
class QLearnParams:
    model_path: str = ""          # the trained table (tools.train --out); relative: to the checkout
    size: Decimal = Decimal(0)    # one unit; 0: strategy.order_size
    epsilon: float = 0.0          # live exploration (0: greedy); seeded by strategy.seed

    def __post_init__(self):
        if not 0.0 <= self.epsilon <= 1.0 or self.size < 0:
            raise ValueError("epsilon must be in [0, 1] and size >= 0")


class QLearn(Strategy):
    Params = QLearnParams

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        self.model = None
        self.features = {}
        self.count = {p: 0 for p in ctx.products}
        self.last = {p: None for p in ctx.products}
        self.rng = random.Random(ctx.seed)

    def model_file(self) -> Path:
        p = Path(self.params.model_path)
        return p if p.is_absolute() else ROOT / p

    def start(self):
        key = f"strategy.params.{self.name}.model_path"
        if not self.params.model_path:
            raise ValueError(f"{key}: the qlearn strategy needs a trained model (python -m tools.train)")
        try:
            self.model = rl.QModel.load(self.model_file())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{key}: cannot load {self.model_file()}: {e}") from None
        self.features = {p: rl.Features(self.model.spec) for p in self.ctx.products}
        if self.ctx.log:
            self.ctx.log.info("%s: loaded %s (%d states, %s visited)", self.name, self.model_file(),
                              self.model.spec.n_states, sum(1 for v in self.model.visits if v))

    def on_tick(self, tick, env):
        p = tick.product
        spec = self.model.spec
        self.count[p] += 1
        if self.count[p] % spec.decision_every:
            return None
        _, _, mid = rl.tick_quotes(tick)
        if mid <= 0:
            return None
        ms = self.features[p].update(float(mid))
        if ms is None:
            return None
        units = max(0, min(spec.max_units, self.units(p)))
        if self.params.epsilon and self.rng.random() < self.params.epsilon:
            a = self.rng.choice(self.model.valid(units))
        else:
            a = self.model.act(ms, units)
        self.last[p] = {"state": list(ms), "units": units, "action": rl.ACTIONS[a]}
        if a == rl.BUY:
            return [self.buy(p)]
        if a == rl.SELL:
            return [self.sell(p)]
        return None

    def state(self):
        return {"model": str(self.model_file()) if self.params.model_path else None,
                "last": self.last, "units": {p: self.units(p) for p in self.ctx.products}}
