"""Execution against the real risk node (no stand-in), over tcp: approvals, a denial with the checks'
code, the kill switch engaged through risk cancelling working orders, and every order-path failure
the redesign fixed: a reduce-only exit of the whole position, an order of exactly max_position,
two orders in flight against one limit, flatten on halt, risk killed, risk restarted engaged."""
import time
from decimal import Decimal as D

from nodes.client import RequestClient
from nodes.execution import ExecutionConfig, ExecutionNode
from nodes.risk import RiskConfig, RiskNode
from proto import Code, FeedStatus, KillSwitchCmd, OrderIntent, Query
from tests.conftest import make_mesh, wait_until
from tests.integration.test_exec_support import Publisher, book, tick, topics

BTC = "BTC-USD"


def test_execution_with_the_real_risk_node(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    risk = RiskNode(mesh, RiskConfig(), context=ctx).start()
    node = ExecutionNode(mesh, ExecutionConfig(pnl_interval_s=0.2), context=ctx).start()
    md = Publisher(ctx, mesh, "marketdata")
    rc = RequestClient.for_node(mesh, "risk", timeout_ms=2000, source="test", context=ctx)
    ec = RequestClient.for_node(mesh, "execution", timeout_ms=2000, source="test", context=ctx)

    def feed():
        md.send(topics.md_status(BTC), FeedStatus(BTC, True, "OK", "", 0.1))
        md.send(topics.tick(BTC), tick())
        md.send(topics.book(BTC), book())

    def feeding(pred):
        """A predicate that republishes the feed on every poll (slow joiners on both nodes)."""
        def go():
            feed()
            return pred()
        return go

    try:
        wait_until(feeding(lambda: node.pretrade.view.feed(BTC) == ("", "") and BTC in node.venue.books),
                   10, interval=0.02, what="execution holding risk's verdict of a healthy BTC-USD feed")
        r = ec.request(OrderIntent(BTC, "BUY", "MARKET", size=D("0.01"), client_order_id="rr-1"))
        assert r.ok and r.data.status == "FILLED", r
        feed()
        r = ec.request(OrderIntent(BTC, "BUY", "MARKET", size=D("0.5"), client_order_id="rr-2"))   # 32.5k > 25k
        assert not r.ok and r.data.status == "REJECTED" and r.code == Code.MAX_NOTIONAL, r
        assert node.venue.submitted == 1
        feed()
        r = ec.request(OrderIntent(BTC, "BUY", "LIMIT", size=D("0.01"), limit_price=D("64500"), client_order_id="rr-3"))
        assert r.ok and r.data.status == "ACCEPTED", r
        pt = ec.call(Query("pretrade"))
        assert pt["risk_state_version"] >= 1 and pt["risk_state_age_ms"] < 2000 and pt["working_orders"] == 1
        # the kill switch, engaged at risk, cancels execution's working orders
        assert rc.request(KillSwitchCmd("engage", "integration test")).ok
        wait_until(lambda: ec.call(Query("order", "rr-3")).status == "CANCELLED", 5, what="kill switch cancel")
        o = ec.call(Query("order", "rr-3"))
        assert o.code == Code.KILL_SWITCH and "integration test" in o.reason
        feed()
        r = ec.request(OrderIntent(BTC, "SELL", "MARKET", size=D("0.01"), client_order_id="rr-4"))
        assert not r.ok and r.code == Code.KILL_SWITCH
        assert rc.request(KillSwitchCmd("release", "done")).ok
    finally:
        rc.close()
        ec.close()
        node.stop()
        risk.stop()
        md.close()


class Mesh:
    """The real risk node and execution over tcp, a market-data publisher and request clients."""

    def __init__(self, short_tmp, ctx, risk_conf=None, **exec_conf):
        self.mesh = make_mesh("tcp", short_tmp)
        self.ctx = ctx
        self.risk_conf = risk_conf or RiskConfig()
        self.risk = RiskNode(self.mesh, self.risk_conf, context=ctx).start()
        exec_conf.setdefault("pnl_interval_s", 0.2)
        self.node = ExecutionNode(self.mesh, ExecutionConfig(**exec_conf), context=ctx).start()
        self.md = Publisher(ctx, self.mesh, "marketdata")
        self.rc = RequestClient.for_node(self.mesh, "risk", timeout_ms=2000, source="test", context=ctx)
        self.ec = RequestClient.for_node(self.mesh, "execution", timeout_ms=2000, source="test", context=ctx)
        self.ready()

    def feed(self):
        self.md.send(topics.md_status(BTC), FeedStatus(BTC, True, "OK", "", 0.1))
        self.md.send(topics.tick(BTC), tick())
        self.md.send(topics.book(BTC), book())

    def ready(self):
        def go():
            self.feed()
            return (self.node.pretrade.view.snap is not None and self.node.pretrade.view.feed(BTC) == ("", "")
                    and BTC in self.node.venue.books and not self.node.pretrade.view.unavailable(self.node.clock()))
        wait_until(go, 10, interval=0.02, what="execution holding a fresh risk state and a healthy feed")

    def order(self, side, size, coid, **kw):
        kw.setdefault("order_type", "MARKET")
        return self.ec.request(OrderIntent(BTC, side, size=D(size), client_order_id=coid, **kw))

    def qty(self):
        return self.ec.call(Query("positions", BTC))[0].qty

    def close(self):
        self.rc.close()
        self.ec.close()
        self.node.stop()
        self.risk.stop()
        self.md.close()


def test_the_order_under_check_counts_once(short_tmp, ctx):
    m = Mesh(short_tmp, ctx, RiskConfig(max_position=D("0.5"), max_slippage_bps=D("500"),
                                        max_order_notional=D("1e6")))
    try:
        assert m.order("BUY", "0.011", "a").data.status == "FILLED"
        r = m.order("SELL", "0.011", "b", reduce_only=True)               # the whole position, reduce-only
        assert r.ok and r.data.status == "FILLED", r
        assert m.qty() == 0
        r = m.order("BUY", "0.5", "c")                                     # exactly max_position, from flat
        assert r.ok and r.data.status == "FILLED", r
        r = m.order("BUY", "0.0001", "d")
        assert r.code == Code.MAX_POSITION
    finally:
        m.close()


def test_two_orders_in_flight_cannot_pass_the_position_limit_together(short_tmp, ctx):
    # 300 ms of paper latency: the first order is still in flight (NEW, unacknowledged) when the
    # second is checked
    m = Mesh(short_tmp, ctx, RiskConfig(max_position=D("0.5"), max_slippage_bps=D("500")), latency_ms=300.0)
    try:
        a = m.order("BUY", "0.3", "f1")
        assert a.ok and a.data.status == "NEW", a
        b = m.order("BUY", "0.3", "f2")
        assert b.code == Code.MAX_POSITION and "working orders included" in b.reason, b
        c = m.order("BUY", "0.2", "f3")                                    # 0.3 + 0.2: at the limit
        assert c.ok, c
        wait_until(lambda: m.qty() == D("0.5"), 5, what="both fills")
        assert m.node.venue.submitted == 2
    finally:
        m.close()


def test_flatten_on_halt_flattens_and_stays_flat(short_tmp, ctx):
    m = Mesh(short_tmp, ctx, RiskConfig(flatten_on_halt=True, max_slippage_bps=D("500")))
    try:
        assert m.order("BUY", "0.2", "p1").data.status == "FILLED"
        t0 = time.monotonic()
        assert m.rc.request(KillSwitchCmd("engage", "flatten test")).ok
        wait_until(lambda: (m.feed(), m.qty() == 0)[1], 5, interval=0.05, what="the position flattened")
        assert time.monotonic() - t0 < 5
        flat = [o for o in m.ec.call(Query("orders", "all")) if o.strategy == "risk.flatten"]
        assert [(o.side, o.size, o.status, o.reduce_only) for o in flat] == [("SELL", D("0.20000000"), "FILLED", True)]
        r = m.order("BUY", "0.1", "p2")
        assert r.code == Code.KILL_SWITCH                                  # and it stays flat
        assert m.order("SELL", "0.1", "p3").code == Code.KILL_SWITCH
        assert m.qty() == 0
    finally:
        m.close()


def test_risk_killed_then_restarted_with_the_switch_engaged(short_tmp, ctx):
    m = Mesh(short_tmp, ctx, RiskConfig(max_slippage_bps=D("500")))
    try:
        assert m.order("BUY", "0.01", "k1").data.status == "FILLED"
        assert m.rc.request(KillSwitchCmd("engage", "before the crash")).ok
        m.risk.stop()                                                      # risk gone
        wait_until(lambda: m.node.pretrade.view.unavailable(m.node.clock()), 5, what="risk seen down")
        sent = m.node.venue.submitted
        for i in range(3):
            r = m.order("SELL", "0.01", f"k-gone-{i}")
            assert r.code == Code.RISK_UNAVAILABLE and "risk" in r.reason, r
        assert m.node.venue.submitted == sent                              # none sent
        m.risk = RiskNode(m.mesh, m.risk_conf, context=ctx).start()        # same state file
        wait_until(lambda: (m.feed(), not m.node.pretrade.view.unavailable(m.node.clock()))[1], 10,
                   interval=0.02, what="the restarted risk's state arriving")
        r = m.order("BUY", "0.01", "k-back")
        assert r.code == Code.KILL_SWITCH and "before the crash" in r.reason, r
        assert m.rc.request(KillSwitchCmd("release", "done")).ok
        wait_until(lambda: not m.node.pretrade.view.killswitch, 5, what="the release arriving")
        m.feed()
        assert m.order("BUY", "0.01", "k-after").data.status == "FILLED"
    finally:
        m.close()


def test_in_reducing_a_position_exits_fully(short_tmp, ctx):
    m = Mesh(short_tmp, ctx, RiskConfig(max_slippage_bps=D("500")))
    try:
        assert m.order("BUY", "0.2", "r1").data.status == "FILLED"
        assert m.rc.request(KillSwitchCmd("reduce", "reducing test")).ok
        wait_until(lambda: m.node.pretrade.view.state == "REDUCING", 5, what="REDUCING reaching execution")
        m.feed()
        assert m.order("BUY", "0.01", "r2").code == Code.REDUCE_ONLY            # growing: refused
        r = m.order("SELL", "0.2", "r3", reduce_only=True)                        # the whole position
        assert r.ok and r.data.status == "FILLED", r
        assert m.qty() == 0
        assert m.order("SELL", "0.01", "r4").code == Code.REDUCE_ONLY            # and not beyond flat
    finally:
        m.close()
