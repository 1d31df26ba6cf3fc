"""Every pre-trade check: one approval and one denial (with its stable code) each, the fixed order,
and the working-order bookkeeping, with the checks where they run: execution's ``PreTrade`` over
its own book, fed the snapshots a real ``RiskEngine`` publishes. No sockets: the engine's events go
to the view as the bus would carry them."""
from decimal import Decimal as D

import pytest

from proto import (Book, Code, Envelope, FeedGap, FeedStatus, Fill, Heartbeat, KillSwitchCmd, OrderIntent,
                   Tick)
from nodes.config import MeshConfig, ProductSpec
from nodes.execution.orders import OrderState
from nodes.execution.positions import PositionBook
from nodes.execution.pretrade import PreTrade
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


class Desk:
    """Risk (a RiskEngine) and execution's side of the checks (a PreTrade over a PositionBook and a
    working-order table), wired as the bus wires them: risk.snapshot and risk.band.<P> go to the
    view, market data to both."""

    def __init__(self, conf, mesh, clock):
        self.clock = clock
        self.events = []
        self.engine = RiskEngine(conf, mesh, emit=self._emit, clock=clock)
        self.book = PositionBook()
        self.working = {}
        self.pretrade = PreTrade(mesh, self.book, self.working, clock=clock, heartbeat_timeout_s=3.0)
        self.n = 0

    def _emit(self, topic, msg):
        self.events.append((topic, msg))
        if topic == "risk.snapshot":
            self.pretrade.view.apply(msg, self.clock())
        elif topic.startswith("risk.band."):
            self.pretrade.view.apply_band(msg)

    # risk's inputs
    def __getattr__(self, name):
        return getattr(self.engine, name)

    def on_tick(self, e):
        self.engine.on_tick(e)
        self.pretrade.quotes[e.msg.product].on_tick(e.msg)

    def on_book(self, e):
        self.pretrade.quotes[e.msg.product].on_book(e.msg)

    # execution's side
    def decide(self, intent):
        """What ExecutionNode._submit does with the verdict: an approval joins the working book."""
        if not intent.client_order_id:
            self.n += 1
            intent = intent._replace(client_order_id=f"o{self.n}")
        d, size = self.pretrade.decide(intent)
        if d.approved:
            o = OrderState.from_intent(intent, "paper", 0)
            if intent.size is None:
                o.est_size = size
            self.working[intent.client_order_id] = o
        return d

    def fill(self, coid, size, price="65006"):
        o = self.working[coid]
        f = Fill(f"f{self.n}", coid, o.product, o.side, D(price), D(size), D(0), "TAKER", "paper")
        o.apply_fill(f.price, f.size, f.fee)
        self.book.apply_fill(f, 0)
        if o.filled_size >= o.size:
            del self.working[coid]

    def cancel(self, coid):
        del self.working[coid]


def make(tmp_path, ticks=40, status=True, book=True, **conf):
    base = dict(min_history=10, band_floor_pct=0.0, max_position=D("1"), max_exposure=D("50000"),
                max_order_notional=D("30000"), max_gross_exposure=D("80000"), max_orders_per_s=5,
                band_publish_min_interval_s=0.0)
    base.update(conf)
    mesh = MeshConfig(state_dir=str(tmp_path), products=("BTC-USD", "ETH-USD", "SOL-USD"),
                      product_specs={"BTC-USD": ProductSpec(base_min_size=D("0.0001"), base_max_size=D("5"),
                                                            base_increment=D("0.0001"), quote_increment=D("0.01"),
                                                            min_notional=D("1")),
                                     "ETH-USD": ProductSpec()})   # SOL-USD: no spec on purpose
    clock = Clock()
    e = Desk(RiskConfig(**base), mesh, clock)
    e.restore()
    e.publish_snapshot(force=True)
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
    """A filled position in execution's book."""
    q = D(qty)
    f = Fill("seed-" + product, "seed", product, "BUY" if q > 0 else "SELL", D(mark), abs(q), D(0), "TAKER", "paper")
    e.book.apply_fill(f, 0)
    e.book.set_mark(product, D(mark))


