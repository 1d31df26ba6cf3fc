"""A seeded synthetic market that speaks Coinbase Advanced Trade.

``Market`` simulates several products: the mid follows geometric Brownian motion whose volatility
switches between regimes (calm / normal / turbulent, a Markov chain), with Poisson jumps; the
spread (in ticks) depends on the regime; each side of the book holds ``depth`` levels with
log-normal sizes, spaced wider further from the touch; trades arrive as a Poisson process, take
liquidity at the touch and lean with the last move. Prices live on the product's tick grid and
sizes on its lot grid as integers, and leave the model as exact decimal strings. Floats only drive
the random model.

``Session`` is the server side of one Coinbase connection: subscriptions (one channel per
message), the per-connection ``sequence_num`` (from 0, acks included), snapshots then updates,
cumulative ``subscriptions`` acks (before or after the snapshot), ``l2_data`` with ``bid``/
``offer``, ``client_id: ""``. Both the fake exchange (``tools.fakecoinbase``) and the market-data
node's synthetic source drive the same ``Market`` through a ``Session``, so synthetic data goes
through exactly the parser and publishing path of live data.

``SyntheticSource`` is that source: a thread stepping the market at ``synthetic_rate_hz`` (0: as
fast as the node takes it, on a simulated clock) and feeding the frames to a ``Normalizer``.
"""
import math
import os
import random
import threading
import time
import zlib
from dataclasses import dataclass
from decimal import Decimal

from .normalize import Normalizer

SECONDS_PER_YEAR = 365.25 * 24 * 3600
CALM, NORMAL, TURBULENT = 0, 1, 2
KNOWN_CHANNELS = ("heartbeats", "ticker", "ticker_batch", "level2", "market_trades", "status", "candles",
                  "user", "futures_balance_summary")
AUTH_CHANNELS = ("user", "futures_balance_summary")


@dataclass(frozen=True)
class ProductModel:
    price: float                      # start price
    tick: Decimal = Decimal("0.01")   # quote increment
    lot: Decimal = Decimal("0.00000001")  # base increment
    vols: tuple = (0.35, 0.6, 1.4)    # annualised volatility per regime
    regime_s: tuple = (600.0, 900.0, 90.0)  # mean time spent in each regime
    jumps_per_hour: float = 1.5
    jump_sd: float = 0.004            # log-size of a jump
    spread_ticks: tuple = (1, 3, 30)  # typical spread per regime
    level_size: float = 0.2           # mean size of a level (base units)
    trades_per_s: float = 4.0
    depth: int = 40                   # levels per side
    volume_24h: float = 9000.0


MODELS = {
    "BTC-USD": ProductModel(65000.0, vols=(0.35, 0.6, 1.4), spread_ticks=(1, 4, 40), level_size=0.15,
                            trades_per_s=6.0, volume_24h=9000.0),
    "ETH-USD": ProductModel(3200.0, vols=(0.45, 0.75, 1.8), spread_ticks=(1, 3, 25), level_size=2.5,
                            trades_per_s=4.0, volume_24h=120000.0),
    "SOL-USD": ProductModel(150.0, lot=Decimal("0.001"), vols=(0.6, 1.0, 2.2), spread_ticks=(1, 2, 10),
                            level_size=40.0, trades_per_s=3.0, volume_24h=900000.0),
}


def model_for(product: str, spec=None) -> ProductModel:
    """The model of a product: a known one, or a generic one seeded by the product name. A
    ``ProductSpec`` (mesh.product_specs) sets the tick and lot grids."""
    m = MODELS.get(product)
    if m is None:
        h = zlib.crc32(product.encode())
        m = ProductModel(price=float(10 + h % 990), level_size=float(1 + h % 50), trades_per_s=2.0,
                         volume_24h=50000.0)
    if spec is not None:
        m = ProductModel(**{**m.__dict__, "tick": spec.quote_increment, "lot": spec.base_increment})
    return m


# --- formatting ---------------------------------------------------------------------------------------

_TS_SECONDS: dict = {}      # whole second -> "YYYY-MM-DDTHH:MM:SS" (strftime is the slow part)


