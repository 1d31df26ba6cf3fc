"""Tabular Q-learning for the ``qlearn`` strategy: features, the model file, the simulator (exact
Decimal accounting), the training loop and a synthetic market for tests and demos.

The same ``Features`` class turns prices into states offline (``tools.train``) and live (the
``qlearn`` plugin), so a trained table means the same thing in both places. See docs/rl.md.

* **State** ``(short return bin, long return bin, band bin, units)``: the log return over the last
  ``short`` and ``long`` decision steps, each divided by ``sigma * sqrt(lookback)`` (``sigma`` = the
  stddev of one-step log returns over ``vol_window``) and cut at ``ret_edges``; the position of the
  log price in its volatility band, ``(x - mean) / (band_k * std)`` over ``band_window``, cut at
  ``band_edges``; and the current position in order-size units, ``0..max_units`` (long-only).
* **Actions**: 0 hold, 1 buy one unit, 2 sell one unit (invalid ones - buying at ``max_units``,
  selling flat - are never chosen).
* **Reward**: the change in marked PnL over one step, net of fees: the trade happens at the
  quote (buy at the ask, sell at the bid) with a fee of ``fee_rate * notional``, and the position
  is marked to the mid. It is computed exactly in Decimal and handed to the learner (a statistic)
  as a float in basis points of one unit's notional.
"""
import bisect
import dataclasses
import json
import math
from collections import deque
from decimal import Decimal

import numpy as np

from proto import jsonl, topics
from proto.codec import Envelope
from proto.messages import Tick

MODEL_FORMAT = "tickmesh.qlearn/1"
HOLD, BUY, SELL = 0, 1, 2
ACTIONS = ("hold", "buy", "sell")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    short: int = 5
    long: int = 30
    vol_window: int = 50
    band_window: int = 50
    band_k: float = 2.0
    ret_edges: tuple = (-1.0, -0.25, 0.25, 1.0)
    band_edges: tuple = (-1.0, 0.0, 1.0)
    max_units: int = 1
    decision_every: int = 1          # decide on every Nth tick of a product

    def __post_init__(self):
        if not (1 <= self.short < self.long) or self.vol_window < 2 or self.band_window < 2:
            raise ValueError("need 1 <= short < long, vol_window >= 2, band_window >= 2")
        if self.max_units < 1 or self.decision_every < 1:
            raise ValueError("max_units and decision_every must be >= 1")
        object.__setattr__(self, "ret_edges", tuple(float(x) for x in self.ret_edges))
        object.__setattr__(self, "band_edges", tuple(float(x) for x in self.band_edges))

    @property
    def n_market(self) -> int:
        nr = len(self.ret_edges) + 1
        return nr * nr * (len(self.band_edges) + 1)

    @property
    def n_states(self) -> int:
        return self.n_market * (self.max_units + 1)

    def index(self, mstate, units: int) -> int:
        nr, nb = len(self.ret_edges) + 1, len(self.band_edges) + 1
        s, l, b = mstate
        return ((s * nr + l) * nb + b) * (self.max_units + 1) + units

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


class Features:
    """Incremental market state of one product: feed prices, get ``(s, l, b)`` or None (warm-up)."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.need = max(spec.long + 1, spec.vol_window + 1, spec.band_window)
        self.lp = deque(maxlen=self.need)

    def update(self, price: float):
        sp = self.spec
        self.lp.append(math.log(price))
        if len(self.lp) < self.need:
            return None
        x = list(self.lp)
        n = sp.vol_window
        rets = [x[i] - x[i - 1] for i in range(len(x) - n, len(x))]
        m = sum(rets) / n
        sigma = math.sqrt(sum((r - m) ** 2 for r in rets) / (n - 1)) or 1e-12
        zs = (x[-1] - x[-1 - sp.short]) / (sigma * math.sqrt(sp.short))
        zl = (x[-1] - x[-1 - sp.long]) / (sigma * math.sqrt(sp.long))
        w = x[-sp.band_window:]
        mu = sum(w) / len(w)
        sd = math.sqrt(sum((v - mu) ** 2 for v in w) / (len(w) - 1))
        band = (x[-1] - mu) / (sp.band_k * sd) if sd > 0 else 0.0
        return (bisect.bisect_right(sp.ret_edges, zs), bisect.bisect_right(sp.ret_edges, zl),
                bisect.bisect_right(sp.band_edges, band))


class QModel:
    """A Q-table over ``spec.n_states`` states x 3 actions."""

    def __init__(self, spec: FeatureSpec, q=None, visits=None, meta: dict = None):
        self.spec = spec
        self.q = q if q is not None else [[0.0, 0.0, 0.0] for _ in range(spec.n_states)]
        self.visits = visits if visits is not None else [0] * spec.n_states
        self.meta = dict(meta or {})

    def valid(self, units: int):
        acts = [HOLD]
        if units < self.spec.max_units:
            acts.append(BUY)
        if units > 0:
            acts.append(SELL)
        return acts

    def greedy(self, state: int, units: int) -> int:
        """Best valid action (ties: hold, then buy, then sell; an unseen state holds)."""
        row = self.q[state]
        best, bq = HOLD, row[HOLD]
        for a in self.valid(units)[1:]:
            if row[a] > bq:
                best, bq = a, row[a]
        return best

    def act(self, mstate, units: int) -> int:
        return self.greedy(self.spec.index(mstate, units), units)

    def to_json(self) -> dict:
        return {"format": MODEL_FORMAT, "actions": list(ACTIONS), "features": self.spec.to_json(),
                **self.meta, "q": self.q, "visits": self.visits}

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, sort_keys=True, separators=(",", ":"))
            f.write("\n")

    @classmethod
    def load(cls, path) -> "QModel":
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} model")
        spec = FeatureSpec(**d["features"])
        q, visits = d["q"], d.get("visits") or [0] * spec.n_states
        if len(q) != spec.n_states or any(len(r) != 3 for r in q):
            raise ValueError(f"{path}: table has {len(q)} rows, the features need {spec.n_states}")
        meta = {k: v for k, v in d.items() if k not in ("format", "actions", "features", "q", "visits")}
        return cls(spec, [[float(x) for x in r] for r in q], [int(v) for v in visits], meta)


# --- market series ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Series:
    """One product's decision steps: exact quotes and the market state at each step."""
    product: str
    bid: list
    ask: list
    mid: list
    mstate: list        # (s, l, b) or None during warm-up

    def __len__(self):
        return len(self.mid)


