"""The risk node over real sockets on tcp, ipc and inproc: publishing its state (snapshots on
change and periodically, bands), serving ctl and queries but not orders, the kill switch surviving
a node restart, automatic triggers from bus events.

Other nodes are stood in for by plain PUB sockets bound at their endpoints (publishing the events
the real nodes publish, through the real codec); nothing waits with sleeps: publishers repeat until
risk's own state (asked over its request socket) or its published events show the effect.
"""
import os
import time
from decimal import Decimal as D

import pytest
import zmq

import proto
from proto import (Code, FeedStatus, Heartbeat, KillSwitchCmd, OrderIntent, ProcessEvent, Query, RiskSnapshot,
                   Tick, topics)
from nodes.client import RequestClient
from nodes.risk import RiskNode
from nodes.risk.config import RiskConfig

P = "BTC-USD"


class Peer:
    """A stand-in publisher bound at another node's PUB endpoint."""

    def __init__(self, ctx, mesh, node):
        if mesh.transport == "ipc":
            os.makedirs(mesh.ipc_path(), exist_ok=True)
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(mesh.endpoint(node, "pub", bind=True))
        self.enc = proto.Encoder(node)

    def send(self, topic, msg):
        now = time.time_ns()
        self.sock.send(self.enc.encode(topic, msg, now, now))

    def close(self):
        self.sock.close(linger=0)


def conf(**kw):
    base = dict(min_history=5, publish_interval_s=0.2, band_publish_min_interval_s=0.0,
                execution_heartbeat_timeout_s=0.6, stale_halts=False, max_order_notional=D("30000"))
    base.update(kw)
    return RiskConfig(**base)


@pytest.fixture
def node_factory(ctx):
    made = []

    def make(mesh, **kw):
        n = RiskNode(mesh, conf(**kw), context=ctx).start()
        made.append(n)
        return n
    yield make
    for n in made:
        n.stop()


@pytest.fixture
def client(ctx):
    made = []

    def make(mesh):
        c = RequestClient.for_node(mesh, "risk", context=ctx, source="test", timeout_ms=2000)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def pump(send, pred, timeout=5.0):
    """Repeat ``send()`` until ``pred()`` (which asks risk over its socket) holds."""
    deadline = time.monotonic() + timeout
    while True:
        send()
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError("risk never saw the events")


def feed_market(md, risk):
    """Ticks, a healthy status and a book until risk has enough history for its band."""
    i = [0]

    def send():
        for _ in range(3):
            px = D("65000.00") if i[0] % 2 == 0 else D("65010.00")
            md.send(topics.tick(P), Tick(P, px, px - 1, D(1), px + 1, D(1), D(100)))
            i[0] += 1
        md.send(topics.md_status(P), FeedStatus(P, True, "OK", "", 0.1))

    def ready():
        f = risk.call(Query("risk"))["feeds"][P]
        return f["returns"] >= 6 and f["healthy"]
    pump(send, ready)


def test_risk_publishes_its_state_and_is_not_on_the_order_path(mesh, ctx, node_factory, client, collector):
    node_factory(mesh)
    risk = client(mesh)
    sub = collector(mesh, ["risk"], ["risk."])
    md = Peer(ctx, mesh, "marketdata")
    try:
        first = sub.wait_for(lambda e: e.topic == topics.RISK_SNAPSHOT).msg   # periodic, before any market data
        assert first.state == "ACTIVE" and not first.killswitch and first.max_age_ms == 2000
        assert first.products[P]["feed"] == Code.FEED_STALE and first.products[P]["band"] == ""
        assert first.products[P]["max_order_notional"] == "30000"
        # an order is not risk's to decide any more: it says so (execution checks in-process)
        r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("0.01"), limit_price=D("65006.00")))
        assert not r.ok and r.code == Code.UNKNOWN_REQUEST
        feed_market(md, risk)
        # the feed verdict changed: a snapshot at once, healthy, and the band ready
        snap = sub.wait_for(lambda e: e.topic == topics.RISK_SNAPSHOT and e.msg.products[P]["feed"] == ""
                            and e.msg.products[P]["band"] != "").msg
        assert snap.epoch_ns == first.epoch_ns and snap.version > first.version
        band = sub.wait_for(lambda e: e.topic == topics.band(P) and e.msg.width is not None).msg
        assert band.band_low < band.mid < band.band_high and band.stddev > 0 and band.method == "stddev"
        assert D(snap.products[P]["band"]) > 0
        q = risk.call(Query("snapshot"))
        assert type(q) is RiskSnapshot and q.epoch_ns == first.epoch_ns and q.version > snap.version
        # the kill switch: a snapshot the moment it engages
        assert risk.request(KillSwitchCmd("engage", "publish test")).ok
        ks = sub.wait_for(lambda e: e.topic == topics.RISK_SNAPSHOT and e.msg.killswitch).msg
        assert ks.state == "HALTED" and ks.ks_reason == "publish test" and ks.ks_source == "manual"
        bands = risk.call(Query("bands", P))
        assert bands[P].width == band.width or bands[P].width > 0
    finally:
        md.close()


