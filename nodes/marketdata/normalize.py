"""Coinbase Advanced Trade frames -> normalised market-data events. Pure: no sockets, no clock.

One ``Normalizer`` per WebSocket connection: ``feed(frame, recv_ns)`` takes a frame as received
(``str``/``bytes``, or an already-parsed ``dict`` from the synthetic source) and returns a list of
events (the NamedTuples below). It never raises: anything malformed becomes a ``ParseError``.

Facts it relies on (docs/marketdata.md, "Coinbase protocol facts"):
* envelope ``{"channel","client_id","timestamp","sequence_num","events":[...]}``; ``level2`` data
  arrives as channel ``l2_data`` with sides ``bid``/``offer``; acks on channel ``subscriptions``;
* ``sequence_num`` is one counter per connection, from 0, +1 on every enveloped frame (acks
  included). A jump is a ``Gap`` (the frame itself is still used); a number at or below the last
  one is out of order and dropped;
* ``{"type":"error","message":..}`` frames have no envelope;
* ``market_trades`` ``side`` is the *maker* side: the taker (aggressor) side is the opposite;
* ``heartbeat_counter`` may be an integer or a string; unknown channels are counted, not fatal.

Every price and size is an exact ``Decimal``; times are integer nanoseconds since the epoch.
"""
import calendar
import json
from decimal import Decimal, InvalidOperation
from typing import NamedTuple, Optional

__all__ = ["Normalizer", "parse_ts", "Frame", "Gap", "OutOfOrder", "TickEv", "TradeEv", "L2Ev",
           "HeartbeatEv", "Ack", "ErrorFrame", "ParseError"]


# --- the events --------------------------------------------------------------------------------

class Frame(NamedTuple):
    """One enveloped frame was received (counted by channel)."""
    conn: str
    channel: str
    seq: int


class Gap(NamedTuple):
    """The connection's sequence_num jumped: frames were lost."""
    conn: str
    expected: int
    got: int


class OutOfOrder(NamedTuple):
    conn: str
    last: int
    got: int


class TickEv(NamedTuple):
    product: str
    price: Decimal
    bid: Optional[Decimal]          # None when the frame has no best bid/ask (ticker_batch)
    bid_size: Optional[Decimal]
    ask: Optional[Decimal]
    ask_size: Optional[Decimal]
    volume_24h: Decimal
    ts_event: int
    ts_recv: int


class TradeEv(NamedTuple):
    product: str
    trade_id: str
    price: Decimal
    size: Decimal
    side: str                       # taker side: BUY | SELL
    ts_event: int
    ts_recv: int


class L2Ev(NamedTuple):
    """Level2 snapshot (replace the book) or update (absolute sizes; 0 removes the level)."""
    product: str
    snapshot: bool
    bids: list                      # (price, size) pairs in frame order (a replayed Book's: 2-lists;
    asks: list                      # from a replay's Prefetch: a book.DeferredSnapshot and None)
    ts_event: int
    ts_recv: int


class HeartbeatEv(NamedTuple):
    conn: str
    counter: int
    ts_event: int


class Ack(NamedTuple):
    conn: str
    subscriptions: dict             # channel -> [product ids]


class ErrorFrame(NamedTuple):
    conn: str
    message: str


class ParseError(NamedTuple):
    conn: str
    reason: str
    product: str = ""               # set when a level2 event of this product was unusable
    channel: str = ""


# --- field parsing -------------------------------------------------------------------------------

class _Bad(Exception):
    pass


_DAYS: dict = {}
_SECONDS: dict = {}       # "YYYY-MM-DDTHH:MM:SS" (validated) -> ns since the epoch, for the fast path


def parse_ts(s) -> int:
    """RFC 3339 UTC (``2026-03-01T12:00:00.123456789Z``, up to 9 fractional digits, ``Z`` or a
    ``+hh:mm`` offset) -> integer nanoseconds since the epoch. Raises ValueError.

    The shape every Coinbase frame uses (9 fractional digits, ``Z``) takes a fast path once its
    whole second has been parsed (and validated) by the full parser."""
    if type(s) is str and len(s) == 30 and s[19] == "." and s[29] == "Z":
        base = _SECONDS.get(s[:19])
        if base is not None:
            frac = s[20:29]
            if frac.isdigit():
                return base + int(frac)
    return _parse_ts(s)


