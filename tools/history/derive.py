"""From Coinbase's public candles and market trades to the store's market events. No I/O here.

What is real and what is derived (docs/marketdata.md, "Historical data"):

* ``Trade``: real. Coinbase's trade id, price, size and time (``ts_event``, to the microsecond).
  The API's ``side`` is the maker's side (as on the ``market_trades`` channel); the event carries the
  taker's side, the opposite, as the live feed does (``nodes.marketdata.normalize``).
* ``Tick``: derived, one after every trade. ``price`` is the trade price. A taker buy lifted the
  ask, so after it ``ask`` = the trade price and ``bid`` = ask - spread; a taker sell hit the bid,
  so ``bid`` = the trade price and ``ask`` = bid + spread. The spread is estimated from the tape,
  causally (only trades at or before the tick): the median of the last ``PAIRS`` price gaps between
  a taker buy and a taker sell that follow each other within ``PAIR_WINDOW_NS`` (the two sides of
  the book seen a moment apart), at least one price increment and at most ``MAX_SPREAD_FRACTION``
  of the price; one increment until the first such pair. ``ask_size`` / ``bid_size``: the size of
  the last trade on that side (a lower bound on what rested there). ``volume_24h``: the traded size
  over the trailing 24 h *of the fetched range* (less than 24 h of data at its start).
* Candle-only buckets (a candle, no trades: the trades API gave none for that bucket): four ticks,
  at 0, 1/4, 1/2 and 3/4 of the bucket, through open, low, high, close (a rising candle) or open,
  high, low, close (a falling one), with the current spread around each price. No Trade events.
* No ``Book``: Coinbase publishes no order-book history; a book built from trades would be made up.

``Deriver`` holds the state (spread pairs, last sizes, per-minute volumes). It is a function of the
trades fed so far, so a resumed fetch rebuilds it by feeding the trades already in the file.
"""
import bisect
import calendar
import re
from collections import deque
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import proto
from proto import topics

SOURCE = "history"
PAIRS = 50                         # spread estimate: median of the last 50 opposite-side gaps
PAIR_WINDOW_NS = 250_000_000       # a taker buy and a taker sell at most 250 ms apart
MAX_SPREAD_FRACTION = Decimal("0.005")
DAY_NS = 86_400_000_000_000
MINUTE_NS = 60_000_000_000
ZERO = Decimal(0)
TAKER = {"BUY": "SELL", "SELL": "BUY"}      # maker side (the API) -> taker side (the event)

_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?$")


class BadData(ValueError):
    """A response field that is not what the API documents."""


def parse_time_ns(s: str) -> int:
    """RFC 3339 (``2026-11-01T00:00:59.944309Z``) -> integer nanoseconds since the epoch."""
    m = _RFC3339.match(s or "")
    if not m:
        raise BadData(f"bad time {s!r:.40}")
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(sec), 0, 0, 0))
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return secs * 1_000_000_000 + int((frac or "").ljust(9, "0"))


def _dec(d: dict, key: str, what: str) -> Decimal:
    try:
        v = Decimal(d[key])
    except (KeyError, TypeError, ValueError, ArithmeticError):
        raise BadData(f"{what}: bad or missing {key!r}") from None
    if not v.is_finite():
        raise BadData(f"{what}: bad {key!r}")
    return v


class HTrade:
    """One market trade as fetched: ``ts`` ns, ``trade_id``, ``price``, ``size``, taker ``side``."""
    __slots__ = ("ts", "trade_id", "price", "size", "side")

    def __init__(self, ts, trade_id, price, size, side):
        self.ts, self.trade_id, self.price, self.size, self.side = ts, trade_id, price, size, side

    def key(self):
        tid = self.trade_id
        return (self.ts, int(tid) if tid.isdigit() else 0, tid)


def parse_trade(t: dict, product: str) -> HTrade:
    """One element of ``GetMarketTradesResponse.trades`` (a dict). Raises BadData."""
    if not isinstance(t, dict):
        raise BadData("trade: not an object")
    tid = t.get("trade_id")
    if not isinstance(tid, str) or not tid:
        raise BadData("trade: bad or missing 'trade_id'")
    side = TAKER.get(t.get("side"))
    if side is None:
        raise BadData(f"trade {tid}: bad side {t.get('side')!r:.20}")
    if t.get("product_id") not in (None, product):
        raise BadData(f"trade {tid}: product {t.get('product_id')!r:.20}, asked for {product}")
    price, size = _dec(t, "price", f"trade {tid}"), _dec(t, "size", f"trade {tid}")
    if price <= 0 or size <= 0:
        raise BadData(f"trade {tid}: price and size must be positive")
    return HTrade(parse_time_ns(t.get("time")), tid, price, size, side)


class Candle:
    __slots__ = ("start", "open", "high", "low", "close", "volume")

    def __init__(self, start, open_, high, low, close, volume):
        self.start, self.open, self.high, self.low, self.close, self.volume = start, open_, high, low, close, volume


def parse_candle(c: dict) -> Candle:
    """One element of ``GetProductCandlesResponse.candles`` (a dict; ``start`` in UNIX seconds)."""
    if not isinstance(c, dict):
        raise BadData("candle: not an object")
    try:
        start = int(c["start"])
    except (KeyError, TypeError, ValueError):
        raise BadData("candle: bad or missing 'start'") from None
    what = f"candle {start}"
    out = Candle(start, _dec(c, "open", what), _dec(c, "high", what), _dec(c, "low", what),
                 _dec(c, "close", what), _dec(c, "volume", what))
    if not (out.low <= min(out.open, out.close) and max(out.open, out.close) <= out.high and out.low > 0):
        raise BadData(f"{what}: open/close outside low..high")
    return out


