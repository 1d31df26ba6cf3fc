"""Execution against the real risk node (no stand-in): approvals, a denial with risk's code, the kill
switch engaged through risk cancelling working orders, and risk learning execution's position."""
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
        wait_until(feeding(lambda: (rc.call(Query("risk"))["feeds"].get(BTC) or {}).get("healthy") is True
                           and BTC in node.venue.books), 10, interval=0.02,
                   what="risk and execution seeing a healthy BTC-USD feed")
        r = ec.request(OrderIntent(BTC, "BUY", "MARKET", size=D("0.01"), client_order_id="rr-1"))
        assert r.ok and r.data.status == "FILLED", r
        feed()
        r = ec.request(OrderIntent(BTC, "BUY", "MARKET", size=D("0.5"), client_order_id="rr-2"))   # 32.5k > 25k
        assert not r.ok and r.data.status == "REJECTED" and r.code == Code.MAX_NOTIONAL, r
        assert node.venue.submitted == 1
        feed()
        r = ec.request(OrderIntent(BTC, "BUY", "LIMIT", size=D("0.01"), limit_price=D("64500"), client_order_id="rr-3"))
        assert r.ok and r.data.status == "ACCEPTED", r
        # risk learns the position from execution's events
        wait_until(lambda: rc.call(Query("risk"))["exposure"].positions.get(BTC) == D("0.01"), 5,
                   what="risk seeing execution's position")
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
