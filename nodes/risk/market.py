"""Market views without sockets.

``Quote``: last/bid/ask/mid and the top of the book of one product, with the expected fill of an
order walking it. Execution keeps one per product for the pre-trade checks (fed by ``md.tick`` and
``md.book``). ``ProductMarket`` (a Quote plus the volatility kernels and feed health) is what the
risk node keeps per product to compute the bands and the feed verdict it publishes.
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


class Quote:
    """Last/bid/ask/mid and book levels of one product (Decimals)."""

    def __init__(self, product: str):
        self.product = product
        self.last = self.bid = self.ask = self.mid = None     # Decimals once known
        self.bid_size = self.ask_size = None
        self.bids = self.asks = None                          # book levels, best first
        self.px_seq = 0                                       # bumps when last/mid change

    def on_tick(self, tick, ts_event: int = 0, now: float = 0.0) -> bool:
        price = tick.price
        if not (price > 0):
            return False
        self._quote(tick)
        return True

    def _quote(self, tick):
        self.px_seq += 1
        self.last = tick.price
        bid, ask = tick.bid, tick.ask
        if bid > 0 and ask > 0 and ask >= bid:
            self.bid, self.ask = bid, ask
            self.bid_size, self.ask_size = tick.bid_size, tick.ask_size
            self.mid = (bid + ask) * _HALF
        elif self.mid is None:
            self.mid = tick.price

    def on_book(self, book, now: float = 0.0):
        self.bids, self.asks = book.bids, book.asks
        self.px_seq += 1
        if self.bids and self.asks:
            b, a = self.bids[0][0], self.asks[0][0]
            if b > 0 and a >= b:
                self.bid, self.ask = b, a
                self.bid_size, self.ask_size = self.bids[0][1], self.asks[0][1]
                self.mid = (b + a) * _HALF

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


class ProductMarket(Quote):
    """Risk's view of one product: the quote, the band kernels and feed health."""

    def __init__(self, product: str, spec, window: int, alpha: float, bar_ns: int, period: int):
        super().__init__(product)
        self.spec = spec
        self.st = K.new_state(window, alpha, bar_ns, period)
        self.tick_seq = 0                                     # ticks fed to the kernels
        self.ticks_refused = 0
        self.last_tick_mono = None
        self.book_mono = None
        # feed health (from md.status.<P>; md.gap / md.stale flip it to unhealthy at once)
        self.status_state = None          # None: no status seen yet
        self.status_healthy = False
        self.ever_healthy = False         # a healthy md.status was seen (only then can it latch)
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
        self._quote(tick)
        self.last_tick_mono = now
        self.band_dirty = True
        return True

    def on_status(self, st, now: float):
        was_halting = self.status_state in HALTING_FEED_STATES or self.status_state == "TIMEOUT"
        self.status_state = st.state if not st.healthy else "OK"
        self.status_healthy = bool(st.healthy)
        self.ever_healthy = self.ever_healthy or self.status_healthy
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
