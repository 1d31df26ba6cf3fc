"""The pre-trade checks: plain functions over a decision context, run in a fixed order, stopping at
the first failure. Each returns ``None`` (pass) or ``(proto.errors.Code, human message)``.

They are the risk node's rules and live in its package, but they run in the execution node, in
front of the venue, over execution's own book and the latest risk state it received
(``nodes.execution.pretrade``): the check sits where the state is. This is their one definition.

The order (``CHECKS``) follows ``proto.errors.Code``: validity of the order itself, the kill switch
and trading state, market data and feed health, the venue's size/price grid, the volatility band,
the static price band, slippage against the book, notional, position and exposure per product,
gross exposure, and last the order-rate throttle (so only orders that pass everything else use up
the rate). Money is Decimal throughout; only the volatility band's width comes from float
statistics (it is turned into Decimal prices on the product's tick grid before comparing).
"""
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from proto import Code

from .market import BUY, SELL, ZERO
from .state import HALTED, REDUCING

SIDES = (BUY, SELL)
ORDER_TYPES = ("MARKET", "LIMIT")
TIFS = ("GTC", "IOC", "FOK")
ABSURD_MAX = Decimal("1e12")      # no price, size or quote size on any venue is this large
MIN_EXPONENT = -18                # nor has more than 18 decimal places
_BPS = Decimal(10000)
_PCT = Decimal(100)


class Ctx:
    """One decision's inputs and the figures derived from them (computed once, lazily).

    ``gate`` is what the checks read, all of it in the process that runs them (execution):
    ``gate.view`` the latest risk state received from the risk node (``RiskView``: trading state,
    kill switch, limits, bands, feed verdicts), ``gate.quote(p)`` the market of a product,
    ``gate.book`` the exact book of positions and working orders (the order under check is not in
    it yet, so it is counted exactly once: here), ``gate.approvals`` / ``gate.rate_clock()`` the
    order-rate window, and ``gate.mesh`` for product specs."""

    __slots__ = ("intent", "gate", "market", "spec", "limits", "now", "_size", "_size_est",
                 "_fill", "_reduces")

    def __init__(self, gate, intent, now):
        self.gate = gate
        self.intent = intent
        self.now = now
        self.market = gate.quote(intent.product)
        self.spec = gate.mesh.spec(intent.product)
        self.limits = gate.view.limits(intent.product)
        self._size = self._fill = self._reduces = None
        self._size_est = False

    def size(self):
        """Base size: given, or quote_size / ask for a quote-sized market buy (None if unknown)."""
        if self._size is None:
            i = self.intent
            if i.size is not None:
                self._size = i.size
            else:
                m = self.market
                px = (m.ask if i.side == BUY else m.bid) if m is not None else None
                if px is None and m is not None:
                    px = m.mid
                if px:
                    self._size = i.quote_size / px
                    self._size_est = True
        return self._size

    def reduces(self) -> bool:
        """True if the order can only shrink the position, even if every working order of the
        same side fills first."""
        if self._reduces is None:
            size = self.size()
            if size is None:
                self._reduces = False
            else:
                b, p = self.gate.book, self.intent.product
                q = b.qty(p)
                if self.intent.side == SELL:
                    self._reduces = q > 0 and q - b.pend_sell(p) - size >= 0
                else:
                    self._reduces = q < 0 and q + b.pend_buy(p) + size <= 0
        return self._reduces

    def fill(self):
        """(vwap of the part that executes now or None, executed size, depth short)."""
        if self._fill is None:
            i = self.intent
            size = self.size()
            if size is None or self.market is None:
                self._fill = (None, ZERO, True)
            else:
                lim = i.limit_price if i.order_type == "LIMIT" else None
                self._fill = self.market.expected_fill(i.side, size, lim)
        return self._fill

    def price(self):
        """The price the order is judged at: its limit, or the expected fill of a market order."""
        i = self.intent
        if i.order_type == "LIMIT":
            return i.limit_price
        vwap = self.fill()[0]
        if vwap is not None:
            return vwap
        m = self.market
        return (m.ask if i.side == BUY else m.bid) or m.mid

    def notional(self):
        i = self.intent
        if i.size is None and i.quote_size is not None:
            return i.quote_size
        size, px = self.size(), self.price()
        return None if size is None or px is None else size * px


def _bad_number(v, name):
    if v is None:
        return None
    if not v.is_finite():
        return f"{name} {v} is not a finite number"
    if v <= 0:
        return f"{name} {v} must be > 0"
    if v > ABSURD_MAX:
        return f"{name} {v} is absurdly large (> {ABSURD_MAX})"
    if v.as_tuple().exponent < MIN_EXPONENT:
        return f"{name} {v} has more than {-MIN_EXPONENT} decimal places"
    return None


# --- the checks, in order ---------------------------------------------------------------------

