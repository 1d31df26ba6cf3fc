"""What risk knows of each product's market (last/mid/book/feed health, volatility bands) and of
the mesh's positions (execution's Position events plus risk's own approved-but-unfilled orders).

Plain classes, no sockets: the node feeds them decoded events.
"""
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from . import kernels as K

ZERO = Decimal(0)
_HALF = Decimal("0.5")
BUY, SELL = "BUY", "SELL"
HALTING_FEED_STATES = ("STALE", "DISCONNECTED")


class Band:
    """One computed volatility band (price units; low/high on the product's price grid)."""
    __slots__ = ("ready", "low", "high", "width", "center", "method", "why")

    def __init__(self, ready, low, high, width, center, method, why=""):
        self.ready, self.low, self.high, self.width = ready, low, high, width
        self.center, self.method, self.why = center, method, why


class ProductMarket:
    """Market state and band kernels of one product."""

    def __init__(self, product: str, spec, window: int, alpha: float, bar_ns: int, period: int):
        self.product = product
        self.spec = spec
        self.st = K.new_state(window, alpha, bar_ns, period)
        self.last = self.bid = self.ask = self.mid = None     # Decimals once known
        self.bid_size = self.ask_size = None
        self.bids = self.asks = None                          # book levels, best first
        self.tick_seq = 0                                     # ticks fed to the kernels
        self.px_seq = 0                                       # bumps when last/mid change
        self.ticks_refused = 0
        self.last_tick_mono = None
        self.book_mono = None
        # feed health (from md.status.<P>; md.gap / md.stale flip it to unhealthy at once)
        self.status_state = None          # None: no status seen yet
        self.status_healthy = False
        self.status_reason = "no md.status seen yet"
        self.status_mono = None
        self.unhealthy_since = None       # monotonic time the feed last went STALE/DISCONNECTED
        self._band_key = None
        self._band = None
        self.band_dirty = False
        self.band_pub_mono = 0.0

    # --- events ---------------------------------------------------------------------------------
    def on_tick(self, tick, ts_event: int, now: float) -> bool:
        price = tick.price
        if not (price > 0):
            self.ticks_refused += 1
            return False
        if K.update(self.st, float(price), ts_event) == 0:
            self.ticks_refused += 1
            return False
        self.tick_seq += 1
        self.px_seq += 1
        self.last = price
        bid, ask = tick.bid, tick.ask
        if bid > 0 and ask > 0 and ask >= bid:
            self.bid, self.ask = bid, ask
            self.bid_size, self.ask_size = tick.bid_size, tick.ask_size
            self.mid = (bid + ask) * _HALF
        elif self.mid is None:
            self.mid = price
        self.last_tick_mono = now
        self.band_dirty = True
        return True

    def on_book(self, book, now: float):
        self.bids, self.asks = book.bids, book.asks
        self.book_mono = now
        self.px_seq += 1
        self.band_dirty = True
        if self.bids and self.asks:
            b, a = self.bids[0][0], self.asks[0][0]
            if b > 0 and a >= b:
                self.bid, self.ask = b, a
                self.bid_size, self.ask_size = self.bids[0][1], self.asks[0][1]
                self.mid = (b + a) * _HALF

    def on_status(self, st, now: float):
        was_halting = self.status_state in HALTING_FEED_STATES or self.status_state == "TIMEOUT"
        self.status_state = st.state if not st.healthy else "OK"
        self.status_healthy = bool(st.healthy)
        self.status_reason = st.reason or st.state
        self.status_mono = now
        halting = not st.healthy and st.state in HALTING_FEED_STATES
        if halting and not was_halting:
            self.unhealthy_since = now
        elif not halting:
            self.unhealthy_since = None

    def mark_unhealthy(self, state: str, reason: str, now: float):
        """md.gap / md.stale named this product: unhealthy until the next healthy md.status."""
        if self.status_healthy or self.status_state is None or self.status_state != state:
            if state in HALTING_FEED_STATES and self.unhealthy_since is None:
                self.unhealthy_since = now
        self.status_healthy = False
        self.status_state = state
        self.status_reason = reason
        if self.status_mono is None:
            self.status_mono = now

    def status_timed_out(self, now: float, timeout: float) -> bool:
        return self.status_mono is not None and now - self.status_mono > timeout

    # --- derived --------------------------------------------------------------------------------
    @property
    def returns(self) -> int:
        return int(self.st[K.S_NRET])

    @property
    def bars(self) -> int:
        return int(self.st[K.S_NBARS])

    def sigmas(self):
        st = self.st
        return float(st[K.O_STD]), float(st[K.O_EWMA]), float(st[K.O_ATR])

    def band(self, method: str, k: float, floor_pct: float, min_history: int) -> Band:
        """The volatility band around mid (last if no mid), cached per tick."""
        key = (self.px_seq, method, k, floor_pct, min_history)
        if key == self._band_key:
            return self._band
        center = self.mid if self.mid is not None else self.last
        st = self.st
        if center is None:
            b = Band(False, None, None, 0.0, None, method, "no price yet")
        else:
            cf = float(center)
            if method == "atr":
                v = st[K.O_ATR]
                ok = not math.isnan(v)
                width = k * v if ok else 0.0
                why = "" if ok else f"ATR needs {int(st[K.P_PERIOD])} bars, has {self.bars}"
            else:
                v = st[K.O_STD] if method == "stddev" else st[K.O_EWMA]
                n = self.returns
                ok = n >= min_history and not math.isnan(v)
                width = k * v * cf if ok else 0.0
                why = "" if ok else f"{method} band needs {min_history} returns, has {n}"
            if ok:
                width = max(width, floor_pct / 100.0 * cf)
                w = Decimal(width)
                tick = self.spec.quote_increment if self.spec is not None else Decimal("0.01")
                low = (center - w).quantize(tick, rounding=ROUND_FLOOR)
                high = (center + w).quantize(tick, rounding=ROUND_CEILING)
                if low < 0:
                    low = ZERO
                b = Band(True, low, high, width, center, method)
            else:
                b = Band(False, None, None, 0.0, center, method, why)
        self._band_key, self._band = key, b
        return b

    def levels(self, side: str):
        """The levels an order of ``side`` would take (book if any, else the tick's top), and
        whether they come from a real book."""
        book = self.asks if side == BUY else self.bids
        if book:
            return book, True
        if side == BUY and self.ask is not None:
            return [[self.ask, self.ask_size or ZERO]], False
        if side == SELL and self.bid is not None:
            return [[self.bid, self.bid_size or ZERO]], False
        return [], False

    def expected_fill(self, side: str, size: Decimal, limit):
        """(vwap of the part that would execute now, executed size, depth_short) walking the
        levels; a limit stops the walk. Without a real book the top price fills everything
        (what the paper venue does)."""
        levels, real = self.levels(side)
        left = size
        cost = ZERO
        for price, qty in levels:
            if limit is not None and ((side == BUY and price > limit) or (side == SELL and price < limit)):
                break
            take = qty if qty < left else left
            if not real:
                take = left
            cost += take * price
            left -= take
            if left <= 0:
                break
        done = size - left
        if done <= 0:
            return None, ZERO, left > 0
        return cost / done, done, left > 0