def fmt_ts(ns: int) -> str:
    """Integer ns -> RFC 3339 with 9 fractional digits, like live frames."""
    s, frac = divmod(ns, 1_000_000_000)
    head = _TS_SECONDS.get(s)
    if head is None:
        if len(_TS_SECONDS) > 4096:
            _TS_SECONDS.clear()
        head = _TS_SECONDS[s] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
    return f"{head}.{frac:09d}Z"


def grid_formatter(inc: Decimal):
    """``n -> format(n * inc, "f")`` for integers n >= 0; integer arithmetic when ``inc`` is a
    power of ten (the usual lot and tick sizes), the same strings either way."""
    sign, digits, exp = inc.as_tuple()
    if sign == 0 and digits == (1,) and isinstance(exp, int) and exp < 0:
        k = -exp
        p = 10 ** k

        def fmt(n: int) -> str:
            if n < 0:
                return format(n * inc, "f")
            q, r = divmod(n, p)
            return f"{q}.{r:0{k}d}"
        return fmt
    return lambda n: format(n * inc, "f")


def fmt_go_time(ns: int, uptime_s: float) -> str:
    """Go's ``time.String()`` as in ``heartbeats.current_time``."""
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s)) + f".{frac:09d} +0000 UTC m=+{uptime_s:.9f}"


def envelope(channel: str, seq: int, ts_ns: int, events: list) -> dict:
    return {"channel": channel, "client_id": "", "timestamp": fmt_ts(ts_ns), "sequence_num": seq,
            "events": events}


# --- the market -------------------------------------------------------------------------------------------