def check_valid(g, c):
    i = c.intent
    if c.spec is None or c.limits is None:
        return Code.INVALID_ORDER, f"unknown product {i.product!r} (risk trades {', '.join(g.view.products)})"
    if i.side not in SIDES:
        return Code.INVALID_ORDER, f"side must be BUY or SELL, got {i.side!r}"
    if i.order_type not in ORDER_TYPES:
        return Code.INVALID_ORDER, f"order_type must be MARKET or LIMIT, got {i.order_type!r}"
    if i.tif not in TIFS:
        return Code.INVALID_ORDER, f"tif must be GTC, IOC or FOK, got {i.tif!r}"
    for v, name in ((i.size, "size"), (i.quote_size, "quote_size"), (i.limit_price, "limit_price")):
        bad = _bad_number(v, name)
        if bad:
            return Code.INVALID_ORDER, bad
    if i.order_type == "LIMIT":
        if i.limit_price is None:
            return Code.INVALID_ORDER, "a limit order needs limit_price"
        if i.size is None or i.quote_size is not None:
            return Code.INVALID_ORDER, "a limit order needs a base size (and no quote_size)"
    else:
        if i.limit_price is not None:
            return Code.INVALID_ORDER, "a market order has no limit_price"
        if (i.size is None) == (i.quote_size is None):
            return Code.INVALID_ORDER, "a market order needs exactly one of size or quote_size"
        if i.quote_size is not None and i.side != BUY:
            return Code.INVALID_ORDER, "quote_size is for market buys; sell a base size"
        if i.post_only:
            return Code.INVALID_ORDER, "a market order cannot be post-only"
    if i.post_only and i.tif != "GTC":
        return Code.INVALID_ORDER, f"post-only needs tif GTC, got {i.tif}"
    return None


def _exit_allowed(g, c):
    return g.view.flatten_on_halt and c.intent.reduce_only and c.reduces()


def check_kill_switch(g, c):
    v = g.view
    if v.killswitch and not _exit_allowed(g, c):
        return Code.KILL_SWITCH, f"kill switch engaged ({v.ks_source}): {v.ks_reason}"
    return None


def check_halted(g, c):
    v = g.view
    if v.state == HALTED and not v.killswitch and not _exit_allowed(g, c):
        return Code.HALTED, f"trading is HALTED: {v.state_reason}"
    return None


def check_reduce_only(g, c):
    v = g.view
    if v.state == REDUCING and not c.reduces():
        q = g.book.qty(c.intent.product)
        return (Code.REDUCE_ONLY, f"trading state REDUCING ({v.state_reason}): only orders that shrink "
                f"a position pass; {c.intent.side} would not shrink position {q}")
    if c.intent.reduce_only and not c.reduces():
        q = g.book.qty(c.intent.product)
        return Code.REDUCE_ONLY, f"reduce-only {c.intent.side} would not shrink position {q} (working orders included)"
    return None


def check_market_data(g, c):
    m = c.market
    if m is None or m.mid is None:
        return Code.NO_MARKET_DATA, f"no market data for {c.intent.product} yet"
    if c.intent.order_type == "MARKET" and not m.levels(c.intent.side)[0]:
        return Code.NO_MARKET_DATA, f"no {'ask' if c.intent.side == BUY else 'bid'} for a market {c.intent.side}"
    return None


def check_feed(g, c):
    code, reason = g.view.feed(c.intent.product)
    if code:
        return code, reason
    return None


def check_size(g, c):
    i, spec = c.intent, c.spec
    if i.size is not None:
        s = i.size
        if s < spec.base_min_size:
            return Code.SIZE_MIN, f"size {s} below the minimum {spec.base_min_size}"
        if s > spec.base_max_size:
            return Code.SIZE_MAX, f"size {s} above the maximum {spec.base_max_size}"
        if s % spec.base_increment != 0:
            return Code.SIZE_INCREMENT, f"size {s} is not a multiple of {spec.base_increment}"
    else:
        q = i.quote_size
        if q % spec.quote_increment != 0:
            return Code.SIZE_INCREMENT, f"quote_size {q} is not a multiple of {spec.quote_increment}"
        s = c.size()
        if s is not None and s > spec.base_max_size:
            return Code.SIZE_MAX, f"quote_size {q} buys about {s:.8f}, above the maximum {spec.base_max_size}"
    n = c.notional()
    if n is not None and n < spec.min_notional:
        return Code.SIZE_MIN, f"notional {n:.2f} below the minimum {spec.min_notional}"
    return None


def check_price_increment(g, c):
    p = c.intent.limit_price
    if p is not None and p % c.spec.quote_increment != 0:
        return Code.PRICE_INCREMENT, f"limit price {p} is not a multiple of {c.spec.quote_increment}"
    return None


