"""The runtime over real sockets on tcp, ipc and inproc."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal

import msgpack
import pytest
import zmq

import proto
from nodes.client import RequestClient, RequestTimeout
from nodes.runtime import Node
from proto import Code

TICK = proto.Tick("BTC-USD", Decimal("65000.01"), Decimal("65000.00"), Decimal("0.5"),
                  Decimal("65000.01"), Decimal("0.25"), Decimal("9000.12"))


class Source(Node):
    name = "marketdata"


class Sink(Node):
    name = "risk"
    subscriptions = ("md.tick.", "node.heartbeat.")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.ticks = []
        self.got = threading.Event()
        self.hb = threading.Event()
        self.on(proto.Tick, self._tick)
        self.on(proto.Heartbeat, lambda env: self.hb.set())
        self.serve(proto.OrderIntent, self._check)
        self.queries["boom"] = lambda arg: 1 / 0

    def _tick(self, env):
        self.ticks.append(env)
        self.got.set()

    def _check(self, env):
        o = env.msg
        if o.size is None or o.size <= 0:
            return proto.Reply(False, Code.INVALID_ORDER, "size must be positive")
        return {"approved": True, "size": o.size}


def publish_until_seen(pub_node, sink, topic, msg, timeout=5.0):
    """Slow joiner: publish until the subscriber has seen one, without sleeping."""
    deadline = time.monotonic() + timeout
    while not sink.got.is_set():
        assert time.monotonic() < deadline, "subscriber never received"
        pub_node.call_soon(pub_node.publish, topic, msg)
        sink.got.wait(0.01)


def test_pub_sub_and_topic_filtering(mesh, ctx):
    src = Source(mesh, context=ctx).start()
    sink = Sink(mesh, context=ctx).start()
    try:
        publish_until_seen(src, sink, "md.tick.BTC-USD", TICK)
        n0 = len(sink.ticks)
        done = threading.Event()

        def burst():
            for _ in range(500):
                src.publish("md.trade.BTC-USD", proto.Trade("BTC-USD", "1", Decimal(1), Decimal(1), "BUY"))
                src.publish("md.tick.BTC-USD", TICK)
            src.publish("md.tick.ETH-USD", TICK._replace(product="ETH-USD"))
            done.set()
        src.call_soon(burst)
        deadline = time.monotonic() + 5
        while not any(e.msg.product == "ETH-USD" for e in sink.ticks[-3:]):
            assert time.monotonic() < deadline
            sink.got.clear()
            sink.got.wait(0.05)
        got = sink.ticks[n0:]
        assert len(got) == 501                              # trades filtered out at the publisher
        assert all(e.source == "marketdata" and type(e.msg) is proto.Tick for e in got)
        assert got[0].msg == TICK and got[-1].topic == "md.tick.ETH-USD"
        seqs = [e.seq for e in got if e.topic == "md.tick.BTC-USD"]
        assert seqs == list(range(seqs[0], seqs[0] + 500))
        assert sink.counters["gaps"] == 0 and sink.counters["malformed"] == 0
    finally:
        sink.stop()
        src.stop()


def test_request_reply_errors_never_kill_the_server(mesh, ctx):
    sink = Sink(mesh, context=ctx).start()
    c = RequestClient(mesh.endpoint("risk", "rep"), context=ctx, timeout_ms=2000)
    try:
        r = c.request(proto.OrderIntent("BTC-USD", "BUY", "MARKET", size=Decimal("0.01")))
        assert r.ok and r.data == {"approved": True, "size": Decimal("0.01")}
        r = c.request(proto.OrderIntent("BTC-USD", "BUY", "MARKET", size=Decimal("-1")))
        assert (r.ok, r.code) == (False, Code.INVALID_ORDER)
        r = c.request(proto.Query("boom"))
        assert (r.ok, r.code) == (False, Code.HANDLER_ERROR) and "ZeroDivisionError" in r.reason
        r = c.request(proto.CancelAll())
        assert (r.ok, r.code) == (False, Code.UNKNOWN_REQUEST)
        r = c.request(proto.Query("nope"))
        assert r.code == Code.UNKNOWN_REQUEST
        st = c.call(proto.Query("status"))
        assert st["node"] == "risk" and st["state"] == "RUNNING"
        assert st["counters"]["handler_errors"] == 1
    finally:
        c.close()
        sink.stop()


def test_sequence_gaps_and_publisher_restart_are_detected(mesh, ctx):
    sink = Sink(mesh, context=ctx).start()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(mesh.endpoint("replay", "pub"))
    try:
        enc = proto.Encoder("replay")
        # slow joiner: send until the first one lands, then reset the encoder's sequence
        deadline = time.monotonic() + 5
        while not sink.got.wait(0.01):
            assert time.monotonic() < deadline
            pub.send(proto.Encoder("warmup").encode("md.tick.X", TICK))
        frames = [enc.encode("md.tick.BTC-USD", TICK) for _ in range(10)]
        for i in (0, 1, 2, 6, 7, 9):            # 3,4,5 and 8 missing -> 4 events in 2 gaps
            pub.send(frames[i])
        restarted = proto.Encoder("replay")
        pub.send(restarted.encode("md.tick.BTC-USD", TICK))      # seq 1 again: a restart
        pub.send(restarted.encode("md.tick.ETH-USD", TICK))
        deadline = time.monotonic() + 5
        while sum(1 for e in sink.ticks if e.source == "replay") < 8:
            assert time.monotonic() < deadline
            sink.got.clear()
            sink.got.wait(0.05)
        assert sink.counters["gaps"] == 4 and sink.counters["gap_events"] == 2
        assert sink.bus_gaps == {"replay": 4}
        assert sink.counters["restarts_seen"] == 1
        # a restarted publisher whose first events were lost: those are counted as a gap too
        for _ in range(5):                                          # seq 1..5 on a fresh topic
            pub.send(restarted.encode("md.tick.SOL-USD", TICK))
        again = proto.Encoder("replay")
        again.encode("md.tick.SOL-USD", TICK)                      # seq 1, never sent
        again.encode("md.tick.SOL-USD", TICK)                      # seq 2, never sent
        sink.got.clear()
        pub.send(again.encode("md.tick.SOL-USD", TICK._replace(product="SEQ3")))
        deadline = time.monotonic() + 5
        while not any(e.msg.product == "SEQ3" for e in sink.ticks):
            assert time.monotonic() < deadline
            sink.got.clear()
            sink.got.wait(0.05)
        assert sink.counters["restarts_seen"] == 2 and sink.counters["gaps"] == 6
    finally:
        pub.close(linger=0)
        sink.stop()


def test_malformed_frames_are_counted_and_dropped_node_keeps_serving(mesh, ctx):
    sink = Sink(mesh, context=ctx).start()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(mesh.endpoint("replay", "pub"))
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(mesh.endpoint("risk", "rep"))
    try:
        deadline = time.monotonic() + 5
        while not sink.got.wait(0.01):
            assert time.monotonic() < deadline
            pub.send(proto.encode("md.tick.X", TICK, source="replay"))
        garbage = [b"md.tick.", b"md.tick.X\x00\xc1", b"md.tick.X\x00" + b"\x99" * 50,
                   b"md.tick.X\x00" + proto.encode("t", TICK)[2:-3]]
        for g in garbage:
            pub.send(g)
        pub.send_multipart([b"md.tick.X", b"two", b"frames"])
        before = sink.counters["malformed"]
        # a valid event after the garbage still arrives
        sink.got.clear()
        pub.send(proto.encode("md.tick.X", TICK._replace(product="AFTER"), source="replay2"))
        deadline = time.monotonic() + 5
        while not any(e.msg.product == "AFTER" for e in sink.ticks):
            assert time.monotonic() < deadline
            sink.got.clear()
            sink.got.wait(0.05)
        assert sink.counters["malformed"] >= 5 and before >= 0
        # garbage requests: wrong frame counts and undecodable payloads get BAD_REQUEST
        dealer.send(b"\xc1\xc1 not msgpack")
        assert dealer.poll(2000)
        r = proto.decode(dealer.recv()).msg
        assert (r.ok, r.code) == (False, Code.BAD_REQUEST)
        # a readable envelope with a bad body: the reply carries the request's msg_id
        bad = b"req\x00" + msgpack.packb([proto.MAJOR, 0, "Tick", 4242, "c", 1, 1, 1, ["B", "NaN"]])
        dealer.send(bad)
        assert dealer.poll(2000)
        rep = proto.decode(dealer.recv())
        assert rep.msg_id == 4242 and rep.msg.code == Code.BAD_REQUEST and "Tick" in rep.msg.reason
        dealer.send_multipart([b"a", b"b", b"c"])
        assert dealer.poll(2000)
        assert proto.decode(dealer.recv_multipart()[-1]).msg.code == Code.BAD_REQUEST
        with RequestClient(mesh.endpoint("risk", "rep"), context=ctx, timeout_ms=2000) as c:
            assert c.call(proto.Query("status"))["state"] == "RUNNING"
        assert sink.alive
    finally:
        pub.close(linger=0)
        dealer.close(linger=0)
        sink.stop()


def test_request_timeout_then_recovery_after_server_restart(mesh, ctx):
    c = RequestClient(mesh.endpoint("risk", "rep"), context=ctx, timeout_ms=300)
    try:
        t0 = time.monotonic()
        with pytest.raises(RequestTimeout, match="no reply"):
            c.request(proto.Query("status"))           # nobody there yet
        assert time.monotonic() - t0 < 1.0
        sink = Sink(mesh, context=ctx).start()
        assert c.call(proto.Query("status"), timeout_ms=2000)["state"] == "RUNNING"
        sink.stop()
        with pytest.raises(RequestTimeout):
            c.request(proto.Query("status"))           # server gone: timeout, socket reopened
        sink2 = Sink(mesh, context=ctx).start()
        try:
            assert c.call(proto.Query("status"), timeout_ms=2000)["state"] == "RUNNING"
        finally:
            sink2.stop()
        assert c.timeouts == 2
    finally:
        c.close()


def test_nodes_start_in_any_order(mesh, ctx):
    sink = Sink(mesh, context=ctx).start()          # subscriber first, publisher later
    src = Source(mesh, context=ctx).start()
    try:
        publish_until_seen(src, sink, "md.tick.BTC-USD", TICK)
    finally:
        src.stop()
        sink.stop()


def test_second_instance_cannot_steal_an_ipc_endpoint(short_tmp, ctx):
    from tests.conftest import make_mesh
    from nodes.runtime import NodeStartError
    m = make_mesh("ipc", short_tmp)
    a = Source(m, context=ctx).start()
    try:
        with pytest.raises(NodeStartError, match="in use"):
            Source(m, context=ctx).start()
        assert oct(os.stat(m.endpoint("marketdata", "pub")[6:]).st_mode & 0o777) == "0o600"
    finally:
        a.stop()


CHILD = textwrap.dedent("""
    import sys
    from decimal import Decimal
    import proto
    from nodes.runtime import Node, run_main

    class Burst(Node):
        name = "replay"
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.queries["burst"] = self.burst
        def burst(self, arg):
            t = proto.Tick("BTC-USD", *[Decimal("1.5")] * 6)
            for _ in range(int(arg)):
                self.publish("md.tick.BTC-USD", t)
            return int(arg)

    sys.exit(run_main(Burst, ["--conf", sys.argv[1]]))
