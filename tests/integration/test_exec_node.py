"""The execution node on real sockets with the paper venue: the in-process pre-trade checks against
the risk state it receives (approve, deny, fail closed), events, idempotency, limit order
lifecycle, cancels, the kill switch, queries, latency."""
import time

import pytest

from nodes.client import RequestClient
from nodes.execution import ExecutionConfig, ExecutionNode
from proto import CancelAll, CancelOrder, Code, OrderIntent, Query
from tests.conftest import make_mesh
from tests.integration.test_exec_support import D, Publisher, RiskSource, book, killswitch, topics, trade
from tests.conftest import wait_until

BTC = "BTC-USD"


class Rig:
    def __init__(self, mesh, ctx, collector, **conf):
        self.mesh, self.ctx = mesh, ctx
        self.risk = RiskSource(ctx, mesh)
        self.md = Publisher(ctx, mesh, "marketdata")
        conf.setdefault("pnl_interval_s", 0.1)
        self.node = ExecutionNode(mesh, ExecutionConfig(**conf), context=ctx).start()
        self.col = collector(mesh, ["execution"], ["order.", "fill.", "position.", "pnl", "risk."])
        self.col.wait_for(lambda e: e.topic == "pnl", 5)           # our subscription is live
        self.md.until(topics.book(BTC), book(), lambda: BTC in self.node.venue.books, what="execution")
        wait_until(lambda: self.node.pretrade.view.snap is not None, what="execution's first risk snapshot")
        self.client = RequestClient.for_node(mesh, "execution", timeout_ms=3000, source="test", context=ctx)

    def submit(self, **kw):
        kw.setdefault("product", BTC)
        kw.setdefault("side", "BUY")
        kw.setdefault("order_type", "MARKET")
        return self.client.request(OrderIntent(**kw))

    def events_for(self, coid, until_topic, timeout=5):
        """Events of one order up to (and including) the first on ``until_topic``."""
        out = [e for e in self.col.events if getattr(e.msg, "client_order_id", None) == coid]
        if not any(e.topic == until_topic for e in out):
            self.col.wait_for(lambda e: getattr(e.msg, "client_order_id", None) == coid and e.topic == until_topic,
                              timeout)
            out = [e for e in self.col.events if getattr(e.msg, "client_order_id", None) == coid]
        return out

    def send_until(self, pub, topic, msg, pred, timeout=5.0):
        """Slow joiner on our publishers: send until the node's reaction (an event) is seen."""
        deadline = time.monotonic() + timeout
        while not any(pred(e) for e in self.col.events):
            pub.send(topic, msg)
            try:
                return self.col.wait_for(pred, 0.05)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def quiet_period(self):
        """Let two periodic PnL publications pass: anything the node published before is in (what
        is queued already is read first, so the two are new ones: one stream, in order)."""
        while self.col.sock.poll(0):
            self.col.events.append(self.col._proto.decode(self.col.sock.recv()))
        n = sum(1 for e in self.col.events if e.topic == "pnl")
        for _ in range(2):
            self.col.wait_for(lambda e: e.topic == "pnl", 3)
        return n

    def close(self):
        self.client.close()
        self.node.stop()
        self.risk.close()
        self.md.close()


@pytest.fixture
def rig_factory(ctx, collector, short_tmp):
    made = []

    def make(mesh=None, **conf):
        r = Rig(mesh or make_mesh("inproc", short_tmp), ctx, collector, **conf)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def test_market_order_through_risk_fills_and_publishes_everything(rig_factory, mesh):
    rig = rig_factory(mesh)
    r = rig.submit(size=D("0.7"), client_order_id="m-1", strategy="t", origin_ns=123456789)
    assert r.ok and r.code == Code.OK and r.data.status == "FILLED", r
    assert r.data.filled_size == D("0.7") and r.data.origin_ns == 123456789 and r.data.venue == "paper"
    dec = rig.events_for("m-1", topics.RISK_DECISION)[-1].msg           # the check, published
    assert dec.approved and dec.code == Code.OK and dec.compute_ns > 0
    evs = [e for e in rig.events_for("m-1", topics.ORDER_FILLED) if e.topic != topics.RISK_DECISION]
    assert [e.topic for e in evs] == ["order.new", "order.accepted", "fill.BTC-USD", "order.partially_filled",
                                      "fill.BTC-USD", "order.filled"]
    assert all(e.msg.origin_ns == 123456789 for e in evs if e.msg.TAG == "Order")
    fills = [e.msg for e in evs if e.msg.TAG == "Fill"]
    # default paper: 1 bp slippage rounded against us, 60 bp taker fee
    assert [(f.price, f.size, f.fee, f.liquidity) for f in fills] == [
        (D("65016.51"), D("0.5"), D("195.04953000"), "TAKER"), (D("65026.51"), D("0.2"), D("78.03181200"), "TAKER")]
    pos = rig.col.wait_for(lambda e: e.topic == topics.position(BTC) and e.msg.qty == D("0.7"))
    assert pos.msg.fees == D("273.08134200") and pos.msg.realized_pnl == D("-273.08134200")
    assert pos.msg.mark == D("65000")                                   # mid of the book
    pnl = rig.col.wait_for(lambda e: e.topic == "pnl" and e.msg.fees == D("273.08134200"))
    from decimal import localcontext
    from nodes.execution.positions import CTX
    with localcontext(CTX):      # the node's explicit 34-digit context, not the global 28-digit one
        assert pnl.msg.equity == D("100000") + pnl.msg.realized + pnl.msg.unrealized