def check_vol_band(g, c):
    """The volatility band bounds aggressive prices only: a buy above mid + band or a sell below
    mid - band is refused; a passive limit (a bid below the market, an ask above it) is bounded
    by the static price band alone, so market making and grids stay possible."""
    width, method, _why = g.view.band(c.intent.product)
    if width is None:
        return None          # not enough history yet: the static band and the rest still apply
    px = c.price()
    if px is None:
        return None
    mid, tick = c.market.mid, c.spec.quote_increment
    if c.intent.side == BUY:
        high = (mid + width).quantize(tick, rounding=ROUND_CEILING)
        if px > high:
            return (Code.VOL_BAND, f"buy at {px} above the {method} band's top {high} "
                    f"(mid {mid} + {width})")
    else:
        low = max(ZERO, (mid - width).quantize(tick, rounding=ROUND_FLOOR))
        if px < low:
            return (Code.VOL_BAND, f"sell at {px} below the {method} band's bottom {low} "
                    f"(mid {mid} - {width})")
    return None


def check_price_band(g, c):
    px, mid = c.price(), c.market.mid
    if px is None:
        return None
    pct = abs(px - mid) / mid * _PCT
    if pct > c.limits.max_price_band_pct:
        return (Code.PRICE_BAND, f"price {px} is {pct:.2f}% from mid {mid} "
                f"(max {c.limits.max_price_band_pct}%)")
    return None


def check_slippage(g, c):
    i, m = c.intent, c.market
    vwap, done, short = c.fill()
    if i.order_type == "MARKET" and short and m.levels(i.side)[1]:
        return (Code.SLIPPAGE, f"book too thin: {done} of {c.size():.8f} visible on the "
                f"{'ask' if i.side == BUY else 'bid'} side")
    if vwap is None:
        return None          # nothing executes on arrival (a passive limit): no slippage
    mid = m.mid
    bps = ((vwap - mid) if i.side == BUY else (mid - vwap)) / mid * _BPS
    if bps > c.limits.max_slippage_bps:
        return (Code.SLIPPAGE, f"expected fill {vwap:.8f} is {bps:.1f} bps from mid {mid} "
                f"(max {c.limits.max_slippage_bps} bps)")
    return None


def check_notional(g, c):
    if c.reduces():
        return None          # an exit is bounded by the position; the cap must not trap it
    n = c.notional()
    if n is not None and n > c.limits.max_order_notional:
        return Code.MAX_NOTIONAL, f"notional {n:.2f} above the maximum {c.limits.max_order_notional}"
    return None


def check_position(g, c):
    i, b, lim = c.intent, g.book, c.limits
    if c.reduces():
        return None
    size = c.size()
    q = b.qty(i.product)
    hi, lo = b.worst(i.product)
    after = hi + size if i.side == BUY else lo - size
    if abs(after) > lim.max_position:
        return (Code.MAX_POSITION, f"position could reach {after} (now {q}, working orders included), "
                f"max {lim.max_position}")
    exp = abs(after) * c.market.mid
    if exp > lim.max_exposure:
        return Code.MAX_EXPOSURE, f"exposure could reach {exp:.2f}, max {lim.max_exposure}"
    return None


def check_gross(g, c):
    if c.reduces():
        return None
    i, b = c.intent, g.book
    size = c.size()
    hi, lo = b.worst(i.product)
    if i.side == BUY:
        hi += size
    else:
        lo -= size
    gross = max(abs(hi), abs(lo)) * c.market.mid
    for p in b.products():
        if p != i.product:
            w = b.worst_abs(p)
            if w:
                mk = g.mark(p)
                if mk is None:
                    return Code.GROSS_EXPOSURE, f"cannot value the {p} position {w}: no mark"
                gross += w * mk
    limit = g.view.max_gross_exposure
    if gross > limit:
        return Code.GROSS_EXPOSURE, f"gross exposure could reach {gross:.2f}, max {limit}"
    return None


def check_rate(g, c):
    w = g.approvals
    horizon = g.rate_clock() - 1.0
    while w and w[0] <= horizon:
        w.popleft()
    limit = g.view.max_orders_per_s
    if len(w) >= limit:
        return Code.RATE_LIMIT, f"{len(w)} orders approved in the last second (max {limit}/s)"
    return None


CHECKS = (check_valid, check_kill_switch, check_halted, check_reduce_only, check_market_data,
          check_feed, check_size, check_price_increment, check_vol_band, check_price_band,
          check_slippage, check_notional, check_position, check_gross, check_rate)


def run(gate, intent, now):
    """Run every check in order; ``(Code.OK, "")`` or the first failure, plus the context."""
    c = Ctx(gate, intent, now)
    for chk in CHECKS:
        r = chk(gate, c)
        if r is not None:
            return r[0], r[1], c
    return Code.OK, "", c
