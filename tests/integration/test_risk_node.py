"""The risk node over real sockets on tcp, ipc and inproc: answering checks, publishing its events,
the kill switch surviving a node restart, automatic triggers from bus events, flatten on halt.

Other nodes are stood in for by plain PUB sockets bound at their endpoints (publishing the events
the real nodes publish, through the real codec); nothing waits with sleeps: publishers repeat until
risk's own state (asked over its request socket) or its published events show the effect.
"""
import os
import threading
import time
from decimal import Decimal as D

import pytest
import zmq

import proto
from proto import (Book, Code, FeedStatus, Heartbeat, KillSwitchCmd, OrderIntent, Position, ProcessEvent,
                   Query, Reply, RiskDecision, Tick, topics)
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
        md.send(topics.book(P), Book(P, [[D("65004.00"), D("0.5")]], [[D("65006.00"), D("0.5")]]))

    def ready():
        f = risk.call(Query("risk"))["feeds"][P]
        return f["returns"] >= 6 and f["healthy"]
    pump(send, ready)


def test_risk_answers_checks_and_publishes(mesh, ctx, node_factory, client, collector):
    node_factory(mesh)
    risk = client(mesh)
    sub = collector(mesh, ["risk"], ["risk."])
    md = Peer(ctx, mesh, "marketdata")
    try:
        # no market data yet: refused, fail closed
        r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("0.01"), limit_price=D("65006.00"),
                                     client_order_id="early"))
        assert not r.ok and r.code == Code.NO_MARKET_DATA and type(r.data) is RiskDecision
        feed_market(md, risk)
        sub.wait_for(lambda e: e.topic == topics.RISK_EXPOSURE)        # our subscription is live
        r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("0.01"), limit_price=D("65006.00"),
                                     client_order_id="ok-1"))
        assert r.ok and r.code == Code.OK and r.data.approved and r.data.client_order_id == "ok-1"
        assert 0 < r.data.compute_ns < 1_000_000
        ev = sub.wait_for(lambda e: e.topic == topics.RISK_DECISION and e.msg.client_order_id == "ok-1")
        assert ev.msg.approved and ev.source == "risk"
        r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("1"), limit_price=D("65006.00"),
                                     client_order_id="big"))
        assert not r.ok and r.code == Code.MAX_NOTIONAL and "notional" in r.reason
        sub.wait_for(lambda e: e.topic == topics.RISK_DECISION and e.msg.client_order_id == "big"
                     and e.msg.code == Code.MAX_NOTIONAL)
        r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("0.01"), limit_price=D("66000.00")))
        assert r.code == Code.VOL_BAND
        band = sub.wait_for(lambda e: e.topic == topics.band(P) and e.msg.band_high > 0).msg
        assert band.band_low < band.mid < band.band_high and band.stddev > 0 and band.method == "stddev"
        exp = sub.wait_for(lambda e: e.topic == topics.RISK_EXPOSURE).msg
        assert exp.state == "ACTIVE" and exp.killswitch is False
        q = risk.call(Query("risk"))
        assert q["state"] == "ACTIVE" and "ok-1" in q["pending"] and q["bands"][P].band_high == band.band_high
    finally:
        md.close()


def test_kill_switch_survives_a_node_restart(mesh, ctx, node_factory, client, collector):
    n1 = node_factory(mesh)
    risk = client(mesh)
    sub = collector(mesh, ["risk"], [topics.RISK_KILLSWITCH, topics.RISK_EXPOSURE])
    sub.wait_for(lambda e: e.topic == topics.RISK_EXPOSURE)
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
    r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("0.01"), limit_price=D("65006.00")))
    assert not r.ok and r.code == Code.KILL_SWITCH
    assert risk.call(Query("risk"))["state"] == "HALTED"
    r = risk.request(KillSwitchCmd("release", "done"))
    assert r.ok and not r.data.engaged
    assert risk.call(Query("risk"))["state"] == "ACTIVE"


def test_execution_heartbeat_loss_engages(mesh, ctx, node_factory, client, collector):
    node_factory(mesh, execution_heartbeat_timeout_s=0.5)
    risk = client(mesh)
    sub = collector(mesh, ["risk"], [topics.RISK_KILLSWITCH, topics.RISK_EXPOSURE])
    sub.wait_for(lambda e: e.topic == topics.RISK_EXPOSURE)
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


class StandInExecution(threading.Thread):
    """Plays execution's request side: receives risk's flatten exits on execution's ROUTER, checks
    each with risk (as execution does before every order) and replies with risk's answer."""

    def __init__(self, ctx, mesh):
        super().__init__(daemon=True)
        self.ctx, self.mesh = ctx, mesh
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.got = []

    def run(self):
        if self.mesh.transport == "ipc":
            os.makedirs(self.mesh.ipc_path(), exist_ok=True)
        rep = self.ctx.socket(zmq.ROUTER)
        rep.setsockopt(zmq.LINGER, 0)
        rep.bind(self.mesh.endpoint("execution", "rep", bind=True))
        risk = RequestClient.for_node(self.mesh, "risk", context=self.ctx, source="execution", timeout_ms=2000)
        enc = proto.Encoder("execution")
        self.ready.set()
        try:
            while not self.stop.is_set():
                if not rep.poll(50):
                    continue
                head = rep.recv_multipart()
                req = proto.decode(head[-1])
                answer = risk.request(req.msg)
                self.got.append((req.source, req.msg, answer))
                rep.send_multipart(head[:-1] + [enc.encode("rep", Reply(answer.ok, answer.code, answer.reason),
                                                         msg_id=req.msg_id)])
        finally:
            risk.close()
            rep.close(linger=0)


def test_flatten_on_halt_sends_reduce_only_exits(mesh, ctx, node_factory, client):
    stand_in = StandInExecution(ctx, mesh)
    stand_in.start()
    assert stand_in.ready.wait(5)
    try:
        node_factory(mesh, flatten_on_halt=True)
        risk = client(mesh)
        md, ex = Peer(ctx, mesh, "marketdata"), Peer(ctx, mesh, "execution")
        try:
            feed_market(md, risk)
            pos = Position(P, D("0.3"), D("65000"), D(0), D(0), D("19501.5"), D("65005"), D(0))
            pump(lambda: ex.send(topics.position(P), pos),
                 lambda: risk.call(Query("risk"))["exposure"].positions[P] == D("0.3"))
            md.send(topics.md_status(P), FeedStatus(P, True, "OK", "", 0.1))
            assert risk.request(KillSwitchCmd("engage", "flatten test")).ok
            deadline = time.monotonic() + 5
            while not stand_in.got and time.monotonic() < deadline:
                md.send(topics.md_status(P), FeedStatus(P, True, "OK", "", 0.1))   # keep the feed fresh
                risk.call(Query("status"))                                        # a round trip, not a sleep
            assert stand_in.got, "risk sent no exit"
            source, intent, answer = stand_in.got[0]
            assert source == "risk" and intent.product == P and intent.side == "SELL"
            assert intent.size == D("0.3") and intent.reduce_only and intent.order_type == "MARKET"
            assert answer.ok and answer.code == Code.OK, answer
            # anything else is still refused while halted
            r = risk.request(OrderIntent(P, "BUY", "LIMIT", size=D("0.01"), limit_price=D("65006.00")))
            assert r.code == Code.KILL_SWITCH
        finally:
            md.close()
            ex.close()
    finally:
        stand_in.stop.set()
        stand_in.join(2)