@pytest.mark.parametrize("transport_", ["tcp", "ipc"])     # inproc: a SUB never reconnects to a re-bound PUB
def test_fail_closed_when_risk_state_is_stale_or_risk_is_gone(rig_factory, short_tmp, transport_):
    rig = rig_factory(make_mesh(transport_, short_tmp))
    assert rig.submit(size=D("0.1"), client_order_id="fc-ok").data.status == "FILLED"
    rig.risk.silent = True                                              # no more snapshots
    wait_until(lambda: rig.node.pretrade.view.unavailable(rig.node.clock()), what="risk state going stale")
    t0 = time.monotonic()
    r = rig.submit(size=D("0.1"), client_order_id="fc-stale")
    assert time.monotonic() - t0 < 0.5                                  # nothing is waited for
    assert not r.ok and r.code == Code.RISK_UNAVAILABLE and r.data.status == "REJECTED", r
    assert "old" in r.reason and "state_max_age_ms 400" in r.reason
    rig.risk.close()                                                    # no risk node at all
    r = rig.submit(size=D("0.1"), client_order_id="fc-gone")
    assert r.code == Code.RISK_UNAVAILABLE
    rig.quiet_period()
    for coid in ("fc-stale", "fc-gone"):
        topics_seen = [e.topic for e in rig.col.events if getattr(e.msg, "client_order_id", None) == coid]
        assert topics_seen == ["order.new", "risk.decision", "order.rejected"], (coid, topics_seen)
    assert rig.node.venue.submitted == 1                               # only fc-ok went to the venue
    rig.risk = RiskSource(rig.ctx, rig.mesh)                            # risk back: orders flow again
    wait_until(lambda: not rig.node.pretrade.view.unavailable(rig.node.clock()), what="a fresh risk state")
    assert rig.submit(size=D("0.1"), client_order_id="fc-back").data.status == "FILLED"


def test_risk_heartbeat_saying_stopped_refuses_at_once(rig_factory):
    from proto import Heartbeat
    rig = rig_factory()
    rig.risk.publish(topics.heartbeat("risk"), Heartbeat("risk", 1, "STOPPED", 0, 1.0, {}, "h"))
    wait_until(lambda: rig.node.pretrade.view.down, what="execution seeing risk's last heartbeat")
    rig.risk.silent = True
    r = rig.submit(size=D("0.1"), client_order_id="hb-1")
    assert r.code == Code.RISK_UNAVAILABLE and "STOPPED" in r.reason


def test_risk_denial_carries_the_checks_code(rig_factory):
    rig = rig_factory()
    rig.risk.limits["max_order_notional"] = "1000"
    wait_until(lambda: rig.node.pretrade.view.limits(BTC).max_order_notional == 1000, what="new limits")
    r = rig.submit(size=D("0.1"), client_order_id="deny-1")
    assert not r.ok and r.code == Code.MAX_NOTIONAL and r.data.status == "REJECTED" and "above the maximum 1000" in r.data.reason
    assert rig.node.venue.submitted == 0
    ev = rig.events_for("deny-1", topics.ORDER_REJECTED)
    assert ev[-1].msg.code == Code.MAX_NOTIONAL
    assert [e.msg.code for e in ev if e.topic == topics.RISK_DECISION] == [Code.MAX_NOTIONAL]


