"""Helpers for the execution tests (no tests here): a real risk responder on the risk endpoint, a
market-data publisher on the marketdata endpoint, a risk event publisher.

The risk responder is a local stand-in for the risk node that speaks the real contract over a
real ROUTER socket: ``OrderIntent`` -> ``Reply(ok, code, reason, data=RiskDecision)``. Its mode
decides the answer: "approve", "deny" (with ``deny_code``), "silent" (never answers: a timeout),
"error" (``HANDLER_ERROR``, as the runtime answers when a handler raises).
"""
import os
import threading
import time
from decimal import Decimal

import zmq

import proto
from proto import Book, Code, KillSwitch, OrderIntent, Reply, RiskDecision, Tick, Trade, topics

D = Decimal


def _bind(sock, mesh, node, kind):
    if mesh.transport == "ipc":
        os.makedirs(mesh.ipc_path(), mode=0o700, exist_ok=True)
    sock.bind(mesh.endpoint(node, kind, bind=True))


class RiskResponder:
    def __init__(self, ctx, mesh, mode="approve", deny_code=Code.MAX_NOTIONAL):
        self.ctx, self.mesh = ctx, mesh
        self.mode, self.deny_code = mode, deny_code
        self.intents = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "risk responder did not bind"

    def _run(self):
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        _bind(s, self.mesh, "risk", "rep")
        enc = proto.Encoder("risk")
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not s.poll(50):
                    continue
                frames = s.recv_multipart()
                env = proto.decode(frames[-1])
                if type(env.msg) is not OrderIntent:
                    continue
                self.intents.append(env.msg)
                i = env.msg
                if self.mode == "silent":
                    continue
                if self.mode == "error":
                    r = Reply(False, Code.HANDLER_ERROR, "ZeroDivisionError: boom")
                elif self.mode == "deny":
                    r = Reply(False, self.deny_code, "denied by test",
                              RiskDecision(i.client_order_id, i.product, False, self.deny_code, "denied by test", 1000))
                else:
                    r = Reply(True, Code.OK, "", RiskDecision(i.client_order_id, i.product, True, Code.OK, "", 1000))
                s.send_multipart(frames[:-1] + [enc.encode("rep", r, msg_id=env.msg_id)])
        finally:
            s.close(linger=0)

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
    deadline = time.monotonic() + 3
    while True:
        try:
            return ExecutionNode(mesh, conf, context=ctx, **kw).start()
        except NodeStartError as e:
            if "Address already in use" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def book(product="BTC-USD", bids=(("64990", "1"), ("64980", "2")), asks=(("65010", "0.5"), ("65020", "1"))):
    return Book(product, [[D(p), D(s)] for p, s in bids], [[D(p), D(s)] for p, s in asks])


def tick(product="BTC-USD", bid="64990", ask="65010", price=None):
    price = price or bid
    return Tick(product, D(price), D(bid), D("1"), D(ask), D("1"), D("1000"))


def trade(product="BTC-USD", price="64000", size="0.1", side="SELL", trade_id="t1"):
    return Trade(product, trade_id, D(price), D(size), side)


def killswitch(engaged=True, reason="test"):
    return KillSwitch(engaged, reason, "manual", time.time_ns())


__all__ = ["RiskResponder", "Publisher", "start_node", "book", "tick", "trade", "killswitch", "topics", "D"]