def tick_quotes(tick):
    """(bid, ask, mid) as Decimals; a tick without both sides trades at its last price."""
    if tick.bid > 0 and tick.ask > 0 and tick.ask >= tick.bid:
        return tick.bid, tick.ask, (tick.bid + tick.ask) / 2
    return tick.price, tick.price, tick.price


def build_series(ticks_by_product: dict, spec: FeatureSpec) -> list:
    out = []
    for product in sorted(ticks_by_product):
        bid, ask, mid, ms = [], [], [], []
        feats = Features(spec)
        for i, t in enumerate(ticks_by_product[product]):
            if (i + 1) % spec.decision_every:
                continue
            b, a, m = tick_quotes(t)
            if m <= 0:
                continue
            bid.append(b)
            ask.append(a)
            mid.append(m)
            ms.append(feats.update(float(m)))
        if len(mid) > feats.need + 1:
            out.append(Series(product, bid, ask, mid, ms))
    return out


def ticks_from_file(path, products=()) -> dict:
    """Tick records per product from a store file, in file order."""
    out = {}
    for env in jsonl.read(path):
        if type(env.msg) is Tick and env.topic.startswith(topics.MD_TICK):
            p = env.msg.product
            if not products or p in products:
                out.setdefault(p, []).append(env.msg)
    return out


# --- simulation with exact money ------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    pnl: Decimal = Decimal(0)          # PnL after closing out at the end, all fees included
    fees: Decimal = Decimal(0)
    trades: int = 0
    steps: int = 0
    buy_hold_pnl: Decimal = Decimal(0)  # one unit bought at the first decision, sold at the end

    def to_json(self):
        return {"pnl": str(self.pnl), "fees": str(self.fees), "trades": self.trades, "steps": self.steps,
                "buy_hold_pnl": str(self.buy_hold_pnl)}


def _trade(a, ask, bid, size, fee_rate):
    """(cash change, qty change, fee) of action ``a`` at these quotes."""
    if a == BUY:
        notional = ask * size
        fee = notional * fee_rate
        return -notional - fee, size, fee
    notional = bid * size
    fee = notional * fee_rate
    return notional - fee, -size, fee


def evaluate(model: QModel, series: list, *, fee_rate: Decimal, size: Decimal = Decimal(1)) -> Result:
    """Run the greedy policy over ``series`` with exact accounting (the same fee model as training)."""
    res = Result()
    for s in series:
        cash, qty, units = Decimal(0), Decimal(0), 0
        first = None
        for t in range(len(s)):
            ms = s.mstate[t]
            if ms is None:
                continue
            if first is None:
                first = t
            a = model.act(ms, units)
            if a != HOLD:
                dc, dq, fee = _trade(a, s.ask[t], s.bid[t], size, fee_rate)
                cash += dc
                qty += dq
                res.fees += fee
                res.trades += 1
                units += 1 if a == BUY else -1
            res.steps += 1
        if units > 0:        # close out at the bid, fee included: no PnL left on paper
            dc, dq, fee = _trade(SELL, s.ask[-1], s.bid[-1], qty, fee_rate)
            cash += dc
            qty += dq
            res.fees += fee
            res.trades += 1
        res.pnl += cash
        if first is not None:
            entry = s.ask[first] * size
            exit_ = s.bid[-1] * size
            res.buy_hold_pnl += exit_ - entry - (entry + exit_) * fee_rate
    return res


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainParams:
    episodes: int = 40
    alpha: float = 0.1
    gamma: float = 0.95
    epsilon_start: float = 1.0
    epsilon_end: float = 0.02
    fee_rate: Decimal = Decimal("0.006")
    seed: int = 0