def _parse_ts(s) -> int:
    if type(s) is not str or len(s) < 20 or len(s) > 40:
        raise ValueError(f"bad timestamp {s!r:.40}")
    day = s[:10]
    base = _DAYS.get(day)
    if base is None:
        if not (s[4] == "-" and s[7] == "-" and day[:4].isdigit() and day[5:7].isdigit() and day[8:].isdigit()):
            raise ValueError(f"bad timestamp {s!r:.40}")
        y, m, d = int(day[:4]), int(day[5:7]), int(day[8:])
        if not (1 <= m <= 12 and 1 <= d <= calendar.monthrange(y, m)[1]):
            raise ValueError(f"bad date in timestamp {s!r:.40}")
        base = calendar.timegm((y, m, d, 0, 0, 0, 0, 0, 0))
        if len(_DAYS) > 4096:
            _DAYS.clear()
        _DAYS[day] = base
    if s[10] not in "Tt " or s[13] != ":" or s[16] != ":":
        raise ValueError(f"bad timestamp {s!r:.40}")
    hh, mm, ss = s[11:13], s[14:16], s[17:19]
    if not (hh.isdigit() and mm.isdigit() and ss.isdigit()):
        raise ValueError(f"bad time in timestamp {s!r:.40}")
    h, mi, sec = int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or sec > 60:
        raise ValueError(f"bad time in timestamp {s!r:.40}")
    rest = s[19:]
    frac = 0
    if rest[:1] == ".":
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        digits = rest[1:i]
        if not digits or len(digits) > 9:
            raise ValueError(f"bad fraction in timestamp {s!r:.40}")
        frac = int(digits.ljust(9, "0"))
        rest = rest[i:]
    if rest in ("Z", "z", "+00:00", "-00:00"):
        off = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":" and rest[1:3].isdigit() and rest[4:].isdigit():
        off = (int(rest[1:3]) * 3600 + int(rest[4:]) * 60) * (1 if rest[0] == "+" else -1)
    else:
        raise ValueError(f"bad zone in timestamp {s!r:.40}")
    secs_ns = (base + h * 3600 + mi * 60 + sec - off) * 1_000_000_000
    if off == 0 and len(s) == 30 and s[19] == "." and s[29] == "Z":
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        _SECONDS[s[:19]] = secs_ns
    return secs_ns + frac


class _Decimals(dict):
    """Wire string -> finite, non-negative Decimal, memoised (prices repeat on a tick grid)."""

    def __missing__(self, s):
        if type(s) is not str or not s or len(s) > 40:
            raise _Bad(f"expected a decimal string, got {s!r:.40}")
        try:
            d = Decimal(s)
        except InvalidOperation:
            raise _Bad(f"bad decimal {s!r:.40}") from None
        if not d.is_finite() or d < 0:
            raise _Bad(f"decimal out of range {s!r:.40}")
        if len(self) >= 65536:
            self.clear()
        self[s] = d
        return d


_DEC = _Decimals()


def _dec(obj, key):
    try:
        return _DEC[obj[key]]
    except KeyError:
        raise _Bad(f"missing {key}") from None
    except TypeError:
        raise _Bad(f"bad {key}") from None


def _opt_dec(obj, key):
    v = obj.get(key)
    if v is None or v == "":
        return None
    return _DEC[v]


def _product(obj):
    p = obj.get("product_id")
    if type(p) is not str or not p or len(p) > 40:
        raise _Bad(f"bad product_id {p!r:.40}")
    return p


_TAKER = {"BUY": "SELL", "SELL": "BUY", "buy": "SELL", "sell": "BUY"}
_L2_SIDE = {"bid": True, "offer": False, "ask": False}
_EPOCH_FLOOR = 1_000_000_000 * 1_000_000_000      # 2001: older "event_time"s are placeholders