""")


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_sigterm_stops_a_node_within_a_second_without_losing_published_events(transport, short_tmp, ctx):
    from tests.conftest import make_mesh
    m = make_mesh(transport, short_tmp)
    conf = short_tmp / "mesh.toml"
    conf.write_text(f"[mesh]\ntransport = '{transport}'\nbase_port = {m.base_port}\nipc_dir = '{m.ipc_dir}'\n"
                    f"state_dir = '{m.state_dir}'\nheartbeat_s = 0.2\n")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(m.endpoint("replay", "pub"))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(conf)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:                               # wait for its first heartbeat: connected
            assert time.monotonic() < deadline, "no heartbeat from the child"
            if sub.poll(200) and proto.decode(sub.recv()).type == "Heartbeat":
                break
        n = 50_000
        with RequestClient(m.endpoint("replay", "rep"), context=ctx, timeout_ms=10000) as c:
            assert c.call(proto.Query("burst", str(n))) == n
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(5)
        elapsed = time.monotonic() - t0
        ticks = 0
        stopped = False
        while sub.poll(2000):
            env = proto.decode(sub.recv())
            if env.type == "Tick":
                ticks += 1
            elif env.type == "Heartbeat" and env.msg.state == "STOPPED":
                stopped = True
                break
        out = p.stdout.read()
        assert p.returncode == 0, out
        assert elapsed < 1.0, f"stop took {elapsed:.3f} s"
        assert stopped and ticks == n, f"received {ticks} of {n}"
        assert "signal received, stopping" in out and "stopped" in out
    finally:
        if p.poll() is None:
            p.kill()
        sub.close(linger=0)


def test_async_request_to_an_absent_peer_is_unsent_not_timed_out(mesh, ctx):
    """Node.request to a node with nothing bound: on ipc/tcp, on_timeout at once naming why,
    counted as ``out_unsent`` (nothing left the node), never as a timeout. On inproc a connect
    waits for its bind (ZeroMQ queues to it), so the request times out like an unanswered one."""
    src = Source(mesh, context=ctx).start()
    whys = []
    done = threading.Event()
    inproc = mesh.transport == "inproc"
    try:
        src.call_soon(lambda: src.request("risk", proto.Query("ping"), lambda r: whys.append(r),
                                          lambda why: (whys.append(why), done.set()),
                                          timeout_s=0.2 if inproc else 5.0))
        assert done.wait(2), whys
        if inproc:
            assert whys == ["no reply from risk within 200 ms"]
            assert src.counters["out_unsent"] == 0 and src.counters["out_timeouts"] == 1
        else:
            assert whys == ["risk is not connected"]
            assert src.counters["out_unsent"] == 1 and src.counters["out_timeouts"] == 0
        assert src.counters["out_requests"] == 1
    finally:
        src.stop()


def test_async_requests_time_out_each_on_its_own_deadline(mesh, ctx):
    """Node.request: a reply cancels the request's timeout; an unanswered request times out after
    its own timeout, a short one sent after a long one first."""
    server = ctx.socket(zmq.ROUTER)     # takes requests, answers only those asking for "ping"
    server.setsockopt(zmq.LINGER, 0)
    if mesh.transport == "ipc":
        os.makedirs(mesh.ipc_path(), mode=0o700, exist_ok=True)
    server.bind(mesh.endpoint("risk", "rep", bind=True))
    src = Source(mesh, context=ctx).start()
    events = []
    t0 = time.monotonic()
    done = threading.Event()

    def record(what):
        if what.startswith("probe"):
            return                                  # the connection probes' own outcomes
        events.append((what, time.monotonic() - t0))
        if len(events) == 3:
            done.set()

    def send(what, timeout_s):
        src.request("risk", proto.Query(what), lambda r: record(f"{what} reply"),
                    lambda why: record(f"{what} timeout"), timeout_s=timeout_s)

    try:
        src.call_soon(src.connect_requests, "risk")
        deadline = time.monotonic() + 5
        while not server.poll(10):                  # until the request socket is connected
            assert time.monotonic() < deadline, "request socket never connected"
            src.call_soon(send, "probe", 0.05)
        while server.poll(100):
            server.recv_multipart()
        t0 = time.monotonic()
        src.call_soon(send, "long", 1.5)
        src.call_soon(send, "ping", 1.0)
        src.call_soon(send, "short", 0.2)
        for _ in range(3):
            assert server.poll(2000)
            frames = server.recv_multipart()
            env = proto.decode(frames[-1])
            if env.msg.what == "ping":
                reply = proto.Encoder("risk").encode("rep", proto.Reply(True, Code.OK, "", "pong"),
                                                     msg_id=env.msg_id)
                server.send_multipart(frames[:-1] + [reply])
        assert done.wait(5), events
        assert [w for w, _ in events] == ["ping reply", "short timeout", "long timeout"], events
        short, long_ = events[1][1], events[2][1]
        assert 0.2 <= short < 1.0 and 1.5 <= long_ < 2.5, events
        assert src.counters["out_timeouts"] >= 2
    finally:
        src.stop()
        server.close(linger=0)