def train(series: list, spec: FeatureSpec, tp: TrainParams, progress=None) -> QModel:
    """Q-learning over ``series`` for ``tp.episodes`` passes. Deterministic for a given seed.

    ``progress(episode, episodes, info)`` is called after every episode."""
    model = QModel(spec)
    Q, visits = model.q, model.visits
    rng = np.random.default_rng(tp.seed)
    one = Decimal(1)
    fee_rate = tp.fee_rate
    alpha, gamma = tp.alpha, tp.gamma
    U = spec.max_units
    # per series, per step: exact one-unit mark change and notional (reward scale), computed once
    pre = []
    for s in series:
        dmid = [s.mid[t + 1] - s.mid[t] for t in range(len(s) - 1)]
        idx0 = [spec.index(ms, 0) if ms is not None else -1 for ms in s.mstate]
        costs = {}
        pre.append((s, dmid, idx0, costs))
    for ep in range(tp.episodes):
        frac = ep / max(1, tp.episodes - 1)
        eps = tp.epsilon_start + (tp.epsilon_end - tp.epsilon_start) * frac
        total_r = Decimal(0)
        trades = 0
        for s, dmid, idx0, _ in pre:
            n = len(s) - 1
            explore = rng.random(n)
            pick = rng.random(n)
            units = 0
            for t in range(n):
                i0 = idx0[t]
                if i0 < 0 or idx0[t + 1] < 0:
                    continue
                st = i0 + units
                valid = [HOLD]
                if units < U:
                    valid.append(BUY)
                if units > 0:
                    valid.append(SELL)
                row = Q[st]
                if explore[t] < eps:
                    a = valid[int(pick[t] * len(valid))]
                else:
                    a = HOLD
                    for b in valid[1:]:
                        if row[b] > row[a]:
                            a = b
                # exact reward: marked PnL change over the step, net of fees
                mid = s.mid[t]
                if a == HOLD:
                    cost = Decimal(0)
                    nu = units
                else:
                    dc, dq, fee = _trade(a, s.ask[t], s.bid[t], one, fee_rate)
                    cost = dc + dq * mid       # <= 0: spread paid + fee, marked at the mid
                    nu = units + (1 if a == BUY else -1)
                    trades += 1
                dpnl = nu * dmid[t] + cost
                total_r += dpnl
                r = float(dpnl / mid) * 1e4
                s2 = idx0[t + 1] + nu
                row2 = Q[s2]
                best2 = row2[HOLD]
                if nu < U and row2[BUY] > best2:
                    best2 = row2[BUY]
                if nu > 0 and row2[SELL] > best2:
                    best2 = row2[SELL]
                row[a] += alpha * (r + gamma * best2 - row[a])
                visits[st] += 1
                units = nu
        if progress is not None:
            progress(ep + 1, tp.episodes, {"epsilon": eps, "pnl_per_unit": total_r, "trades": trades})
    model.meta["train"] = {"episodes": tp.episodes, "alpha": tp.alpha, "gamma": tp.gamma,
                           "epsilon_start": tp.epsilon_start, "epsilon_end": tp.epsilon_end,
                           "fee_rate": str(tp.fee_rate), "seed": tp.seed,
                           "steps": sum(len(s) for s in series),
                           "products": [s.product for s in series]}
    return model


# --- a synthetic market ----------------------------------------------------------------------------------

def synthetic_ticks(seed: int, n: int = 4000, *, product: str = "SYN-USD", start: float = 100.0,
                    drift: float = 0.0008, vol: float = 0.004, switch_p: float = 1 / 300,
                    spread_bps: float = 2.0, t0_ns: int = 1_767_225_600_000_000_000,
                    dt_ns: int = 1_000_000_000) -> list:
    """A trending market: log returns ``regime * drift + vol * N(0,1)`` where the regime (+1 up,
    -1 down) flips with probability ``switch_p`` per step. Prices are quoted on a cent grid with a
    spread of ``spread_bps``. Returns store Envelopes (``md.tick.<product>``) in time order."""
    rng = np.random.default_rng(seed)
    flips = rng.random(n) < switch_p
    regime = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0)
    logp = math.log(start) + np.cumsum(regime * drift + vol * rng.standard_normal(n))
    mids = np.exp(logp)
    cent = Decimal("0.01")
    out = []
    topic = topics.tick(product)
    for i, m in enumerate(mids):
        mid = Decimal(f"{m:.2f}")
        half = (mid * Decimal(str(spread_bps)) / 20000).quantize(cent)
        if half < cent:
            half = cent
        bid, ask = mid - half, mid + half
        ts = t0_ns + i * dt_ns
        tick = Tick(product, mid, bid, Decimal("1"), ask, Decimal("1"), Decimal("1000"))
        out.append(Envelope(topic, i + 1, "synthetic", i + 1, ts, ts, tick))
    return out


def write_store_file(path, envelopes):
    """Write envelopes as a store file (``proto.jsonl`` lines)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"type": "_open", "ts": envelopes[0].ts_recv if envelopes else 0,
                            "format": "tickmesh.jsonl/1", "source": "synthetic"},
                           separators=(",", ":")) + "\n")
        for e in envelopes:
            f.write(jsonl.dumps(e) + "\n")