class Deriver:
    """Trades and candles of one product in time order -> store Envelopes (Trade + derived Tick)."""

    def __init__(self, product: str, increment: Decimal, granularity_s: int, msg_base: int):
        self.product = product
        self.inc = increment
        self.g_ns = granularity_s * 1_000_000_000
        self.t_trade, self.t_tick = topics.MD_TRADE + product, topics.MD_TICK + product
        self.msg_base = msg_base
        self.msgs = 0
        self.seq = {self.t_trade: 0, self.t_tick: 0}
        self.pairs = deque(maxlen=PAIRS)     # the last gaps, oldest first
        self._sorted = []                    # the same gaps, sorted (for the median)
        self.spread = increment
        self.last = None                     # (ts, taker side, price) of the previous trade
        self.size = {"BUY": None, "SELL": None}     # last trade size per taker side
        self.minutes = deque()               # (minute index, volume)
        self.vol = ZERO
        self.counts = {"trades": 0, "ticks": 0, "candle_ticks": 0}

    # --- state -----------------------------------------------------------------------------------
    def learn(self, tr: HTrade):
        """Update the state with one trade (also used to rebuild it from a file)."""
        last = self.last
        if last is not None and last[1] != tr.side and tr.ts - last[0] <= PAIR_WINDOW_NS:
            gap = abs(tr.price - last[2])
            if gap > 0:
                if len(self.pairs) == PAIRS:
                    del self._sorted[bisect.bisect_left(self._sorted, self.pairs[0])]
                self.pairs.append(gap)
                bisect.insort(self._sorted, gap)
                s = self._sorted[len(self._sorted) // 2]
                cap = (tr.price * MAX_SPREAD_FRACTION).quantize(self.inc, rounding=ROUND_FLOOR)
                self.spread = max(self.inc, min(s, cap)) if cap >= self.inc else self.inc
        self.last = (tr.ts, tr.side, tr.price)
        self.size[tr.side] = tr.size
        minute = tr.ts // MINUTE_NS
        if self.minutes and self.minutes[-1][0] == minute:
            m, v = self.minutes[-1]
            self.minutes[-1] = (m, v + tr.size)
        else:
            self.minutes.append((minute, tr.size))
        self.vol += tr.size
        horizon = minute - DAY_NS // MINUTE_NS
        while self.minutes and self.minutes[0][0] <= horizon:
            self.vol -= self.minutes.popleft()[1]

    # --- events ----------------------------------------------------------------------------------
    def _env(self, topic, ts, msg):
        self.seq[topic] += 1
        self.msgs += 1
        return proto.Envelope(topic, self.msg_base + self.msgs, SOURCE, self.seq[topic], ts, ts, msg)

    def _quote(self, price: Decimal, lifted_ask: bool):
        sp = self.spread
        if lifted_ask:
            return price - sp, price
        return price, price + sp

    def trade_events(self, tr: HTrade) -> list:
        self.learn(tr)
        bid, ask = self._quote(tr.price, tr.side == "BUY")
        other = "SELL" if tr.side == "BUY" else "BUY"
        osize = self.size[other] if self.size[other] is not None else tr.size
        bid_size, ask_size = (osize, tr.size) if tr.side == "BUY" else (tr.size, osize)
        self.counts["trades"] += 1
        self.counts["ticks"] += 1
        return [self._env(self.t_trade, tr.ts, proto.Trade(self.product, tr.trade_id, tr.price, tr.size, tr.side)),
                self._env(self.t_tick, tr.ts, proto.Tick(self.product, tr.price, bid, bid_size, ask, ask_size,
                                                         self.vol))]

    def candle_events(self, c: Candle) -> list:
        """Four ticks through a bucket that has a candle and no trades."""
        path = (c.open, c.low, c.high, c.close) if c.close >= c.open else (c.open, c.high, c.low, c.close)
        t0 = c.start * 1_000_000_000
        out = []
        half = (self.spread / 2).quantize(self.inc, rounding=ROUND_CEILING)
        size = self.size["BUY"] or self.size["SELL"] or ZERO
        for i, px in enumerate(path):
            bid = (px - half).quantize(self.inc, rounding=ROUND_FLOOR)
            ask = max(bid + self.inc, (px + half).quantize(self.inc, rounding=ROUND_CEILING))
            out.append(self._env(self.t_tick, t0 + i * self.g_ns // 4,
                                 proto.Tick(self.product, px, bid, size, ask, size, self.vol)))
        self.counts["ticks"] += 4
        self.counts["candle_ticks"] += 4
        return out

    def chunk_events(self, trades: list, candles: list) -> list:
        """Events of one chunk in time order: every trade (sorted), and the candle-only buckets."""
        trades = sorted(trades, key=HTrade.key)
        busy = {tr.ts // self.g_ns for tr in trades}
        lonely = sorted((c for c in candles if c.start * 1_000_000_000 // self.g_ns not in busy),
                        key=lambda c: c.start)
        out, i = [], 0
        for c in lonely:
            t0 = c.start * 1_000_000_000
            while i < len(trades) and trades[i].ts < t0:
                out.extend(self.trade_events(trades[i]))
                i += 1
            out.extend(self.candle_events(c))
        for tr in trades[i:]:
            out.extend(self.trade_events(tr))
        return out
