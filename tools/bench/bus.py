"""Bus benchmark: PUB->SUB throughput of tick events and request/reply round trips between two
processes, over ipc and tcp, each side by side with raw pyzmq on pre-encoded bytes.

* throughput, raw: a PUB sends N pre-encoded frames; the SUB process only ``recv``s them.
* throughput, tickmesh: a ``Node`` publishes N ticks (each encoded from a fresh record with a
  moving price); a subscribing ``Node`` receives, decodes, sequence-checks and dispatches each one
  to a handler. Both: messages/s measured at the subscriber from first to last message; HWMs are
  unlimited so nothing is dropped and the count is exact.
* round trip, raw: DEALER -> ROUTER echo of pre-encoded bytes. tickmesh: ``RequestClient`` ->
  a ``Node`` answering ``Query("ping")`` (decode, dispatch, encode a Reply, correlate by id).
"""
import multiprocessing as mp
import statistics
import tempfile
import time
from decimal import Decimal

import zmq

TRANSPORTS = ("ipc", "tcp")


def _mesh(transport, base_port, ipc_dir):
    from nodes.config import MeshConfig
    return MeshConfig(transport=transport, base_port=base_port, ipc_dir=ipc_dir, hwm=0,
                      heartbeat_s=3600.0, state_dir=ipc_dir)


def _ticks(n):
    import proto
    base = Decimal("65000.00")
    step = Decimal("0.01")
    for i in range(n):
        px = base + step * (i % 997)
        yield proto.Tick("BTC-USD", px, px - step, Decimal("0.5"), px + step, Decimal("0.25"), Decimal("9000.12"))


# --- child processes ------------------------------------------------------------------------------

def _raw_sub(endpoint, n, ready, out):
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    # slow joiner: wait for a warm-up frame before declaring readiness
    while not s.poll(50):
        ready.set()
    s.recv()
    ready.set()
    got = 0
    t0 = None
    while got < n:
        if not s.poll(5000):
            break
        f = s.recv()
        if f[:1] == b"w":
            continue
        if t0 is None:
            t0 = time.perf_counter()
        got += 1
    out.put((got, time.perf_counter() - (t0 or time.perf_counter())))
    s.close(linger=0)
    ctx.term()


def _node_sub(transport, base_port, ipc_dir, n, ready, out):
    import threading
    import proto
    from nodes.runtime import Node
    mesh = _mesh(transport, base_port, ipc_dir)
    done = threading.Event()
    state = {"got": 0, "t0": None, "t1": None}

    class Sub(Node):
        name = "risk"
        subscriptions = ("md.tick.", "w")
        publishers = ("marketdata",)

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.on(proto.Tick, self.tick)

        def tick(self, env):
            if env.msg.product == "WARM":
                ready.set()
                return
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            state["got"] += 1
            if state["got"] >= n:
                state["t1"] = time.perf_counter()
                done.set()

    node = Sub(mesh).start()
    done.wait(120)
    node.stop()
    t1 = state["t1"] or time.perf_counter()
    out.put((state["got"], t1 - (state["t0"] or t1), node.counters["gaps"], node.counters["malformed"]))


def _raw_echo(endpoint, ready, stop):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(endpoint)
    ready.set()
    while not stop.is_set():
        if s.poll(100):
            s.send_multipart(s.recv_multipart())
    s.close()
    ctx.term()


def _node_server(transport, base_port, ipc_dir, ready, stop):
    from nodes.runtime import Node

    class Server(Node):
        name = "risk"

    node = Server(_mesh(transport, base_port, ipc_dir)).start()
    ready.set()
    stop.wait(300)
    node.stop()


# --- measurements -----------------------------------------------------------------------------------

def _free_base():
    from tools.netutil import free_base_port
    return free_base_port()


def throughput_raw(transport, n, ipc_dir):
    import proto
    sp = mp.get_context("spawn")
    base = _free_base()
    ep = _mesh(transport, base, ipc_dir).endpoint("marketdata", "pub")
    frames = [proto.encode("md.tick.BTC-USD", t, source="marketdata") for t in _ticks(1000)]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 5000)
    pub.bind(ep)
    ready, out = sp.Event(), sp.Queue()
    child = sp.Process(target=_raw_sub, args=(ep, n, ready, out))
    child.start()
    while not ready.wait(0.01):
        pub.send(b"w")
    for _ in range(50):
        pub.send(b"w")
    send = pub.send
    for i in range(n):
        send(frames[i % 1000])
    got, secs = out.get(timeout=120)
    child.join(10)
    pub.close()
    ctx.term()
    return got / secs if secs > 0 else 0.0, got


def throughput_node(transport, n, ipc_dir):
    import threading
    import proto
    from nodes.runtime import Node
    sp = mp.get_context("spawn")
    base = _free_base()
    mesh = _mesh(transport, base, ipc_dir)

    class Pub(Node):
        name = "marketdata"

    pub = Pub(mesh).start()
    ready, out = sp.Event(), sp.Queue()
    child = sp.Process(target=_node_sub, args=(transport, base, ipc_dir, n, ready, out))
    child.start()
    warm = proto.Tick("WARM", *[Decimal(1)] * 6)
    while not ready.wait(0.01):
        pub.call_soon(pub.publish, "md.tick.WARM", warm)
    ticks = list(_ticks(n))
    sent = threading.Event()

    def burst():
        publish = pub.publish
        for t in ticks:
            publish("md.tick.BTC-USD", t)
        sent.set()
    pub.call_soon(burst)
    got, secs, gaps, malformed = out.get(timeout=300)
    child.join(10)
    pub.stop(timeout=10)
    return (got / secs if secs > 0 else 0.0), got, gaps