def test_kill_switch_in_the_risk_state_refuses_without_a_round_trip(rig_factory):
    rig = rig_factory()
    rig.risk.killswitch, rig.risk.ks_reason = True, "operator"
    wait_until(lambda: rig.node.pretrade.view.killswitch, what="the engaged switch")
    t0 = time.perf_counter()
    r = rig.submit(size=D("0.1"), client_order_id="ks-1")
    assert r.code == Code.KILL_SWITCH and "operator" in r.reason
    assert rig.node.venue.submitted == 0 and time.perf_counter() - t0 < 0.5


def test_invalid_intent_is_rejected_before_the_checks(rig_factory):
    rig = rig_factory()
    r = rig.submit(order_type="LIMIT", size=D("1"), client_order_id="bad-1")
    assert r.code == Code.INVALID_ORDER and "limit_price" in r.reason
    r = rig.submit(product="DOGE-USD", size=D("1"), client_order_id="bad-2")
    assert r.code == Code.INVALID_ORDER and "DOGE-USD" in r.reason
    r = rig.submit(side="SELL", size=D("1"), reduce_only=True, client_order_id="ro-1")
    assert r.code == Code.REDUCE_ONLY and "no BTC-USD position" in r.reason
    assert rig.node.pretrade.counters["decisions"] == 0
    assert rig.submit(size=D("0.3"), client_order_id="ro-2").data.status == "FILLED"
    assert rig.submit(size=D("0.1"), reduce_only=True, client_order_id="ro-3").code == Code.REDUCE_ONLY
    assert "exceeds" in rig.submit(side="SELL", size=D("0.4"), reduce_only=True, client_order_id="ro-4").reason
    r = rig.submit(side="SELL", size=D("0.3"), reduce_only=True, tif="IOC", client_order_id="ro-5")
    assert r.ok and r.data.status == "FILLED" and rig.client.call(Query("positions"))[0].qty == 0


def test_repeated_client_order_id_returns_the_existing_order_and_sends_once(rig_factory):
    rig = rig_factory()
    first = rig.submit(size=D("0.1"), client_order_id="dup-1")
    again = rig.submit(size=D("0.1"), client_order_id="dup-1")
    assert again.ok and again.code == Code.DUPLICATE and again.data == first.data
    other = rig.submit(size=D("0.2"), client_order_id="dup-1")
    assert not other.ok and other.code == Code.DUPLICATE and "different order" in other.reason
    a = rig.submit(side="SELL", size=D("0.3"), origin_ns=5)            # no id: derived from the intent
    b = rig.submit(side="SELL", size=D("0.30"), origin_ns=5)
    assert b.code == Code.DUPLICATE and a.data.client_order_id == b.data.client_order_id
    assert rig.node.venue.submitted == 2 and rig.node.pretrade.counters["decisions"] == 2
    rig.risk.limits["max_order_notional"] = "1000"
    wait_until(lambda: rig.node.pretrade.view.limits(BTC).max_order_notional == 1000, what="new limits")
    rej = rig.submit(size=D("0.5"), client_order_id="dup-rej")
    assert rej.code == Code.MAX_NOTIONAL
    assert rig.submit(size=D("0.5"), client_order_id="dup-rej").data == rej.data
    assert rig.node.pretrade.counters["decisions"] == 3
    pos = rig.client.call(Query("positions"))
    assert pos[0].qty == D("-0.2")


def test_limit_lifecycle_cancel_cancel_all_and_kill_switch(rig_factory):
    rig = rig_factory()
    r = rig.submit(order_type="LIMIT", size=D("1"), limit_price=D("64000"), client_order_id="L1")
    assert r.ok and r.data.status == "ACCEPTED" and r.data.venue_order_id.startswith("paper-")
    rig.md.send(topics.trade(BTC), trade(price="63999", size="0.25"))
    ev = rig.events_for("L1", topics.ORDER_PARTIALLY_FILLED)
    f = [e.msg for e in ev if e.msg.TAG == "Fill"][0]
    assert (f.price, f.size, f.fee, f.liquidity) == (D("64000"), D("0.25"), D("64.00000000"), "MAKER")
    vid = r.data.venue_order_id
    assert rig.client.call(Query("order", vid)).filled_size == D("0.25")       # by venue id too
    c = rig.client.request(CancelOrder("L1"))
    assert c.ok and c.data.status == "CANCELLED" and c.data.filled_size == D("0.25")
    c = rig.client.request(CancelOrder("L1"))
    assert not c.ok and c.code == Code.NOT_CANCELLABLE
    assert rig.client.request(CancelOrder("nope")).code == Code.UNKNOWN_ORDER
    for i in range(2):
        rig.submit(order_type="LIMIT", side="SELL", size=D("1"), limit_price=D(66000 + i), client_order_id=f"S{i}")
    assert {o.client_order_id for o in rig.client.call(Query("orders"))} == {"S0", "S1"}
    ca = rig.client.request(CancelAll(BTC))
    assert ca.ok and sorted(ca.data) == ["S0", "S1"] and rig.client.call(Query("orders")) == []
    rig.submit(order_type="LIMIT", size=D("1"), limit_price=D("60000"), client_order_id="K1")
    rig.risk.publish(topics.RISK_KILLSWITCH, killswitch(True, "test panic"))
    rig.col.wait_for(lambda e: e.topic == topics.ORDER_CANCELLED and e.msg.client_order_id == "K1")
    k1 = rig.client.call(Query("order", "K1"))
    assert k1.status == "CANCELLED" and k1.code == Code.KILL_SWITCH and "test panic" in k1.reason
    assert len(rig.client.call(Query("orders", "all"))) == 4


