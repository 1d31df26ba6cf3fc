"""The pre-trade gate in front of the venue, without sockets.

Execution owns positions, working orders and in-flight orders; the risk node owns the risk state
(trading state, kill switch, limits, volatility bands, feed verdicts) and publishes it
(``risk.snapshot``, ``risk.band.<P>``). ``PreTrade`` puts the two together and runs the risk node's
checks (``nodes.risk.checks``: their one definition) in this process, with no round trip:

* ``RiskView``: the latest ``RiskSnapshot`` received, its age on this node's clock, and whether
  risk is known to be down (its heartbeat says STOPPED/FAILED, supervisord says it exited, or its
  heartbeat stopped). Any of those, or no snapshot yet, refuses every order ``RISK_UNAVAILABLE``
  naming why (fail closed).
* ``BookExposure``: execution's exact book: filled positions plus the unfilled remainder of every
  working order (accepted, or sent and not acknowledged yet). The order under check is not in it
  yet, so it is counted exactly once.
* the markets: execution's own ``Quote`` per product, fed by ``md.tick`` and ``md.book``.
"""
import collections
import time
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from proto import Code, RiskDecision

from nodes.risk import checks
from nodes.risk.market import BUY, ZERO, Quote

LIMIT_KEYS = ("max_position", "max_exposure", "max_order_notional", "max_price_band_pct",
              "max_slippage_bps")


class Limits(NamedTuple):
    max_position: Decimal
    max_exposure: Decimal
    max_order_notional: Decimal
    max_price_band_pct: Decimal
    max_slippage_bps: Decimal


class BadSnapshot(ValueError):
    """A snapshot whose contents do not parse (counted and dropped; the previous one stays)."""


def _dec(v, what):
    try:
        d = Decimal(v)
    except (InvalidOperation, TypeError, ValueError):
        raise BadSnapshot(f"{what}: not a decimal: {v!r:.40}") from None
    if not d.is_finite() or d < 0:
        raise BadSnapshot(f"{what}: {v!r:.40} is not a finite non-negative decimal")
    return d


class RiskView:
    """What execution knows of the risk node's state, and whether it may be trusted."""

    def __init__(self, heartbeat_timeout_s: float):
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.snap = None
        self.received = None            # clock time the latest snapshot arrived
        self._limits = {}
        self._bands = {}                # product -> (width or None, method, why)
        self._feeds = {}                # product -> (code, reason)
        self.down = ""                  # why risk is known to be down ("" otherwise)
        self.hb_last = None
        self.dropped = 0

    # --- inputs -------------------------------------------------------------------------------
    def apply(self, snap, now: float) -> bool:
        """Take a snapshot; False if it is older than the one held (or unusable)."""
        cur = self.snap
        if cur is not None and snap.epoch_ns == cur.epoch_ns and snap.version <= cur.version:
            return False
        if cur is not None and snap.epoch_ns < cur.epoch_ns:
            return False                # a previous risk process's last word, arriving late
        limits, bands, feeds = {}, {}, {}
        try:
            for p, d in snap.products.items():
                if type(d) is not dict:
                    raise BadSnapshot(f"products.{p}: not a map")
                limits[p] = Limits(*(_dec(d.get(k), f"products.{p}.{k}") for k in LIMIT_KEYS))
                w = d.get("band", "")
                bands[p] = (_dec(w, f"products.{p}.band") if w else None, str(d.get("band_method", "")),
                            str(d.get("band_why", "")))
                code = d.get("feed", "")
                if code not in ("", Code.FEED_STALE, Code.FEED_GAP):
                    raise BadSnapshot(f"products.{p}.feed: unknown verdict {code!r:.40}")
                feeds[p] = (code, str(d.get("feed_reason", "")))
        except BadSnapshot:
            self.dropped += 1
            raise
        self.snap, self.received = snap, now
        self._limits, self._bands, self._feeds = limits, bands, feeds
        self.down = ""                  # it speaks: whatever said it was down is over
        return True

    def apply_band(self, band):
        """A ``risk.band.<P>`` between snapshots: the latest width for that product."""
        if self.snap is None or band.product not in self._bands:
            return
        self._bands[band.product] = (band.width, band.method, "" if band.width is not None else "not ready")

    def on_heartbeat(self, hb, now: float):
        self.hb_last = now
        if hb.state in ("STOPPED", "FAILED", "STOPPING"):
            self.mark_down(f"risk's heartbeat says {hb.state} (pid {hb.pid})")

    def mark_down(self, why: str):
        if not self.down:
            self.down = why

    # --- the verdict ---------------------------------------------------------------------------
    def age_ms(self, now: float):
        return None if self.received is None else int((now - self.received) * 1000)

    def unavailable(self, now: float) -> str:
        """Why no order may pass on this state, or ""."""
        if self.snap is None:
            return "no risk state received yet (is the risk node running?)"
        if self.down:
            return f"risk is down: {self.down}"
        age = self.age_ms(now)
        if age > self.snap.max_age_ms:
            return (f"risk state is {age / 1000:.1f} s old (risk.state_max_age_ms {self.snap.max_age_ms}); "
                    f"last snapshot v{self.snap.version}")
        if self.hb_last is not None and now - self.hb_last > self.heartbeat_timeout_s:
            return f"no risk heartbeat for {now - self.hb_last:.1f} s"
        return ""

    # --- what the checks read ------------------------------------------------------------------
    @property
    def products(self):
        return tuple(self._limits)

    state = property(lambda self: self.snap.state)
    state_reason = property(lambda self: self.snap.state_reason)
    killswitch = property(lambda self: self.snap.killswitch)
    ks_source = property(lambda self: self.snap.ks_source)
    ks_reason = property(lambda self: self.snap.ks_reason)
    flatten_on_halt = property(lambda self: self.snap.flatten_on_halt)
    max_gross_exposure = property(lambda self: self.snap.max_gross_exposure)
    max_orders_per_s = property(lambda self: self.snap.max_orders_per_s)

    def limits(self, product):
        return self._limits.get(product)

    def band(self, product):
        return self._bands.get(product, (None, "", "no band"))

    def feed(self, product):
        return self._feeds.get(product, (Code.FEED_STALE, f"risk publishes no feed verdict for {product}"))