def rtt_raw(transport, n, ipc_dir):
    import proto
    sp = mp.get_context("spawn")
    base = _free_base()
    ep = _mesh(transport, base, ipc_dir).endpoint("risk", "rep")
    ready, stop = sp.Event(), sp.Event()
    child = sp.Process(target=_raw_echo, args=(ep, ready, stop))
    child.start()
    ready.wait(30)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(ep)
    frame = proto.encode("req", proto.Query("ping", "x"))
    lat = []
    for i in range(n + 200):
        t0 = time.perf_counter_ns()
        d.send(frame)
        if not d.poll(5000):
            raise RuntimeError("raw echo timed out")
        d.recv()
        if i >= 200:
            lat.append((time.perf_counter_ns() - t0) / 1000)
    stop.set()
    child.join(10)
    d.close()
    ctx.term()
    return lat


def rtt_node(transport, n, ipc_dir):
    import proto
    from nodes.client import RequestClient
    sp = mp.get_context("spawn")
    base = _free_base()
    mesh = _mesh(transport, base, ipc_dir)
    ready, stop = sp.Event(), sp.Event()
    child = sp.Process(target=_node_server, args=(transport, base, ipc_dir, ready, stop))
    child.start()
    ready.wait(60)
    ctx = zmq.Context()
    c = RequestClient(mesh.endpoint("risk", "rep"), context=ctx, timeout_ms=5000)
    q = proto.Query("ping", "x")
    lat = []
    for i in range(n + 200):
        t0 = time.perf_counter_ns()
        r = c.request(q)
        if i >= 200:
            lat.append((time.perf_counter_ns() - t0) / 1000)
        assert r.ok and r.data == "x"
    c.close()
    stop.set()
    child.join(10)
    ctx.term()
    return lat


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def run(quick: bool = False) -> dict:
    n = 50_000 if quick else 300_000
    rt = 1_000 if quick else 10_000
    rounds = 1 if quick else 3
    out = {}
    ipc_dir = tempfile.mkdtemp(prefix="tmb-", dir="/tmp")
    for tr in TRANSPORTS:
        raw_runs, env_runs, gaps_total = [], [], 0
        for _ in range(rounds):           # interleaved so drift hits both sides alike
            raw_runs.append(throughput_raw(tr, n, ipc_dir)[0])
            rate, got, gaps = throughput_node(tr, n, ipc_dir)
            env_runs.append(rate)
            gaps_total += gaps
        raw_lat = rtt_raw(tr, rt, ipc_dir)
        env_lat = rtt_node(tr, rt, ipc_dir)
        raw = statistics.median(raw_runs)
        env = statistics.median(env_runs)
        out[tr] = {
            "messages": n, "rounds": rounds,
            "msgs_per_s": round(env), "raw_msgs_per_s": round(raw),
            "throughput_ratio": round(env / raw, 3),
            "gaps": gaps_total,
            "rtt_p50_us": round(_pct(env_lat, 0.50), 1), "rtt_p99_us": round(_pct(env_lat, 0.99), 1),
            "raw_rtt_p50_us": round(_pct(raw_lat, 0.50), 1), "raw_rtt_p99_us": round(_pct(raw_lat, 0.99), 1),
            "rtt_p50_ratio": round(_pct(env_lat, 0.50) / _pct(raw_lat, 0.50), 3),
            "round_trips": rt,
            "codec": _codec_name(),
        }
    return out


def _codec_name() -> str:
    from proto import codec
    return "C speedups (proto._speedups)" if codec.SPEEDUPS else "pure Python (proto.codec)"


def table(sec: dict) -> str:
    lines = [f"{'transport':<9} {'msgs/s':>10} {'raw msgs/s':>11} {'ratio':>6} | {'rtt p50':>8} {'p99':>8} "
             f"{'raw p50':>8} {'raw p99':>8} {'ratio':>6}"]
    for tr, r in sec.items():
        lines.append(f"{tr:<9} {r['msgs_per_s']:>10,} {r['raw_msgs_per_s']:>11,} {r['throughput_ratio']:>6.2f} | "
                     f"{r['rtt_p50_us']:>8.1f} {r['rtt_p99_us']:>8.1f} {r['raw_rtt_p50_us']:>8.1f} "
                     f"{r['raw_rtt_p99_us']:>8.1f} {r['rtt_p50_ratio']:>6.2f}")
    lines.append("(throughput: tickmesh Node publish -> Node receive+decode+seq-check+dispatch vs raw pyzmq "
                 "recv of pre-encoded frames; rtt in microseconds; codec: %s)" % _codec_name())
    return "\n".join(lines)


def main(argv=None):
    from tools.bench.__main__ import main as bench_main
    return bench_main(["bus"] + list(argv or []))


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