def test_kill_switch_survives_a_node_restart(mesh, ctx, node_factory, client, collector):
    n1 = node_factory(mesh)
    risk = client(mesh)
    sub = collector(mesh, ["risk"], [topics.RISK_KILLSWITCH, topics.RISK_SNAPSHOT])
    sub.wait_for(lambda e: e.topic == topics.RISK_SNAPSHOT)
    r = risk.request(KillSwitchCmd("engage", "integration test"))
    assert r.ok and r.data.engaged and r.data.source == "manual"
    ev = sub.wait_for(lambda e: e.topic == topics.RISK_KILLSWITCH)
    assert ev.msg.engaged and ev.msg.reason == "integration test"
    n1.stop()
    assert (mesh.state_path("risk", "state.json")).exists()
    risk.close()          # a fresh socket (inproc does not reconnect an old pipe to a new bind)
    node_factory(mesh)                                     # a new node on the same state dir
    r = risk.request(KillSwitchCmd("status"))
    assert r.ok and r.data.engaged and r.data.reason == "integration test" and "HALTED" in r.reason
    snap = risk.call(Query("snapshot"))
    assert snap.killswitch and snap.state == "HALTED" and snap.ks_reason == "integration test"
    assert risk.call(Query("risk"))["state"] == "HALTED"
    r = risk.request(KillSwitchCmd("release", "done"))
    assert r.ok and not r.data.engaged
    assert risk.call(Query("risk"))["state"] == "ACTIVE"


def test_execution_heartbeat_loss_engages(mesh, ctx, node_factory, client, collector):
    node_factory(mesh, execution_heartbeat_timeout_s=0.5)
    risk = client(mesh)
    sub = collector(mesh, ["risk"], [topics.RISK_KILLSWITCH, topics.RISK_SNAPSHOT])
    sub.wait_for(lambda e: e.topic == topics.RISK_SNAPSHOT)
    ex = Peer(ctx, mesh, "execution")
    try:
        pump(lambda: ex.send(topics.heartbeat("execution"),
                             Heartbeat("execution", 123, "RUNNING", 1, 1.0, {}, "host")),
             lambda: risk.call(Query("risk"))["execution"]["last_heartbeat_age_s"] is not None)
        # execution goes silent
        ev = sub.wait_for(lambda e: e.topic == topics.RISK_KILLSWITCH and e.msg.engaged, timeout=5)
        assert ev.msg.source == "auto:execution_down" and "heartbeat" in ev.msg.reason
        r = risk.request(KillSwitchCmd("release", "too early"))
        assert not r.ok and "execution is down" in r.reason
    finally:
        ex.close()


def test_supervisord_fatal_for_execution_engages(mesh, ctx, node_factory, client, collector):
    node_factory(mesh)
    risk = client(mesh)
    sup = Peer(ctx, mesh, "supervisor")
    try:
        pump(lambda: sup.send(topics.NODE_PROCESS, ProcessEvent("execution", "tickmesh", "FATAL", 0, False,
                                                                "too many restarts")),
             lambda: risk.call(KillSwitchCmd("status")).engaged)
        r = risk.request(KillSwitchCmd("status"))
        assert r.data.source == "auto:execution_down" and "FATAL" in r.data.reason
    finally:
        sup.close()
