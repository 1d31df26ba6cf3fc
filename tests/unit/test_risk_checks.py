"""Every pre-trade check: one approval and one denial (with its stable code) each, the fixed order,
and the pending-exposure bookkeeping. No sockets: the engine is fed decoded events directly."""
from decimal import Decimal as D

import pytest

from proto import (Book, Code, Envelope, FeedGap, FeedStatus, Fill, KillSwitchCmd, Order, OrderIntent,
                   Position, Tick)
from nodes.config import MeshConfig, ProductSpec
from nodes.risk import checks
from nodes.risk.config import ProductLimits, RiskConfig
from nodes.risk.engine import RiskEngine
from nodes.risk.state import HALTED

T0 = 1_700_000_000_000_000_000
P = "BTC-USD"


class Clock:
    """A deterministic monotonic clock the test moves by hand."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def env(msg, ts=T0):
    return Envelope("t", 1, "test", 1, ts, ts, msg)


def make(tmp_path, ticks=40, status=True, book=True, **conf):
    base = dict(min_history=10, band_floor_pct=0.0, max_position=D("1"), max_exposure=D("50000"),
                max_order_notional=D("30000"), max_gross_exposure=D("80000"), max_orders_per_s=5)
    base.update(conf)
    mesh = MeshConfig(state_dir=str(tmp_path), products=("BTC-USD", "ETH-USD", "SOL-USD"),
                      product_specs={"BTC-USD": ProductSpec(base_min_size=D("0.0001"), base_max_size=D("5"),
                                                            base_increment=D("0.0001"), quote_increment=D("0.01"),
                                                            min_notional=D("1")),
                                     "ETH-USD": ProductSpec()})   # SOL-USD: no spec on purpose
    clock = Clock()
    events = []
    e = RiskEngine(RiskConfig(**base), mesh, emit=lambda t, m: events.append((t, m)), clock=clock)
    e.restore()
    e.events = events
    e.test_clock = clock
    for i in range(ticks):       # alternating 65000 / 65010: per-tick sigma ~1.5e-4
        px = D("65000.00") if i % 2 == 0 else D("65010.00")
        tick(e, px, ts=T0 + i * 500_000_000)
    if status:
        set_status(e, True, "OK")
    if book:
        e.on_book(env(Book(P, [[D("65004.00"), D("0.5")], [D("65003.00"), D("1")]],
                           [[D("65006.00"), D("0.5")], [D("65007.00"), D("1")]])))
    return e


def tick(e, px, ts, product=P, spread=D("1.00")):
    e.on_tick(env(Tick(product, px, px - spread, D("2"), px + spread, D("2"), D("100")), ts=ts))


def set_status(e, healthy, state, product=P, reason=""):
    e.on_status(env(FeedStatus(product, healthy, state, reason, 0.1)))


def limit(side="BUY", size="0.01", price="65006.00", **kw):
    return OrderIntent(P, side, "LIMIT", size=D(size), limit_price=D(price), **kw)


def market(side="BUY", size="0.01", **kw):
    return OrderIntent(P, side, "MARKET", size=D(size), **kw)


def code(e, intent):
    d = e.decide(intent)
    assert d.approved == (d.code == Code.OK)
    return d.code


def pos(e, product, qty, mark="65005"):
    e.on_position(env(Position(product, D(qty), D(mark), D(0), D(0), abs(D(qty)) * D(mark), D(mark), D(0))))


def order(coid, status, size="0.01", filled="0", side="BUY", product=P, code_=Code.OK):
    return Order(coid, "v-" + coid, product, side, "LIMIT", "GTC", D(size), None, D("65006.00"), False, False,
                 status, D(filled), D(0), D(0), D(0), D(0), code_, "", "", "paper", 0, 0)


# --- the baseline ---------------------------------------------------------------------------------

def test_baseline_approves_and_publishes_the_decision(tmp_path):
    e = make(tmp_path)
    d = e.decide(limit(client_order_id="c1"))
    assert d.approved and d.code == Code.OK and d.reason == "" and d.client_order_id == "c1"
    assert d.compute_ns > 0
    assert ("risk.decision", d) in e.events
    assert "c1" in e.exposure.pending


# --- INVALID_ORDER --------------------------------------------------------------------------------

@pytest.mark.parametrize("intent, words", [
    (OrderIntent("DOGE-USD", "BUY", "LIMIT", size=D("1"), limit_price=D("1")), "unknown product"),
    (OrderIntent("SOL-USD", "BUY", "LIMIT", size=D("1"), limit_price=D("1")), "unknown product"),
    (limit(side="HOLD"), "side"),
    (OrderIntent(P, "BUY", "STOP", size=D("1"), limit_price=D("1")), "order_type"),
    (limit(tif="DAY"), "tif"),
    (limit(size="0"), "must be > 0"),
    (limit(size="-0.01"), "must be > 0"),
    (limit(price="-65000"), "must be > 0"),
    (limit(size="1E+13"), "absurdly large"),
    (limit(price="1E+15"), "absurdly large"),
    (limit(size="0.0000000000000000001"), "decimal places"),
    (OrderIntent(P, "BUY", "LIMIT", size=D("0.01")), "needs limit_price"),
    (OrderIntent(P, "BUY", "LIMIT", quote_size=D("100"), limit_price=D("65000")), "base size"),
    (OrderIntent(P, "BUY", "MARKET", size=D("0.01"), limit_price=D("65000")), "no limit_price"),
    (OrderIntent(P, "BUY", "MARKET", size=D("0.01"), quote_size=D("100")), "exactly one"),
    (OrderIntent(P, "BUY", "MARKET"), "exactly one"),
    (OrderIntent(P, "SELL", "MARKET", quote_size=D("100")), "market buys"),
    (OrderIntent(P, "BUY", "MARKET", size=D("0.01"), post_only=True), "post-only"),
    (limit(post_only=True, tif="IOC"), "post-only"),
])
def test_invalid_orders(tmp_path, intent, words):
    e = make(tmp_path, ticks=4)
    d = e.decide(intent)
    assert d.code == Code.INVALID_ORDER and words in d.reason
    assert not e.exposure.pending


def test_non_finite_numbers_are_invalid(tmp_path):
    e = make(tmp_path, ticks=4)
    assert code(e, limit()._replace(size=D("NaN"))) == Code.INVALID_ORDER
    assert code(e, limit()._replace(limit_price=D("Infinity"))) == Code.INVALID_ORDER


# --- kill switch, halted, reducing ----------------------------------------------------------------

def test_kill_switch_denies_everything(tmp_path):
    e = make(tmp_path)
    assert code(e, limit()) == Code.OK
    e.command(KillSwitchCmd("engage", "test"))
    d = e.decide(limit())
    assert d.code == Code.KILL_SWITCH and "test" in d.reason
    pos(e, P, "0.5")
    assert code(e, limit(side="SELL", size="0.1", reduce_only=True)) == Code.KILL_SWITCH  # no flatten


def test_flatten_on_halt_lets_reduce_only_exits_through(tmp_path):
    e = make(tmp_path, flatten_on_halt=True)
    pos(e, P, "0.5")
    e.command(KillSwitchCmd("engage", "test"))
    assert code(e, market(side="SELL", size="0.5", reduce_only=True)) == Code.OK
    assert code(e, market(side="SELL", size="0.1", reduce_only=True)) == Code.KILL_SWITCH  # 0.5 pending
    assert code(e, market(side="SELL", size="0.1")) == Code.KILL_SWITCH       # not flagged reduce-only
    assert code(e, market(side="BUY", size="0.1", reduce_only=True)) == Code.KILL_SWITCH


def test_halted_without_switch_denies(tmp_path):
    e = make(tmp_path)
    e.machine.state = HALTED           # not reachable through the engine; the check still guards it
    assert code(e, limit()) == Code.HALTED


def test_reducing_only_lets_shrinking_orders_pass(tmp_path):
    e = make(tmp_path)
    e.command(KillSwitchCmd("reduce", "test"))
    assert e.machine.state == "REDUCING"
    d = e.decide(limit())
    assert d.code == Code.REDUCE_ONLY and "REDUCING" in d.reason
    pos(e, P, "0.3")
    assert code(e, limit(side="SELL", size="0.2", price="65004.00")) == Code.OK
    assert code(e, limit(side="SELL", size="0.2", price="65004.00")) == Code.REDUCE_ONLY  # would flip
    e.command(KillSwitchCmd("resume"))
    assert code(e, limit()) == Code.OK


def test_reduce_only_flag_must_shrink(tmp_path):
    e = make(tmp_path)
    assert code(e, limit(reduce_only=True)) == Code.REDUCE_ONLY
    pos(e, P, "-0.2")
    assert code(e, limit(size="0.2", reduce_only=True)) == Code.OK
    assert code(e, limit(size="0.01", reduce_only=True)) == Code.REDUCE_ONLY


# --- market data and feed -------------------------------------------------------------------------

def test_no_market_data(tmp_path):
    e = make(tmp_path, ticks=0, book=False)
    assert code(e, limit()) == Code.NO_MARKET_DATA
    tick(e, D("65005.00"), T0)
    assert code(e, limit()) == Code.OK


def test_feed_status_required_missing_stale_and_gap(tmp_path):
    e = make(tmp_path, status=False)
    d = e.decide(limit())
    assert d.code == Code.FEED_STALE and "no md.status" in d.reason
    set_status(e, True, "OK")
    assert code(e, limit()) == Code.OK
    set_status(e, False, "STALE", reason="silent 6 s")
    assert code(e, limit()) == Code.FEED_STALE
    set_status(e, False, "GAP", reason="seq gap")
    assert code(e, limit()) == Code.FEED_GAP
    set_status(e, True, "OK")
    assert code(e, limit()) == Code.OK
    e.on_feed_gap(env(FeedGap("ws", 10, 12, [P])))
    assert code(e, limit()) == Code.FEED_GAP
    set_status(e, True, "OK")
    e.test_clock.t += 3.5              # older than feed_status_timeout_s
    d = e.decide(limit())
    assert d.code == Code.FEED_STALE and "old" in d.reason


def test_feed_status_optional(tmp_path):
    e = make(tmp_path, status=False, require_feed_status=False)
    assert code(e, limit()) == Code.OK


# --- the venue grid -------------------------------------------------------------------------------

def test_size_min_max_increment(tmp_path):
    e = make(tmp_path, max_orders_per_s=100)
    assert code(e, limit(size="0.00005")) == Code.SIZE_MIN
    assert code(e, limit(size="6")) == Code.SIZE_MAX
    assert code(e, limit(size="0.00015")) == Code.SIZE_INCREMENT
    assert code(e, limit(size="0.0001")) == Code.OK
    d = e.decide(limit(size="0.0001", price="6.00"))          # notional 0.0006 < min_notional 1
    assert d.code == Code.SIZE_MIN and "notional" in d.reason
    assert code(e, OrderIntent(P, "BUY", "MARKET", quote_size=D("100.001"))) == Code.SIZE_INCREMENT
    assert code(e, OrderIntent(P, "BUY", "MARKET", quote_size=D("100.00"))) == Code.OK


def test_price_increment(tmp_path):
    e = make(tmp_path)
    assert code(e, limit(price="65006.005")) == Code.PRICE_INCREMENT
    assert code(e, limit(price="65006.01")) == Code.OK


# --- bands and slippage ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["stddev", "ewma"])
def test_vol_band_sigma_methods(tmp_path, method):
    e = make(tmp_path, band_method=method, band_k=6.0)
    b = e.markets[P].band(method, 6.0, 0.0, 10)
    assert b.ready and b.low < D("65005") < b.high
    assert 30 < b.width < 120                       # 6 x ~1.5e-4 x 65005
    assert code(e, limit(side="SELL", price=str(b.high + D("0.01")))) == Code.VOL_BAND
    assert code(e, limit(price=str(b.low - D("0.01")))) == Code.VOL_BAND
    assert code(e, limit(price=str(b.low))) == Code.OK


def test_vol_band_waits_for_min_history(tmp_path):
    e = make(tmp_path, ticks=5, min_history=10)
    assert code(e, limit(price="65300.00")) == Code.OK        # no band yet; static band still 5%
    for i in range(5, 12):
        tick(e, D("65000.00") if i % 2 == 0 else D("65010.00"), T0 + i * 500_000_000)
    assert code(e, limit(price="65300.00")) == Code.VOL_BAND


def test_vol_band_atr(tmp_path):
    e = make(tmp_path, band_method="atr", band_k=2.0, bar_interval_s=1.0, atr_period=3, ticks=40)
    m = e.markets[P]
    assert m.bars >= 3
    sd, ew, atr = m.sigmas()
    assert atr == pytest.approx(10.0)               # every 1 s bar spans 65000..65010
    b = m.band("atr", 2.0, 0.0, 10)
    assert b.high - b.low == pytest.approx(D("40.00"), abs=D("0.02"))
    assert code(e, limit(price=str(b.high + D("0.01")))) == Code.VOL_BAND
    assert code(e, limit(price=str(b.high))) == Code.OK


def test_band_floor(tmp_path):
    e = make(tmp_path, band_floor_pct=1.0)
    assert code(e, limit(price="65500.00")) == Code.OK       # inside the 1% floor
    assert code(e, limit(price="65800.00")) == Code.VOL_BAND


def test_static_price_band(tmp_path):
    e = make(tmp_path, ticks=4, max_price_band_pct=D("1"))   # no vol band yet (min_history)
    d = e.decide(limit(price="66000.00"))
    assert d.code == Code.PRICE_BAND and "1.5" in d.reason
    assert code(e, limit(price="65600.00")) == Code.OK


def test_slippage_walks_the_book(tmp_path):
    big = dict(max_order_notional=D("1e6"), max_position=D("5"), max_exposure=D("1e6"),
               max_gross_exposure=D("1e6"))
    e = make(tmp_path, max_slippage_bps=D("0.5"), max_orders_per_s=100, **big)
    # mid 65005; asks 65006 x0.5, 65007 x1
    assert code(e, market(size="0.5")) == Code.OK                  # 65006: 0.15 bps
    d = e.decide(market(size="1.5"))                               # vwap 65006.67: 0.26 bps
    assert d.code == Code.OK
    e2 = make(tmp_path / "b", max_slippage_bps=D("0.2"), **big)
    d = e2.decide(market(size="1.5"))
    assert d.code == Code.SLIPPAGE and "bps" in d.reason
    d = e2.decide(market(size="2"))                                # deeper than the book
    assert d.code == Code.SLIPPAGE and "thin" in d.reason
    assert code(e2, limit(size="2", price="65006.00")) == Code.OK  # limit: only 0.5 crosses


# --- notional, position, exposure, gross, rate ----------------------------------------------------

def test_max_notional(tmp_path):
    e = make(tmp_path)
    d = e.decide(limit(size="0.5", price="65006.00"))
    assert d.code == Code.MAX_NOTIONAL
    assert code(e, limit(size="0.4")) == Code.OK


def test_max_position_counts_pending(tmp_path):
    e = make(tmp_path, max_order_notional=D("100000"), max_exposure=D("1000000"),
             max_gross_exposure=D("1000000"), max_price_band_pct=D("50"), band_floor_pct=50.0)
    pos(e, P, "0.6")
    assert code(e, limit(size="0.4", client_order_id="a")) == Code.OK      # 1.0: at the limit
    d = e.decide(limit(size="0.0001", client_order_id="b"))
    assert d.code == Code.MAX_POSITION and "pending" in d.reason
    e.on_order(env(order("a", "CANCELLED", size="0.4")))                     # the pending goes away
    assert code(e, limit(size="0.0001", client_order_id="c")) == Code.OK
    assert code(e, limit(side="SELL", size="0.4", price="65004.00")) == Code.OK   # reducing


def test_max_exposure_per_product(tmp_path):
    e = make(tmp_path, max_exposure=D("20000"), products={P: ProductLimits(max_position=D("3"))})
    pos(e, P, "0.25")
    assert code(e, limit(size="0.05")) == Code.OK            # 0.30 x 65005 = 19501
    d = e.decide(limit(size="0.02"))                         # 0.32 x 65005 = 20801
    assert d.code == Code.MAX_EXPOSURE


def test_gross_exposure(tmp_path):
    e = make(tmp_path, max_gross_exposure=D("40000"))
    pos(e, "ETH-USD", "-10", mark="3000")                    # 30000 of ETH
    assert code(e, limit(size="0.15")) == Code.OK            # + 9751
    d = e.decide(limit(size="0.01"))                         # pending 0.15 + 0.01
    assert d.code == Code.GROSS_EXPOSURE
    # a sell while flat: its worst case is dominated by the pending buys (0.15): fine ...
    assert code(e, limit(side="SELL", size="0.01", price="65004.00")) == Code.OK
    # ... until the short side outgrows them
    assert code(e, limit(side="SELL", size="0.2", price="65004.00")) == Code.GROSS_EXPOSURE


def test_rate_limit(tmp_path):
    e = make(tmp_path, max_orders_per_s=3, max_position=D("5"), max_exposure=D("1e6"),
             max_gross_exposure=D("1e6"))
    for _ in range(3):
        assert code(e, limit(size="0.001")) == Code.OK
    assert code(e, limit(size="0.001")) == Code.RATE_LIMIT
    assert code(e, limit(size="0")) == Code.INVALID_ORDER    # denials do not use the rate
    e.test_clock.t += 1.01
    assert code(e, limit(size="0.001")) == Code.OK


def test_per_product_override(tmp_path):
    e = make(tmp_path, products={P: ProductLimits(max_order_notional=D("500"))})
    assert code(e, limit(size="0.01")) == Code.MAX_NOTIONAL  # 650 > 500
    assert code(e, limit(size="0.007")) == Code.OK


# --- order of the checks --------------------------------------------------------------------------

def test_checks_run_in_the_fixed_order_and_stop_at_the_first_failure(tmp_path):
    e = make(tmp_path, status=False)
    e.command(KillSwitchCmd("engage", "x"))
    # invalid AND kill switch AND stale: invalid wins; then kill switch; then feed
    assert code(e, limit(size="-1")) == Code.INVALID_ORDER
    assert code(e, limit(size="0.00015")) == Code.KILL_SWITCH
    e.command(KillSwitchCmd("release", "x"))
    assert code(e, limit(size="0.00015")) == Code.FEED_STALE
    set_status(e, True, "OK")
    assert code(e, limit(size="0.00015", price="99999.999")) == Code.SIZE_INCREMENT
    names = [f.__name__ for f in checks.CHECKS]
    assert names == ["check_valid", "check_kill_switch", "check_halted", "check_reduce_only",
                     "check_market_data", "check_feed", "check_size", "check_price_increment",
                     "check_vol_band", "check_price_band", "check_slippage", "check_notional",
                     "check_position", "check_gross", "check_rate"]


# --- pending bookkeeping --------------------------------------------------------------------------

def test_pending_follows_order_and_fill_events(tmp_path):
    e = make(tmp_path)
    assert code(e, limit(size="0.2", client_order_id="p1")) == Code.OK
    assert e.exposure.pend_buy[P] == D("0.2")
    e.on_order(env(order("p1", "ACCEPTED", size="0.2")))
    e.on_fill(env(Fill("f1", "p1", P, "BUY", D("65006"), D("0.05"), D("0"), "TAKER", "paper")))
    assert e.exposure.pend_buy[P] == D("0.15")
    e.on_order(env(order("p1", "PARTIALLY_FILLED", size="0.2", filled="0.05")))   # same fill: no double count
    assert e.exposure.pend_buy[P] == D("0.15")
    e.on_order(env(order("p1", "PARTIALLY_FILLED", size="0.2", filled="0.12")))
    assert e.exposure.pend_buy[P] == D("0.08")
    e.on_order(env(order("p1", "FILLED", size="0.2", filled="0.2")))
    assert e.exposure.pend_buy[P] == 0 and not e.exposure.pending


def test_pending_unseen_approval_expires(tmp_path):
    e = make(tmp_path, pending_ttl_s=2.0)
    assert code(e, limit(size="0.2", client_order_id="lost")) == Code.OK
    e.test_clock.t += 1.0
    e.on_timer()
    assert "lost" in e.exposure.pending
    e.test_clock.t += 1.5
    set_status(e, True, "OK")
    e.on_timer()
    assert "lost" not in e.exposure.pending and e.exposure.pend_buy[P] == 0


def test_working_orders_seen_after_a_restart_count_as_pending(tmp_path):
    e = make(tmp_path)
    e.on_order(env(order("old", "ACCEPTED", size="0.9", side="BUY")))
    d = e.decide(limit(size="0.2"))
    assert d.code == Code.MAX_POSITION


def test_query_reports_everything(tmp_path):
    e = make(tmp_path)
    pos(e, P, "0.1")
    e.decide(limit(client_order_id="q1"))
    q = e.query()
    assert q["state"] == "ACTIVE" and q["killswitch"].engaged is False
    assert q["exposure"].positions[P] == D("0.1")
    assert q["bands"][P].band_high > q["bands"][P].band_low > 0
    assert q["feeds"][P]["healthy"] is True and q["pending"]["q1"]["remaining"] == D("0.01")