class Normalizer:
    """Parses the frames of ONE connection (it owns that connection's sequence check)."""

    __slots__ = ("conn", "last_seq", "_loads")

    def __init__(self, conn: str):
        self.conn = conn
        self.last_seq = None
        self._loads = json.loads

    def feed(self, frame, recv_ns: int) -> list:
        conn = self.conn
        if type(frame) is dict:
            d = frame
        else:
            try:
                d = self._loads(frame)
            except (ValueError, TypeError) as e:     # JSONDecodeError, UnicodeDecodeError
                return [ParseError(conn, f"not JSON: {str(e)[:80]}")]
        if type(d) is not dict:
            return [ParseError(conn, f"not a JSON object: {type(d).__name__}")]
        channel = d.get("channel")
        if channel is None:
            if d.get("type") == "error":
                msg = d.get("message")
                return [Frame(conn, "error", -1), ErrorFrame(conn, str(msg)[:300] if msg is not None else "")]
            return [ParseError(conn, f"no channel in frame (keys {sorted(d)[:6]})")]
        if type(channel) is not str or len(channel) > 64:
            return [ParseError(conn, "bad channel")]
        seq = d.get("sequence_num")
        if type(seq) is not int or seq < 0:
            return [ParseError(conn, f"bad sequence_num {seq!r:.20}", channel=channel)]
        out = [Frame(conn, channel, seq)]
        last = self.last_seq
        if last is None:
            if seq != 0:
                out.append(Gap(conn, 0, seq))
        elif seq != last + 1:
            if seq <= last:
                out.append(OutOfOrder(conn, last, seq))
                return out
            out.append(Gap(conn, last + 1, seq))
        self.last_seq = seq
        events = d.get("events")
        if type(events) is not list:
            out.append(ParseError(conn, "events is not a list", channel=channel))
            return out
        try:
            ts = parse_ts(d.get("timestamp"))
        except ValueError as e:
            out.append(ParseError(conn, str(e), channel=channel))
            return out
        fn = _CHANNELS.get(channel)
        if fn is not None:
            fn(self, events, ts, recv_ns, out)
        return out

    # --- channels ---------------------------------------------------------------------------------
    def _ticker(self, events, ts, recv_ns, out):
        for ev in events:
            tickers = ev.get("tickers") if type(ev) is dict else None
            if type(tickers) is not list:
                out.append(ParseError(self.conn, "ticker event without tickers", channel="ticker"))
                continue
            for t in tickers:
                try:
                    if type(t) is not dict:
                        raise _Bad("ticker is not an object")
                    bid, ask = _opt_dec(t, "best_bid"), _opt_dec(t, "best_ask")
                    bid_q, ask_q = _opt_dec(t, "best_bid_quantity"), _opt_dec(t, "best_ask_quantity")
                    if bid is None or ask is None or bid_q is None or ask_q is None:
                        bid = ask = bid_q = ask_q = None
                    vol = _opt_dec(t, "volume_24_h")
                    out.append(TickEv(_product(t), _dec(t, "price"), bid, bid_q, ask, ask_q,
                                      Decimal(0) if vol is None else vol, ts, recv_ns))
                except (_Bad, TypeError, AttributeError) as e:
                    out.append(ParseError(self.conn, f"ticker: {e}", channel="ticker"))

    def _trades(self, events, ts, recv_ns, out):
        for ev in events:
            trades = ev.get("trades") if type(ev) is dict else None
            if type(trades) is not list:
                out.append(ParseError(self.conn, "market_trades event without trades", channel="market_trades"))
                continue
            if ev.get("type") == "snapshot":
                # recent trades from before the subscribe: history, not new prints
                continue
            for t in trades:
                try:
                    if type(t) is not dict:
                        raise _Bad("trade is not an object")
                    side = _TAKER.get(t.get("side"))
                    if side is None:
                        raise _Bad(f"bad side {t.get('side')!r:.20}")
                    tid = t.get("trade_id")
                    if type(tid) is int:
                        tid = str(tid)
                    if type(tid) is not str or len(tid) > 64:
                        raise _Bad("bad trade_id")
                    tt = t.get("time")
                    ts_ev = parse_ts(tt) if tt else ts
                    out.append(TradeEv(_product(t), tid, _dec(t, "price"), _dec(t, "size"), side, ts_ev, recv_ns))
                except (_Bad, ValueError, TypeError, AttributeError) as e:
                    out.append(ParseError(self.conn, f"trade: {e}", channel="market_trades"))

    def _l2(self, events, ts, recv_ns, out):
        for ev in events:
            product = ""
            try:
                if type(ev) is not dict:
                    raise _Bad("l2 event is not an object")
                product = _product(ev)
                kind = ev.get("type")
                if kind not in ("snapshot", "update"):
                    raise _Bad(f"bad l2 event type {kind!r:.20}")
                updates = ev.get("updates")
                if type(updates) is not list:
                    raise _Bad("l2 event without updates")
                bids, asks = [], []
                add_bid, add_ask, dec, side_of = bids.append, asks.append, _DEC, _L2_SIDE
                ts_ev = 0
                last_et = None
                for u in updates:
                    is_bid = side_of[u["side"]]
                    lv = (dec[u["price_level"]], dec[u["new_quantity"]])
                    if is_bid:
                        add_bid(lv)
                    else:
                        add_ask(lv)
                    et = u.get("event_time")
                    if et and et != last_et:        # the updates of one event share their time
                        t = parse_ts(et)
                        last_et = et
                        if t > ts_ev:
                            ts_ev = t
                if ts_ev < _EPOCH_FLOOR:
                    ts_ev = ts
                out.append(L2Ev(product, kind == "snapshot", bids, asks, ts_ev, recv_ns))
            except (_Bad, KeyError, TypeError, ValueError, AttributeError) as e:
                reason = str(e) if not isinstance(e, KeyError) else f"missing or bad key {e}"
                out.append(ParseError(self.conn, f"level2: {reason}"[:200], product=product, channel="l2_data"))

    def _heartbeats(self, events, ts, recv_ns, out):
        for ev in events:
            try:
                c = ev["heartbeat_counter"]
                if type(c) is str:
                    c = int(c)
                if type(c) is not int:
                    raise _Bad("bad heartbeat_counter")
                out.append(HeartbeatEv(self.conn, c, ts))
            except (_Bad, KeyError, TypeError, ValueError) as e:
                out.append(ParseError(self.conn, f"heartbeat: {e}", channel="heartbeats"))

    def _subscriptions(self, events, ts, recv_ns, out):
        for ev in events:
            subs = ev.get("subscriptions") if type(ev) is dict else None
            if type(subs) is not dict:
                out.append(ParseError(self.conn, "ack without subscriptions", channel="subscriptions"))
                continue
            out.append(Ack(self.conn, {str(k): list(v) if isinstance(v, list) else [] for k, v in subs.items()}))


_CHANNELS = {
    "ticker": Normalizer._ticker,
    "ticker_batch": Normalizer._ticker,
    "market_trades": Normalizer._trades,
    "l2_data": Normalizer._l2,
    "heartbeats": Normalizer._heartbeats,
    "subscriptions": Normalizer._subscriptions,
}