# --- the baseline ---------------------------------------------------------------------------------

def test_baseline_approves_and_publishes_the_decision(tmp_path):
    e = make(tmp_path)
    d = e.decide(limit(client_order_id="c1"))
    assert d.approved and d.code == Code.OK and d.reason == "" and d.client_order_id == "c1"
    assert d.compute_ns > 0
    assert "c1" in e.working


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
    assert not e.working


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
    assert code(e, market(side="SELL", size="0.1", reduce_only=True)) == Code.KILL_SWITCH  # 0.5 working
    assert code(e, market(side="SELL", size="0.1")) == Code.KILL_SWITCH       # not flagged reduce-only
    assert code(e, market(side="BUY", size="0.1", reduce_only=True)) == Code.KILL_SWITCH


def test_halted_without_switch_denies(tmp_path):
    e = make(tmp_path)
    e.machine.state = HALTED           # not reachable through the engine; the check still guards it
    e.publish_snapshot(force=True)
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
    assert code(e, limit(side="SELL", size="0.1", price="65004.00")) == Code.OK           # exits fully
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
    e.on_timer()                       # risk's timer: the verdict changed, a snapshot goes out
    d = e.decide(limit())
    assert d.code == Code.FEED_STALE and "old" in d.reason


def test_execution_is_ready_for_a_product_only_once_risk_passes_its_feed(tmp_path):
    """Strategies wait for execution's readiness: at a start (no md.status seen by risk yet), in a
    gap and while the feed is stale, the product is not ready, so no order is sent only to be
    refused FEED_STALE; the reason names risk's verdict."""
    e = make(tmp_path, status=False)
    pt = e.pretrade
    assert P not in pt.ready_products()[1]
    assert pt.ready([P]) == f"risk refuses {P} FEED_STALE: no md.status for {P} seen yet"
    assert pt.not_ready_products()[P] == pt.ready([P])
    set_status(e, True, "OK")
    assert pt.ready_products() == ("", (P,)) and pt.ready([P]) == ""
    assert pt.not_ready_products() == {"ETH-USD": "no market data for ETH-USD yet",
                                       "SOL-USD": "no market data for SOL-USD yet"}
    set_status(e, False, "GAP", reason="seq gap")
    assert P not in pt.ready_products()[1] and "FEED_GAP" in pt.ready([P])
    set_status(e, True, "OK")
    assert P in pt.ready_products()[1]


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
    w = e.band_width(e.markets[P])
    high, low = D("65005") + w, D("65005") - w
    # aggressive prices beyond the band are refused ...
    assert code(e, limit(price=str(high + D("0.01")))) == Code.VOL_BAND
    assert code(e, limit(side="SELL", price=str(low - D("0.01")))) == Code.VOL_BAND
    assert code(e, limit(price=str(high))) == Code.OK
    # ... passive ones (a bid below the market, an ask above it) are not: the static band bounds them
    assert code(e, limit(price=str(low - D("100.00")))) == Code.OK
    assert code(e, limit(side="SELL", price=str(high + D("100.00")))) == Code.OK


def test_vol_band_leaves_passive_quotes_to_the_static_band(tmp_path):
    """A market maker's ask 14 above mid passes; an absurd one is still PRICE_BAND."""
    e = make(tmp_path, band_method="stddev", band_k=1.0, max_price_band_pct=D("1"))
    assert code(e, limit(side="SELL", size="0.01", price="65019.00")) == Code.OK
    assert code(e, limit(side="SELL", size="0.01", price="66000.00")) == Code.PRICE_BAND
    assert code(e, limit(side="SELL", size="0.01", price="64000.00")) == Code.VOL_BAND


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
    assert e.band_width(m) == D("20.00")
    assert code(e, limit(price="65025.01")) == Code.VOL_BAND     # mid 65005 + 20
    assert code(e, limit(price="65025.00")) == Code.OK


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