class _Product:
    """The state of one simulated product (integers on the tick and lot grids)."""

    def __init__(self, name: str, model: ProductModel, rng: random.Random):
        self.name, self.m, self.rng = name, model, rng
        self.tick_f = float(model.tick)
        self.lot_f = float(model.lot)
        self.log_mid = math.log(model.price)
        self.regime = NORMAL
        self.bids: dict = {}                 # tick -> lots
        self.asks: dict = {}
        self.best_bid = self.best_ask = 0
        self.last = int(round(model.price / self.tick_f))
        self.open_24h = self.low_24h = self.high_24h = self.last
        self.volume = int(model.volume_24h / self.lot_f)
        self.trade_seq = rng.randrange(10_000_000, 900_000_000)
        self.recent: list = []               # last trades (dicts) for market_trades snapshots
        self.last_move = 0
        self._px: dict = {}
        self._fmt_px = grid_formatter(model.tick)
        self.qty = grid_formatter(model.lot)      # lots -> the exact decimal string
        self._requote(first=True)

    # strings on the grids (memoised: the same ticks come back all the time)
    def px(self, ticks: int) -> str:
        s = self._px.get(ticks)
        if s is None:
            if len(self._px) > 20000:
                self._px.clear()
            s = self._px[ticks] = self._fmt_px(ticks)
        return s

    def _size(self, scale: float = 1.0) -> int:
        lots = int(self.m.level_size * scale * self.rng.lognormvariate(0.0, 0.8) / self.lot_f)
        return max(1, lots)

    def _spread(self) -> int:
        base = self.m.spread_ticks[self.regime]
        return max(1, int(round(base * self.rng.lognormvariate(0.0, 0.5))))

    def _requote(self, first=False, changes=None):
        """Move the touch to the current mid and keep ``depth`` levels per side."""
        mid = max(2.0, math.exp(self.log_mid) / self.tick_f)
        spread = self._spread()
        bb = max(1, int(math.floor(mid - spread / 2.0)))
        ba = bb + spread
        self.best_bid, self.best_ask = bb, ba
        for book, is_bid in ((self.bids, True), (self.asks, False)):
            touch = bb if is_bid else ba
            # liquidity on the wrong side of the new touch is gone (taken or pulled)
            for t in [t for t in book if (t > touch if is_bid else t < touch)]:
                del book[t]
                if changes is not None:
                    changes[is_bid][t] = 0
            if touch not in book:
                book[touch] = self._size()
                if changes is not None:
                    changes[is_bid][touch] = book[touch]
            # a few changes inside the book: new orders, cancels, partial cancels
            n = self.m.depth if first else self._poisson(2.0 + self.regime * 2.0)
            for _ in range(n):
                d = int(self.rng.expovariate(1.0 / (1.0 + self.m.depth * 0.6)))
                t = touch - d if is_bid else touch + d
                if t <= 0:
                    continue
                if t in book and self.rng.random() < 0.35 and t != touch:
                    del book[t]
                    new = 0
                else:
                    new = book[t] = self._size(1.0 + d / 10.0)
                if changes is not None:
                    changes[is_bid][t] = new
            # keep depth levels: drop the farthest, add beyond the farthest
            while len(book) > self.m.depth:
                far = min(book) if is_bid else max(book)
                del book[far]
                if changes is not None:
                    changes[is_bid][far] = 0
            while len(book) < self.m.depth:
                far = min(book) if is_bid else max(book)
                t = far - 1 - int(self.rng.expovariate(0.5)) if is_bid else far + 1 + int(self.rng.expovariate(0.5))
                if t <= 0:
                    break
                book[t] = self._size(1.5)
                if changes is not None:
                    changes[is_bid][t] = book[t]

    def _poisson(self, lam: float) -> int:
        # Knuth: fine for the small rates used here
        if lam <= 0:
            return 0
        lim, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= lim:
                return k
            k += 1

    def step(self, dt: float, now_ns: int, drift: float = 0.0, trade_scale: float = 1.0):
        """Advance ``dt`` seconds (``drift``: an extra log move, a crash). Returns (changes
        {True: {tick: lots}, False: {...}}, trades)."""
        m, rng = self.m, self.rng
        # regime switching: leave the current regime with rate 1/mean duration
        if drift:
            self.regime = TURBULENT
        elif rng.random() < dt / m.regime_s[self.regime]:
            self.regime = rng.choice([r for r in (CALM, NORMAL, TURBULENT) if r != self.regime])
        sigma = m.vols[self.regime] / math.sqrt(SECONDS_PER_YEAR)
        move = drift - 0.5 * sigma * sigma * dt + sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0)
        if rng.random() < m.jumps_per_hour * dt / 3600.0:
            move += rng.gauss(0.0, m.jump_sd)
            self.regime = TURBULENT
        self.log_mid += move
        self.last_move = move
        changes = {True: {}, False: {}}
        self._requote(changes=changes)
        trades = []
        n = self._poisson(m.trades_per_s * trade_scale * dt * (1.0 + self.regime))
        for i in range(n):
            lean = 0.5 + (0.15 if self.last_move > 0 else -0.15 if self.last_move < 0 else 0.0)
            taker_buy = rng.random() < lean
            book = self.asks if taker_buy else self.bids
            if not book:
                break
            t = min(book) if taker_buy else max(book)
            size = min(book[t], max(1, self._size(0.15)))
            book[t] -= size
            if book[t] == 0:
                del book[t]
            changes[not taker_buy][t] = book.get(t, 0)
            self.last = t
            self.low_24h, self.high_24h = min(self.low_24h, t), max(self.high_24h, t)
            self.volume += size
            self.trade_seq += 1
            tr = {"product_id": self.name, "trade_id": str(self.trade_seq), "price": self.px(t),
                  "size": self.qty(size), "time": fmt_ts(now_ns - (n - 1 - i) * 1000),
                  "side": "SELL" if taker_buy else "BUY"}       # Coinbase sends the MAKER side
            trades.append(tr)
        if trades:
            self.recent = (self.recent + trades)[-50:]
        return changes, trades

    # --- Coinbase-shaped pieces ---------------------------------------------------------------------
    def ticker(self) -> dict:
        bb = max(self.bids) if self.bids else self.best_bid
        ba = min(self.asks) if self.asks else self.best_ask
        chg = (self.last / self.open_24h - 1.0) * 100.0 if self.open_24h else 0.0
        return {"type": "ticker", "product_id": self.name, "price": self.px(self.last),
                "volume_24_h": self.qty(self.volume), "low_24_h": self.px(self.low_24h),
                "high_24_h": self.px(self.high_24h), "low_52_w": self.px(max(1, self.low_24h // 2)),
                "high_52_w": self.px(self.high_24h * 3 // 2), "price_percent_chg_24_h": f"{chg:.8f}",
                "best_bid": self.px(bb), "best_bid_quantity": self.qty(self.bids.get(bb, 0)),
                "best_ask": self.px(ba), "best_ask_quantity": self.qty(self.asks.get(ba, 0))}

    def l2_updates(self, changes: dict, ts: str) -> list:
        out = []
        for is_bid in (True, False):
            side = "bid" if is_bid else "offer"
            for t, lots in changes[is_bid].items():
                out.append({"side": side, "event_time": ts, "price_level": self.px(t),
                            "new_quantity": self.qty(lots)})
        return out

    def l2_snapshot(self, ts: str) -> list:
        out = [{"side": "bid", "event_time": ts, "price_level": self.px(t), "new_quantity": self.qty(s)}
               for t, s in sorted(self.bids.items(), reverse=True)]
        out += [{"side": "offer", "event_time": ts, "price_level": self.px(t), "new_quantity": self.qty(s)}
                for t, s in sorted(self.asks.items())]
        return out


class StepUpdate:
    """What one market step produced, as Coinbase event pieces shared by every session."""
    __slots__ = ("ts_ns", "tickers", "trades", "l2")

    def __init__(self, ts_ns):
        self.ts_ns = ts_ns
        self.tickers: dict = {}     # product -> ticker dict (products that traded)
        self.trades: dict = {}      # product -> [trade dicts]
        self.l2: dict = {}          # product -> [updates]


class Market:
    """Several simulated products, one seeded RNG each (independent of product order)."""

    def __init__(self, products, seed: int = 1, specs: dict = None, trade_scale: float = 1.0,
                 ticker_every_step: bool = False, depth: int = 0):
        specs = specs or {}
        self.seed = seed
        self.depth = depth                               # levels per side (0: each model's own)
        self.trade_scale = trade_scale
        self.ticker_every_step = ticker_every_step      # a ticker per step (the touch moves every step)
        self.crash = None                                # (start_ns, end_ns, log move per second)
        self.products = {}
        for p in products:
            rng = random.Random((seed * 1_000_003) ^ zlib.crc32(p.encode()))
            m = model_for(p, specs.get(p))
            if depth:
                m = ProductModel(**{**m.__dict__, "depth": depth})
            self.products[p] = _Product(p, m, rng)
        self.steps = 0

    def ensure(self, product: str):
        """Serve any product asked for (a generic model for unknown names)."""
        if product not in self.products:
            rng = random.Random((self.seed * 1_000_003) ^ zlib.crc32(product.encode()))
            self.products[product] = _Product(product, model_for(product), rng)
        return self.products[product]

    def schedule_crash(self, start_ns: int, minutes: float, pct: float):
        """Every product falls ``pct`` % (log-linearly, in a turbulent regime) over ``minutes``
        from ``start_ns``: a flash crash."""
        secs = minutes * 60.0
        self.crash = (start_ns, start_ns + int(secs * 1e9), math.log(1.0 - pct / 100.0) / secs)

    def step(self, dt: float, now_ns: int) -> StepUpdate:
        self.steps += 1
        up = StepUpdate(now_ns)
        ts = fmt_ts(now_ns)
        c = self.crash
        drift = c[2] * dt if c is not None and c[0] <= now_ns < c[1] else 0.0
        for name, pr in self.products.items():
            changes, trades = pr.step(dt, now_ns, drift, self.trade_scale)
            if trades:
                up.trades[name] = trades
            if trades or self.ticker_every_step:
                up.tickers[name] = pr.ticker()
            l2 = pr.l2_updates(changes, ts)
            if l2:
                up.l2[name] = l2
        return up


# --- the server side of one connection ----------------------------------------------------------------------

class Session:
    """Coinbase's side of one WebSocket connection. ``handle(msg)`` answers a client message;
    ``on_step``/``heartbeat`` produce the frames the connection gets. Frames are dicts."""

    def __init__(self, market: Market, rng: random.Random = None, ack_order: str = "random"):
        self.market = market
        self.rng = rng or random.Random(0)
        self.ack_order = ack_order            # "before" | "after" | "random" (the snapshot)
        self.seq = 0
        self.subs: dict = {}                  # channel -> set(products)
        self.skip_next = 0

    def _frame(self, channel: str, events: list, ts_ns: int) -> dict:
        seq = self.seq + self.skip_next
        self.skip_next = 0
        self.seq = seq + 1
        return envelope(channel, seq, ts_ns, events)

    def _ack(self, ts_ns: int) -> dict:
        subs = {ch: sorted(ps) if ch not in ("heartbeats",) else [] for ch, ps in self.subs.items()}
        return self._frame("subscriptions", [{"subscriptions": subs}], ts_ns)

    def handle(self, msg, now_ns: int) -> list:
        """One client message (parsed JSON) -> frames to send (error frames have no envelope)."""
        if type(msg) is not dict or msg.get("type") not in ("subscribe", "unsubscribe"):
            return [{"type": "error", "message": "failure to subscribe"}]
        ch = msg.get("channel")
        products = msg.get("product_ids") or []
        if type(ch) is not str or ch not in KNOWN_CHANNELS or type(products) is not list \
                or not all(type(p) is str for p in products):
            # what Coinbase answers to a wrong channel name, e.g. "heartbeat"
            return [{"type": "error", "message": "authentication failure"}]
        if ch in AUTH_CHANNELS and not msg.get("jwt"):
            return [{"type": "error", "message": "authentication failure"}]
        if msg["type"] == "unsubscribe":
            if ch in self.subs:
                if products:
                    self.subs[ch].difference_update(products)
                if not products or not self.subs[ch]:
                    del self.subs[ch]
            return [self._ack(now_ns)]
        self.subs.setdefault(ch, set()).update(products)
        first = self.ack_order == "before" or (self.ack_order == "random" and self.rng.random() < 0.5)
        if first:       # sequence numbers follow the sending order
            ack = self._ack(now_ns)
            return [ack] + self._snapshots(ch, products, now_ns)
        data = self._snapshots(ch, products, now_ns)
        return data + [self._ack(now_ns)]

    def _snapshots(self, ch: str, products: list, now_ns: int) -> list:
        m, ts = self.market, fmt_ts(now_ns)
        if ch == "level2":
            return [self._frame("l2_data", [{"type": "snapshot", "product_id": p,
                                             "updates": m.ensure(p).l2_snapshot(ts)}], now_ns) for p in products]
        if ch in ("ticker", "ticker_batch"):
            tickers = [m.ensure(p).ticker() for p in products]
            if ch == "ticker_batch":
                tickers = [{k: v for k, v in t.items() if not k.startswith("best_")} for t in tickers]
            return [self._frame(ch, [{"type": "snapshot", "tickers": tickers}], now_ns)] if tickers else []
        if ch == "market_trades":
            trades = [t for p in products for t in m.ensure(p).recent]
            return [self._frame("market_trades", [{"type": "snapshot", "trades": trades}], now_ns)]
        return []

    def on_step(self, up: StepUpdate) -> list:
        out, ts = [], up.ts_ns
        subs = self.subs
        tick_ps = subs.get("ticker")
        if tick_ps:
            tickers = [t for p, t in up.tickers.items() if p in tick_ps]
            if tickers:
                out.append(self._frame("ticker", [{"type": "update", "tickers": tickers}], ts))
        tr_ps = subs.get("market_trades")
        if tr_ps:
            trades = [t for p, ts_ in up.trades.items() if p in tr_ps for t in ts_]
            if trades:
                out.append(self._frame("market_trades", [{"type": "update", "trades": trades}], ts))
        l2_ps = subs.get("level2")
        if l2_ps:
            events = [{"type": "update", "product_id": p, "updates": u} for p, u in up.l2.items() if p in l2_ps]
            if events:
                out.append(self._frame("l2_data", events, ts))
        return out

    def heartbeat(self, counter: int, now_ns: int, uptime_s: float):
        if "heartbeats" not in self.subs:
            return None
        return self._frame("heartbeats", [{"current_time": fmt_go_time(now_ns, uptime_s),
                                           "heartbeat_counter": counter}], now_ns)


# --- the node's synthetic source ---------------------------------------------------------------------------------

class SyntheticSource:
    """Steps a seeded ``Market`` and feeds its Coinbase frames to a ``Normalizer``, exactly like a
    live connection. ``batches()`` is the source itself, a generator with no thread and no wait
    (the offline engine pulls from it on the market clock); ``start()`` runs it in a thread that
    paces it (``synthetic_rate_hz``) and hands each batch to ``emit`` (the node's thread-safe sink)."""

    kind = "synthetic"

    def __init__(self, conf, products, emit, log, specs=None, raw: bool = False):
        self.conf = conf
        self.products = list(products)
        self.emit = emit
        self.log = log
        self.raw = raw
        self.market = Market(self.products, seed=conf.seed, specs=specs, trade_scale=conf.synthetic_trade_scale,
                             ticker_every_step=True, depth=max(conf.book_depth, conf.synthetic_depth))
        self._stop = threading.Event()
        self._thread = None
        self._resnap: list = []
        self._lock = threading.Lock()
        self.frames_seen = 0
        self.conn = "synthetic#1"

    def start(self):
        self._thread = threading.Thread(target=self._run, name="md-synthetic", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.8):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def resnapshot(self, products, reason: str = ""):
        with self._lock:
            self._resnap.extend(products)

    def info(self) -> dict:
        return {"source": "synthetic", "seed": self.conf.seed, "steps": self.market.steps,
                "frames": self.frames_seen}

    def frames(self, start_ns: int, step_ns: int, sim_dt: float, wall: bool = False):
        """Generator of ``(ts_ns, frames)``: the subscription answers, then one market step after
        another, each ``step_ns`` of market time apart (``sim_dt`` simulated seconds of movement).
        ``wall``: stamp each step with the wall clock at the moment it is taken (a paced live-like
        source) instead of ``start_ns + k * step_ns``. Frames are Coinbase's JSON objects."""
        conf = self.conf
        session = Session(self.market, random.Random(conf.seed), ack_order="random")
        if conf.synthetic_crash_at_h >= 0:
            self.market.schedule_crash(start_ns + int(conf.synthetic_crash_at_h * 3600e9),
                                       conf.synthetic_crash_minutes, conf.synthetic_crash_pct)
        frames = []
        for ch in conf.channels:
            msg = {"type": "subscribe", "channel": ch}
            if ch != "heartbeats":
                msg["product_ids"] = self.products
            frames += session.handle(msg, start_ns)
        yield start_ns, frames
        steps = 0
        hb_every = max(1, int(round(1e9 / step_ns)))
        while True:
            steps += 1
            ts = time.time_ns() if wall else start_ns + steps * step_ns
            with self._lock:
                resnap, self._resnap = self._resnap, []
            frames = []
            if resnap:
                ps = sorted(set(resnap))
                frames += session.handle({"type": "unsubscribe", "channel": "level2", "product_ids": ps}, ts)
                frames += session.handle({"type": "subscribe", "channel": "level2", "product_ids": ps}, ts)
            frames += session.on_step(self.market.step(sim_dt, ts))
            if steps % hb_every == 0:
                hb = session.heartbeat(steps // hb_every, ts, steps * step_ns / 1e9)
                if hb is not None:
                    frames.append(hb)
            yield ts, frames

    def batches(self, start_ns: int, step_ns: int, sim_dt: float, wall: bool = False, frames=None,
                lazy: bool = False):
        """Generator of ``(ts_ns, events)``, one per market step: ``frames()`` (or the ``frames``
        iterable given, e.g. a ``Prefetch``) through this connection's ``Normalizer``, after a
        ``Connected``. ``lazy``: ``events`` is an iterator that parses each frame only when the
        consumer reaches it (see ``_run``)."""
        from .feed import Connected
        norm = Normalizer(self.conn)
        first = True
        now = time.time_ns
        for ts, fs in (frames if frames is not None else self.frames(start_ns, step_ns, sim_dt, wall)):
            # the receive stamp, as a live connection takes it: once the exchange's frames exist
            # (after the simulated exchange made them), before they are parsed. ``ts`` is the
            # exchange's time of the step; on the simulated clock the two are the same
            recv_ns = now() if wall else ts
            head = [Connected(self.conn, True)] if first else []
            first = False
            if lazy:
                yield ts, self._parse(norm, head, fs, recv_ns)
            else:
                yield ts, list(self._parse(norm, head, fs, recv_ns))

    def _parse(self, norm, head, fs, recv_ns):
        import json
        from .feed import RawEv
        yield from head
        for f in fs:
            self.frames_seen += 1
            if self.raw:
                yield RawEv(self.conn, f if isinstance(f, str) else json.dumps(f, separators=(",", ":")))
            yield from norm.feed(f, recv_ns)

    def _run(self):
        """The source thread: steps the market (paced, or as fast as the node takes it) and hands
        each step's frames to the node's loop. Paced, the frames are parsed *in the loop thread*,
        each as the node reaches it (a lazy batch): the step's ticker frame is parsed and its tick
        published before the level2 frame is parsed, as with a live connection, whose frames
        arrive one by one. Parsed here instead, the loop waited for the whole step (~50-90 us for
        the level2 frame) and then for the GIL. At full speed the batch is parsed here."""
        from .feed import Disconnected
        conf = self.conf
        rate = conf.synthetic_rate_hz
        dt = 1.0 / rate if rate > 0 else 0.1
        sim_dt = dt * conf.synthetic_time_scale if rate > 0 else dt     # market seconds per step
        start_wall = time.monotonic()
        gen = self.batches(time.time_ns(), int(dt * 1e9), sim_dt, wall=rate > 0, lazy=rate > 0)
        k = 0
        try:
            while not self._stop.is_set():
                if rate > 0 and k:          # paced: wait first, so the step is stamped when it is taken
                    delay = start_wall + k * dt - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                _ts, batch = next(gen)
                k += 1
                if not self.emit(batch, wait=True):     # bounded batches in flight: memory stays flat
                    break
        except Exception:  # noqa: BLE001 - a bug here must show, and the node must learn the feed is down
            self.log.exception("synthetic source failed")
        finally:
            self.emit([Disconnected(self.conn, "synthetic source stopped")])


def helper_started(parent_end):
    """First thing in a prefetch helper process: close the parent's end of the pipe, inherited by
    the fork (once the parent closes its own, the pipe is gone and a send blocked on it fails at
    once), and move off the cpus the parent runs on when the machine has others (the point of a
    helper is parallelism)."""
    parent_end.close()
    try:
        mine = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - mine
        if others:
            os.sched_setaffinity(0, others)
    except OSError:
        pass


def run_helper(parent_end, conn, serve):
    """The whole life of a prefetch helper process: ``helper_started``, then ``serve()`` until it
    returns or the parent goes (its end of the pipe closed), then an exit with no atexit and no
    finalizers of the parent's objects (the fork copied them)."""
    helper_started(parent_end)
    try:
        serve()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        conn.close()
        os._exit(0)


def stop_helper(conn, proc, last):
    """Stop a prefetch helper process: ``last`` tells it to end, the pipe is closed (a helper
    blocked sending then fails at once), and it is killed if it has not ended within 2 s."""
    try:
        conn.send(last)
    except (OSError, BrokenPipeError):
        pass
    conn.close()
    proc.join(2)
    if proc.is_alive():
        proc.kill()


class Prefetch:
    """``SyntheticSource.frames()`` run by a helper process a chunk ahead of its consumer, so the
    market is simulated on the other cpu while the offline engine runs the mesh on this one.

    Deterministic: the child makes chunk k+1 while the parent consumes chunk k, and a resnapshot
    the node asks for while consuming chunk k is applied at the start of chunk k+2, whatever the
    timing. Frames cross the pipe as plain JSON-like objects (pickled strings and numbers, no
    Decimal), and are normalised in the parent as a live connection's would be. Start it before
    the process makes threads or ZeroMQ sockets (it forks)."""

    def __init__(self, source: SyntheticSource, start_ns: int, step_ns: int, sim_dt: float, chunk: int = 300):
        import multiprocessing as mp
        self.source = source
        self.chunk = chunk
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=self._child, args=(child, start_ns, step_ns, sim_dt), daemon=True,
                                 name="md-synthetic-prefetch")
        self._proc.start()
        child.close()
        self._conn.send([])                  # ask for chunk 0 ...
        self._conn.send([])                  # ... and chunk 1

    def _child(self, conn, start_ns, step_ns, sim_dt):
        run_helper(self._conn, conn, lambda: self._serve(conn, start_ns, step_ns, sim_dt))

    def _serve(self, conn, start_ns, step_ns, sim_dt):
        gen = self.source.frames(start_ns, step_ns, sim_dt)
        src = self.source
        while True:
            resnap = conn.recv()
            if resnap is None:
                break
            with src._lock:
                src._resnap.extend(resnap)
            conn.send([next(gen) for _ in range(self.chunk)])

    def __iter__(self):
        src = self.source
        while True:
            try:
                chunk = self._conn.recv()
            except EOFError:
                raise RuntimeError("the synthetic market's helper process ended") from None
            for item in chunk:
                src.market.steps += 1
                yield item
            with src._lock:
                resnap, src._resnap = src._resnap, []
            self._conn.send(resnap)          # chunk k+2, with what consuming chunk k asked for

    def close(self):
        stop_helper(self._conn, self._proc, None)