class BookExposure:
    """Positions (filled) plus working orders, from execution's own records."""

    def __init__(self, book, working: dict):
        self.positions = book.positions         # product -> ProductPosition
        self.working = working                  # coid -> OrderState (working orders only)

    def qty(self, product) -> Decimal:
        p = self.positions.get(product)
        return p.qty if p is not None else ZERO

    def _pend(self, product, side) -> Decimal:
        n = ZERO
        for o in self.working.values():
            if o.product == product and o.side == side:
                n += remaining(o)
        return n

    def pend_buy(self, product) -> Decimal:
        return self._pend(product, BUY)

    def pend_sell(self, product) -> Decimal:
        return self._pend(product, "SELL")

    def worst(self, product):
        """(highest, lowest) signed quantity if every working order of ``product`` fills."""
        q = self.qty(product)
        return q + self.pend_buy(product), q - self.pend_sell(product)

    def worst_abs(self, product) -> Decimal:
        hi, lo = self.worst(product)
        return max(abs(hi), abs(lo))

    def products(self):
        return {p for p, pos in self.positions.items() if pos.qty} | {o.product for o in self.working.values()}


def remaining(o) -> Decimal:
    """The base size a working order may still fill (a quote-sized buy: its estimate at the check)."""
    size = o.size if o.size is not None else o.est_size
    if size is None:
        return ZERO
    r = size - o.filled_size
    return r if r > 0 else ZERO


class PreTrade:
    """Runs ``nodes.risk.checks`` against execution's book and the latest risk state."""

    def __init__(self, mesh, book, working: dict, *, clock, heartbeat_timeout_s: float):
        self.mesh = mesh
        self.view = RiskView(heartbeat_timeout_s)
        self.book = BookExposure(book, working)
        self.quotes = {p: Quote(p) for p in mesh.products}
        self.approvals = collections.deque()
        self.clock = clock
        self.counters = collections.Counter()

    # the gate interface of nodes.risk.checks
    def quote(self, product):
        return self.quotes.get(product)

    def rate_clock(self):
        return self.clock()

    def mark(self, product):
        q = self.quotes.get(product)
        if q is not None and q.mid is not None:
            return q.mid
        p = self.book.positions.get(product)
        return p.mark if p is not None and p.mark else None

    def ready(self, products=None) -> str:
        """"" when orders can pass, else why not yet: risk state missing or stale, no market data
        for a product, or risk's feed verdict on it not OK (no md.status seen yet at a start, a
        gap, a stale feed). Strategies wait for this before they trade."""
        why = self.view.unavailable(self.clock())
        if why:
            return why
        for p in products or self.quotes:
            why = self._not_ready(p)
            if why:
                return why
        return ""

    def _not_ready(self, p) -> str:
        q = self.quotes.get(p)
        if q is None or q.mid is None:
            return f"no market data for {p} yet"
        code, reason = self.view.feed(p)
        if code:
            return f"risk refuses {p} {code}: {reason}"
        return ""

    def ready_products(self):
        """(why risk is unavailable or "", the products orders can pass in now: market data for
        each and risk's feed verdict OK, and none while risk is unavailable)."""
        why = self.view.unavailable(self.clock())
        if why:
            return why, ()
        return "", tuple(p for p in self.quotes if not self._not_ready(p))

    def not_ready_products(self) -> dict:
        """product -> why orders in it cannot pass yet (risk itself available)."""
        out = {}
        for p in self.quotes:
            why = self._not_ready(p)
            if why:
                out[p] = why
        return out

    def decide(self, intent):
        """(RiskDecision, size or None). An approval enters the rate window; the caller puts the
        order in its working book before anything else is checked."""
        t0 = time.perf_counter_ns()
        now = self.clock()
        why = self.view.unavailable(now)
        if why:
            code, reason, size = Code.RISK_UNAVAILABLE, why, None
        else:
            code, reason, ctx = checks.run(self, intent, now)
            size = ctx.size() if code == Code.OK else None
        approved = code == Code.OK
        if approved:
            self.approvals.append(now)
        self.counters["decisions"] += 1
        self.counters["approved" if approved else "denied"] += 1
        if not approved:
            self.counters[f"denied.{code}"] += 1
        return RiskDecision(intent.client_order_id, intent.product, approved, code, reason,
                            time.perf_counter_ns() - t0), size