def test_queries_and_status(rig_factory):
    rig = rig_factory()
    rig.submit(size=D("0.5"), client_order_id="q1")
    rig.submit(side="SELL", size=D("0.2"), client_order_id="q2")
    assert rig.client.call(Query("order", "q2")).status == "FILLED"
    assert rig.client.request(Query("order", "zzz")).code == Code.UNKNOWN_ORDER
    pos = rig.client.call(Query("positions", BTC))[0]
    assert pos.qty == D("0.3") and pos.avg_cost == D("65016.51")
    pnl = rig.client.call(Query("pnl"))
    assert pnl.realized == pos.realized_pnl and pnl.day
    st = rig.client.call(Query("status"))
    assert st["counters"]["exec.fills"] == 2 and st["counters"]["exec.venue_submits"] == 2


def test_simulated_latency_uses_timers(rig_factory):
    rig = rig_factory(latency_ms=40.0)
    t0 = time.monotonic()
    r = rig.submit(size=D("0.1"), client_order_id="lat-1")
    assert r.ok and r.data.status == "NEW" and time.monotonic() - t0 < 0.04
    rig.events_for("lat-1", topics.ORDER_FILLED)
    assert time.monotonic() - t0 >= 0.04
    r = rig.submit(order_type="LIMIT", size=D("1"), limit_price=D("60000"), client_order_id="lat-2")
    c = rig.client.request(CancelOrder("lat-2"))                       # cancel before the venue saw it
    assert c.ok and c.reason == "cancel requested" and c.data.status == "NEW"
    ev = rig.events_for("lat-2", topics.ORDER_CANCELLED)
    assert [e.topic for e in ev] == ["order.new", "risk.decision", "order.accepted", "order.cancelled"]


def test_finished_orders_leave_memory_and_stay_idempotent(rig_factory):
    rig = rig_factory(orders_in_memory=3)
    first = rig.submit(size=D("0.01"), client_order_id="mem-0")
    assert first.data.status == "FILLED"
    for i in range(1, 10):
        assert rig.submit(side="BUY" if i % 2 else "SELL", size=D("0.01"), client_order_id=f"mem-{i}").ok
    n = rig.node
    assert len(n.orders) == 3 and set(n.orders) == {"mem-7", "mem-8", "mem-9"}     # held: the last 3
    assert len(n.known) == 10 and len(n.fill_ids) == 3        # fill ids leave memory with their orders
    again = rig.submit(size=D("0.01"), client_order_id="mem-0")    # left memory: answered from the journal
    assert again.ok and again.code == Code.DUPLICATE and again.data == first.data, again
    assert n.c["journal_lookups"] == 1 and n.venue.submitted == 10
    assert rig.submit(size=D("0.02"), client_order_id="mem-0").reason.endswith("used by a different order")
    assert rig.client.request(Query("order", "mem-0")).code == Code.UNKNOWN_ORDER     # not held any more
    assert rig.client.call(Query("order", "mem-9")).status == "FILLED"


def test_readiness_is_per_product(rig_factory):
    """Market data for BTC-USD only: execution is ready for BTC-USD (a strategy may trade it), not
    for ETH-USD, and says so in its query and its heartbeat."""
    rig = rig_factory()
    pt = rig.client.call(Query("pretrade"))
    assert pt["products"] == {"BTC-USD": True, "ETH-USD": False} and not pt["ready"]
    assert "no market data for ETH-USD" in pt["why_not"]
    assert rig.client.call(Query("pretrade", BTC))["ready"]
    c = rig.node.extra_counters()
    assert (c["exec.risk_ok"], c["exec.ready.BTC-USD"], c["exec.ready.ETH-USD"], c["exec.ready"]) == (1, 1, 0, 0)