def test_max_position_counts_working_orders(tmp_path):
    e = make(tmp_path, max_order_notional=D("100000"), max_exposure=D("1000000"),
             max_gross_exposure=D("1000000"), max_price_band_pct=D("50"), band_floor_pct=50.0)
    pos(e, P, "0.6")
    assert code(e, limit(size="0.4", client_order_id="a")) == Code.OK      # 1.0: at the limit
    d = e.decide(limit(size="0.0001", client_order_id="b"))
    assert d.code == Code.MAX_POSITION and "working orders included" in d.reason
    e.cancel("a")                                                            # the working order goes away
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
    d = e.decide(limit(size="0.01"))                         # working 0.15 + 0.01
    assert d.code == Code.GROSS_EXPOSURE
    # a sell while flat: its worst case is dominated by the working buys (0.15): fine ...
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
    e.on_timer()                                             # risk's periodic snapshot
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


# --- working-order bookkeeping ---------------------------------------------------------------------

def test_working_remainder_follows_fills(tmp_path):
    e = make(tmp_path, max_orders_per_s=100)
    assert code(e, limit(size="0.2", client_order_id="p1")) == Code.OK
    assert e.pretrade.book.pend_buy(P) == D("0.2")
    e.fill("p1", "0.05")
    assert e.pretrade.book.pend_buy(P) == D("0.15") and e.pretrade.book.qty(P) == D("0.05")
    e.fill("p1", "0.15")
    assert e.pretrade.book.pend_buy(P) == 0 and not e.working and e.pretrade.book.qty(P) == D("0.2")


def test_a_reduce_only_sell_of_the_whole_position_passes(tmp_path):
    """The order under check is counted once: 0.011 held, 0.011 reduce-only sell passes."""
    e = make(tmp_path)
    pos(e, P, "0.011")
    assert code(e, limit(side="SELL", size="0.011", price="65004.00", reduce_only=True)) == Code.OK
    assert code(e, limit(side="SELL", size="0.001", price="65004.00", reduce_only=True)) == Code.REDUCE_ONLY


def test_an_order_of_exactly_max_position_from_flat_passes(tmp_path):
    e = make(tmp_path, max_order_notional=D("100000"), max_exposure=D("1000000"),
             max_gross_exposure=D("1000000"), max_slippage_bps=D("1000"))
    assert code(e, market(size="1")) == Code.OK
    assert code(e, market(size="0.0001")) == Code.MAX_POSITION


def test_two_orders_in_flight_cannot_together_pass_a_limit(tmp_path):
    e = make(tmp_path, max_order_notional=D("100000"), max_exposure=D("1000000"),
             max_gross_exposure=D("50000"), max_orders_per_s=100)
    assert code(e, limit(size="0.6")) == Code.OK
    assert code(e, limit(size="0.5")) == Code.MAX_POSITION          # 1.1 > 1
    assert code(e, limit(size="0.2")) == Code.GROSS_EXPOSURE        # 0.8 x 65005 > 50000


def test_quote_sized_buy_counts_its_estimate(tmp_path):
    e = make(tmp_path, max_slippage_bps=D("1000"))
    assert code(e, OrderIntent(P, "BUY", "MARKET", quote_size=D("6500.60"))) == Code.OK   # ~0.1 at 65006
    assert e.pretrade.book.pend_buy(P) == D("6500.60") / D("65006.00")


# --- fail closed ----------------------------------------------------------------------------------

def test_no_risk_state_refuses_everything(tmp_path):
    e = make(tmp_path)
    e.pretrade.view.snap = None
    d = e.decide(limit())
    assert d.code == Code.RISK_UNAVAILABLE and "no risk state" in d.reason


