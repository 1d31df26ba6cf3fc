"""Helpers for the execution tests (no tests here): a risk-state source on the risk endpoints, a
market-data publisher on the marketdata endpoint.

``RiskSource`` is a local stand-in for the risk node that speaks the real contract over real
sockets: it publishes ``RiskSnapshot`` on risk's PUB endpoint every ``interval`` (with the limits,
trading state and kill switch the test sets), answers ``Query("snapshot")`` on risk's ROUTER, and
publishes whatever else the test hands it (a ``KillSwitch`` event, a heartbeat). ``silent`` stops
the snapshots (the state goes stale); ``close()`` is a risk node that is gone. The real risk node is
used where its own behaviour is under test (test_exec_with_risk.py, the e2e tier).
"""
import os
import queue
import threading
import time
from decimal import Decimal

import zmq

import proto
from proto import Book, Code, KillSwitch, Query, Reply, RiskSnapshot, Tick, Trade, topics

D = Decimal

WIDE = {"max_position": "1e6", "max_exposure": "1e9", "max_order_notional": "1e9",
        "max_price_band_pct": "50", "max_slippage_bps": "10000"}


def _bind(sock, mesh, node, kind):
    if mesh.transport == "ipc":
        os.makedirs(mesh.ipc_path(), mode=0o700, exist_ok=True)
    sock.bind(mesh.endpoint(node, kind, bind=True))


class RiskSource:
    def __init__(self, ctx, mesh, interval=0.05, max_age_ms=400, **limits):
        self.ctx, self.mesh = ctx, mesh
        self.interval, self.max_age_ms = interval, max_age_ms
        self.limits = dict(WIDE, **{k: str(v) for k, v in limits.items()})
        self.state, self.state_reason = "ACTIVE", ""
        self.killswitch, self.ks_reason = False, ""
        self.flatten_on_halt = False
        self.feeds = {}                  # product -> (code, reason); default healthy
        self.silent = False
        self.published = 0
        self.epoch = time.time_ns()
        self._q = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "risk source did not bind"

    def snapshot(self):
        self.published += 1
        products = {p: dict(self.limits, band="", band_method="stddev", band_why="test",
                            feed=self.feeds.get(p, ("", ""))[0], feed_reason=self.feeds.get(p, ("", ""))[1])
                    for p in self.mesh.products}
        return RiskSnapshot(self.published, self.epoch, self.max_age_ms, self.state, self.state_reason,
                            self.killswitch, "manual" if self.killswitch else "", self.ks_reason, 0,
                            self.flatten_on_halt, D("1e12"), 1000, products)

    def publish(self, topic, msg):
        """Publish one event from the source's thread (its socket's thread)."""
        self._q.put((topic, msg))

    def _run(self):
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        _bind(pub, self.mesh, "risk", "pub")
        rep = self.ctx.socket(zmq.ROUTER)
        rep.setsockopt(zmq.LINGER, 0)
        _bind(rep, self.mesh, "risk", "rep")
        enc = proto.Encoder("risk")
        self._ready.set()
        nxt = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= nxt and not self.silent:
                    pub.send(enc.encode(topics.RISK_SNAPSHOT, self.snapshot()))
                    nxt = now + self.interval
                while True:
                    try:
                        topic, msg = self._q.get_nowait()
                    except queue.Empty:
                        break
                    pub.send(enc.encode(topic, msg))
                if rep.poll(10):
                    frames = rep.recv_multipart()
                    env = proto.decode(frames[-1])
                    if type(env.msg) is Query and env.msg.what == "snapshot" and not self.silent:
                        r = Reply(True, Code.OK, "", self.snapshot())
                    else:
                        r = Reply(False, Code.UNKNOWN_REQUEST, "test risk source")
                    rep.send_multipart(frames[:-1] + [enc.encode("rep", r, msg_id=env.msg_id)])
        finally:
            pub.close(linger=0)
            rep.close(linger=0)

    def close(self):
        self._stop.set()
        self._thread.join(2)


class Publisher:
    """A PUB socket bound at ``node``'s pub endpoint (made and used in the calling thread)."""

    def __init__(self, ctx, mesh, node):
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        _bind(self.sock, mesh, node, "pub")
        self.enc = proto.Encoder(node)

    def send(self, topic, msg, ts=0):
        self.sock.send(self.enc.encode(topic, msg, ts, ts))

    def until(self, topic, msg, pred, timeout=5.0, what="subscriber"):
        """Slow joiner: publish ``msg`` every 10 ms until ``pred()`` (the subscriber saw it)."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not receive {topic} within {timeout} s")
            self.send(topic, msg)
            time.sleep(0.01)

    def close(self):
        self.sock.close(linger=0)


def start_node(mesh, conf, ctx, **kw):
    """Start an ExecutionNode; on a restart in the same process the previous node's inproc PUB can
    still be lingering in the zmq reaper for a moment (EADDRINUSE): retry until a deadline."""
    from nodes.execution import ExecutionNode
    from nodes.runtime import NodeStartError
    risk_state = kw.pop("risk_state", True)
    deadline = time.monotonic() + 3
    while True:
        try:
            node = ExecutionNode(mesh, conf, context=ctx, **kw).start()
            break
        except NodeStartError as e:
            if "Address already in use" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if risk_state:
        wait_risk_state(node)
    return node


def wait_risk_state(node, timeout=5.0):
    """Until ``node`` holds a fresh risk state (from a RiskSource or a real risk node)."""
    from tests.conftest import wait_until
    wait_until(lambda: node.pretrade.view.snap is not None and not node.pretrade.view.unavailable(node.clock()),
               timeout, what="execution holding a fresh risk state")


def book(product="BTC-USD", bids=(("64990", "1"), ("64980", "2")), asks=(("65010", "0.5"), ("65020", "1"))):
    return Book(product, [[D(p), D(s)] for p, s in bids], [[D(p), D(s)] for p, s in asks])


def tick(product="BTC-USD", bid="64990", ask="65010", price=None):
    price = price or bid
    return Tick(product, D(price), D(bid), D("1"), D(ask), D("1"), D("1000"))


def trade(product="BTC-USD", price="64000", size="0.1", side="SELL", trade_id="t1"):
    return Trade(product, trade_id, D(price), D(size), side)


def killswitch(engaged=True, reason="test"):
    return KillSwitch(engaged, reason, "manual", time.time_ns())


__all__ = ["RiskSource", "Publisher", "wait_risk_state", "start_node", "book", "tick", "trade", "killswitch", "topics", "D"]