class Pending:
    """An approved order not yet finished: ``size`` at approval (or as execution reports it);
    filled amounts come from order events (cumulative) and fill events (summed), the larger wins,
    so seeing both never counts a fill twice."""
    __slots__ = ("product", "side", "size", "remaining", "created", "seen", "estimated",
                 "order_filled", "fill_sum")

    def __init__(self, product, side, size, created, seen=False, estimated=False):
        self.product, self.side, self.size, self.remaining = product, side, size, size
        self.created, self.seen, self.estimated = created, seen, estimated
        self.order_filled = self.fill_sum = ZERO

    def recompute(self):
        r = self.size - max(self.order_filled, self.fill_sum)
        return r if r > 0 else ZERO


class Exposure:
    """Positions as execution reports them, plus the worst case of orders risk approved that are
    not filled yet (conservative: a pending buy counts as bought for limits on the long side, a
    pending sell as sold on the short side; pending orders never reduce anything)."""

    TERMINAL = ("FILLED", "CANCELLED", "REJECTED")

    def __init__(self):
        self.positions: dict = {}        # product -> signed qty (from position.<P>)
        self.marks: dict = {}            # product -> execution's mark
        self.pending: dict = {}          # client_order_id -> Pending
        self.pend_buy: dict = {}         # product -> sum of pending buy sizes
        self.pend_sell: dict = {}
        self.version = 0                 # bumps on every change (for publish-on-change)
        self._anon = 0

    def qty(self, product) -> Decimal:
        return self.positions.get(product, ZERO)

    def on_position(self, pos):
        if self.positions.get(pos.product) != pos.qty or self.marks.get(pos.product) != pos.mark:
            self.positions[pos.product] = pos.qty
            if pos.mark > 0:
                self.marks[pos.product] = pos.mark
            self.version += 1

    def _agg(self, p: Pending, sign: int):
        d = self.pend_buy if p.side == BUY else self.pend_sell
        d[p.product] = d.get(p.product, ZERO) + sign * p.remaining

    def add_pending(self, coid: str, product: str, side: str, size: Decimal, now: float,
                    estimated: bool = False):
        if not coid:
            self._anon += 1
            coid = f"~anon-{self._anon}"
        old = self.pending.pop(coid, None)
        if old is not None:
            self._agg(old, -1)
        p = Pending(product, side, size, now, estimated=estimated)
        self.pending[coid] = p
        self._agg(p, +1)
        self.version += 1

    def _set_remaining(self, p: Pending) -> bool:
        r = p.recompute()
        if r == p.remaining:
            return False
        self._agg(p, -1)
        p.remaining = r
        self._agg(p, +1)
        self.version += 1
        return True

    def on_order(self, o, now: float, mark=None) -> bool:
        """Follow execution's order events; returns True if the pending book changed."""
        p = self.pending.get(o.client_order_id)
        if o.status in self.TERMINAL:
            if p is None:
                return False
            self._agg(self.pending.pop(o.client_order_id), -1)
            self.version += 1
            return True
        if p is None:
            # a working order risk did not approve in this run (e.g. before a restart): count it
            from .checks import ABSURD_MAX
            if o.size is not None:
                size = o.size
            elif o.quote_size is not None and mark and o.quote_size <= ABSURD_MAX:
                size = o.quote_size / mark
            else:
                return False
            if not ZERO < size <= ABSURD_MAX:
                return False        # no venue takes it (execution and risk reject it): not exposure
            p = Pending(o.product, o.side, size, now, seen=True)
            p.order_filled = o.filled_size
            p.remaining = p.recompute()
            self.pending[o.client_order_id] = p
            self._agg(p, +1)
            self.version += 1
            return True
        p.seen = True
        if o.size is not None and o.size != p.size:
            p.size = o.size
        if o.filled_size > p.order_filled:
            p.order_filled = o.filled_size
        return self._set_remaining(p)

    def on_fill(self, f) -> bool:
        p = self.pending.get(f.client_order_id)
        if p is None:
            return False
        p.seen = True
        p.fill_sum += f.size
        return self._set_remaining(p)

    def expire(self, now: float, ttl: float) -> int:
        """Forget approvals execution never acted on (no order event within ``ttl``)."""
        old = [k for k, p in self.pending.items() if not p.seen and now - p.created > ttl]
        for k in old:
            self._agg(self.pending.pop(k), -1)
        if old:
            self.version += 1
        return len(old)

    def worst(self, product):
        """(highest, lowest) signed quantity if every pending order of ``product`` fills."""
        q = self.positions.get(product, ZERO)
        return q + self.pend_buy.get(product, ZERO), q - self.pend_sell.get(product, ZERO)

    def worst_abs(self, product) -> Decimal:
        hi, lo = self.worst(product)
        return max(abs(hi), abs(lo))

    def products(self):
        return set(self.positions) | set(self.pend_buy) | set(self.pend_sell)