def test_a_stale_risk_state_refuses_and_a_fresh_one_resumes(tmp_path):
    e = make(tmp_path)
    e.test_clock.t += 2.5                                        # > state_max_age_ms 2000, no snapshot
    d = e.decide(limit())
    assert d.code == Code.RISK_UNAVAILABLE and "old" in d.reason and "state_max_age_ms" in d.reason
    e.on_timer()
    assert code(e, limit()) == Code.OK


def test_risk_heartbeat_stopped_or_lost_refuses(tmp_path):
    e = make(tmp_path)
    v = e.pretrade.view
    v.on_heartbeat(Heartbeat("risk", 42, "RUNNING", 0, 1.0, {}, "h"), e.test_clock())
    assert code(e, limit()) == Code.OK
    e.test_clock.t += 1.0
    e.on_timer()
    e.test_clock.t += 1.0
    e.on_timer()
    e.test_clock.t += 1.5                                         # heartbeat 3.5 s old, snapshot fresh
    e.on_timer()
    d = e.decide(limit())
    assert d.code == Code.RISK_UNAVAILABLE and "heartbeat" in d.reason
    v.on_heartbeat(Heartbeat("risk", 42, "STOPPED", 0, 1.0, {}, "h"), e.test_clock())
    d = e.decide(limit())
    assert d.code == Code.RISK_UNAVAILABLE and "STOPPED" in d.reason


def test_a_restarted_risk_with_the_switch_engaged_refuses_at_once(tmp_path):
    e = make(tmp_path)
    e.command(KillSwitchCmd("engage", "before the restart"))
    e.persist()
    assert code(e, limit()) == Code.KILL_SWITCH
    # a new risk process on the same state file: a new epoch, versions from 1 again
    r2 = RiskEngine(e.engine.conf, e.engine.mesh, emit=e._emit, clock=e.test_clock,
                    wall_ns=lambda: e.engine.epoch_ns + 10**9)
    e.pretrade.view.mark_down("supervisord reports tickmesh:risk EXITED")
    assert e.decide(limit()).code == Code.RISK_UNAVAILABLE
    r2.restore()
    r2.publish_snapshot(force=True)
    assert r2.epoch_ns > e.engine.epoch_ns and r2.version <= 2    # restore's state event, then this
    d = e.decide(limit())
    assert d.code == Code.KILL_SWITCH and "before the restart" in d.reason


def test_a_malformed_snapshot_is_dropped_and_the_last_good_one_kept(tmp_path):
    from nodes.execution.pretrade import BadSnapshot
    e = make(tmp_path)
    bad = e.engine.snapshot()
    bad = bad._replace(products={P: dict(bad.products[P], max_position="lots")})
    with pytest.raises(BadSnapshot, match="max_position"):
        e.pretrade.view.apply(bad, e.test_clock())
    assert e.pretrade.view.dropped == 1
    assert code(e, limit()) == Code.OK


def test_never_healthy_feed_refuses_but_does_not_latch(tmp_path):
    e = make(tmp_path, status=False)
    set_status(e, False, "DISCONNECTED", reason="no internet")
    for _ in range(40):
        e.test_clock.t += 0.5
        e.on_timer()
    assert not e.latch.engaged
    assert code(e, limit()) == Code.FEED_STALE
    set_status(e, True, "OK")
    set_status(e, False, "STALE", reason="silent")
    for _ in range(12):
        e.test_clock.t += 0.5
        e.on_timer()
    assert e.latch.engaged and e.latch.source == "auto:stale_feed"


def test_query_reports_everything(tmp_path):
    e = make(tmp_path)
    q = e.query()
    assert q["state"] == "ACTIVE" and q["killswitch"].engaged is False
    assert q["bands"][P].band_high > q["bands"][P].band_low > 0 and q["bands"][P].width > 0
    assert q["feeds"][P]["healthy"] is True and q["feeds"][P]["verdict"] == "OK"
    assert q["snapshot_version"] == e.version >= 1
