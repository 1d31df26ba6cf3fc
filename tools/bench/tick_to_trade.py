"""Tick-to-trade benchmark: ``python -m tools.bench tick_to_trade [--quick]``.

The real nodes, in the production path: marketdata (seeded synthetic source, Coinbase frames through
the normaliser) -> strategy (the ``tools.bench.plugin:EveryTick`` plugin: a market order on every
tick, sent with the runtime's asynchronous request) -> execution (journal, the full pre-trade check
in-process against risk's published state, paper venue) -> the fill event on ``fill.P``. Risk runs
beside the path (it publishes its state; it is not asked per order). Over ``ipc`` and ``tcp``
every node is its own process (``python -m nodes.NAME`` with a private TICKMESH_CONF); over
``inproc`` they are threads of this process sharing one ZeroMQ context.

A probe subscribes to execution's ``order.new`` and ``fill.`` events and stamps each frame when it
arrives. One trade's latency is::

    (probe receives the order's first Fill) - Order.origin_ns

``origin_ns`` is the ``ts_recv`` the market-data node gave the tick that triggered the order (set
by the strategy node): the synthetic source stamps it as a live connection does, once the
simulated exchange has made the step's frames and before they are parsed. So the figure runs from
the tick's receive stamp inside marketdata to the fill event delivered to a subscriber: it
includes the normaliser, marketdata's hand-off from its source thread to its loop and three bus
hops (md -> strategy, strategy -> execution, execution's fill -> the probe). The table also splits
it using the events' own stamps: origin -> execution made the order (``Order.created_ns``) -> the
paper venue executed it (the fill's time: after the checks and the journal) -> fill received (the
fill's journal record, its publish and its hop).

Next to it, in the same run and at the same pace: one raw pyzmq PUB->SUB hop (a stamped ~150-byte
frame; the receiver polls like a node's loop; half the samples just before the mesh runs, half
just after), ``raw_hop_us`` = its median. Ratios are p50/p99 of tick-to-trade over that median.
``relay_floor_us``: the same three hops through two relays that do nothing (the path's floor).
``logic_floor_us``: the mesh itself with a strategy and an execution that do no work of their own
(``tools.bench.nullpath``), market data and risk real: the lowest their logic could reach.

Settings (reported in docs/performance.md): synthetic market at ``RATE_HZ`` steps per second with
``synthetic_time_scale`` 40 (a tick on ~60-95% of the steps, ~2 trades per tick), one product (BTC-USD), order size
0.0001, strategy cooldown 0, execution ``journal_fsync = false``, risk limits loosened (rate
limit, loss and drawdown triggers) but every check still runs. The first ``WARMUP`` trades are
discarded.
"""
import multiprocessing as mp
import threading
import time

import zmq

from . import common

TRANSPORTS = ("ipc", "tcp", "inproc")
RATE_HZ = 250.0
TIME_SCALE = 40.0
PRODUCT = "BTC-USD"
NODES_UP = ("marketdata", "risk", "execution", "strategy")
KEYS = ("p50_us", "p99_us", "max_us", "raw_hop_us", "p50_ratio", "p99_ratio", "trades")


def sections(transport: str, tmp, base_port: int) -> dict:
    return {
        "mesh": {"transport": transport, "base_port": base_port, "ipc_dir": str(tmp / "ipc"),
                 "state_dir": str(tmp / "state"), "products": [PRODUCT], "heartbeat_s": 1.0,
                 "log_level": "WARNING", "request_timeout_ms": 2000},
        "marketdata": {"source": "synthetic", "seed": 1, "synthetic_rate_hz": RATE_HZ,
                       "synthetic_time_scale": TIME_SCALE},
        "strategy": {"plugins": ["tools.bench.plugin:EveryTick"], "order_size": "0.0001",
                     "cooldown_s": 0.0, "submit_timeout_ms": 2000, "reject_backoff_s": 0.1,
                     "max_backoff_s": 0.5, "seed": 1},
        "execution": {"journal_fsync": False},
        "risk": {"max_orders_per_s": 100000, "daily_loss_limit": "1000000", "max_drawdown": "1000000",
                 "max_rejects_per_min": 100000, "max_position": "10"},
    }


# --- the raw one-hop baseline ------------------------------------------------------------------------

PAD = b"x" * 120


def _paced(n: int):
    """Yield ``n`` times, ``RATE_HZ`` times a second (pacing the load, not synchronising)."""
    period = 1.0 / RATE_HZ
    nxt = time.monotonic()
    for _ in range(n):
        nxt += period
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        yield


def _sub_all(ctx, endpoint):
    """A SUB socket on ``endpoint`` taking every frame (no linger)."""
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s


def _raw_sub(ctx, endpoint, n, ready, out):
    """Receive stamped frames; the latency of each is its arrival time minus its stamp."""
    own = ctx is None
    ctx = ctx or zmq.Context()
    s = _sub_all(ctx, endpoint)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    lat = []
    while len(lat) < n:
        if not poller.poll(5000):
            break
        f = s.recv()
        t = time.time_ns()
        if f[:1] == b"w":
            ready.set()
            continue
        lat.append((t - int(f[2:21])) / 1000)
    s.close()
    if own:
        ctx.term()
    out.put(lat) if hasattr(out, "put") else out.append(lat)


def raw_hop(transport: str, n: int, tmp) -> list:
    """One-way PUB->SUB latencies (us) of ``n`` frames sent ``RATE_HZ`` times a second."""
    from nodes.config import MeshConfig
    from tools.netutil import free_base_port
    mesh = MeshConfig(transport=transport, base_port=free_base_port(), ipc_dir=str(tmp / "ipc-raw"))
    if transport == "ipc":
        (tmp / "ipc-raw").mkdir(parents=True, exist_ok=True)
    ep = mesh.endpoint("marketdata", "pub")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    if transport == "inproc":
        ready, out = threading.Event(), []
        child = threading.Thread(target=_raw_sub, args=(ctx, ep, n, ready, out), daemon=True)
    else:
        sp = mp.get_context("spawn")
        ready, out = sp.Event(), sp.Queue()
        child = sp.Process(target=_raw_sub, args=(None, ep, n, ready, out))
    child.start()
    deadline = time.monotonic() + 60
    while not ready.wait(0.01):
        pub.send(b"w")
        if time.monotonic() > deadline:
            raise RuntimeError("raw hop: the subscriber never connected")
    for _ in _paced(n):
        pub.send(b"t %019d " % time.time_ns() + PAD)
    if transport == "inproc":
        child.join(30)
        lat = out[0] if out else []
    else:
        lat = out.get(timeout=60)
        child.join(10)
    pub.close()
    ctx.term()
    if len(lat) < n * 0.9:
        raise RuntimeError(f"raw hop: only {len(lat)} of {n} frames arrived")
    return lat


# --- the relay floor: the mesh's hops with no node code ----------------------------------------------------

RELAYS = 2      # marketdata -> strategy -> execution -> probe: 2 processes between, 3 hops


def _relay(ctx, sub_ep, pub_ep, ready):
    """Forward every frame from ``sub_ep`` to ``pub_ep`` (polling like a node's loop) until b"q"."""
    own = ctx is None
    ctx = ctx or zmq.Context()
    s = _sub_all(ctx, sub_ep)
    p = ctx.socket(zmq.PUB)
    p.setsockopt(zmq.LINGER, 0)
    p.bind(pub_ep)
    ready.set()
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    f = None
    while f != b"q":
        if not poller.poll(1000):
            continue
        f = s.recv()
        p.send(f)
    s.close()
    p.close()
    if own:
        ctx.term()


def relay_floor(transport: str, n: int, tmp) -> list:
    """Sorted latencies (us) of ``n`` frames sent ``RATE_HZ`` times a second through ``RELAYS``
    relays (own processes, or threads on inproc) and back to this process: the tick-to-trade
    path's hops and processes with no node code at all. Its median over the raw hop is the lowest
    p50 ratio the mesh could show."""
    from tools.netutil import free_base_port
    if transport == "inproc":
        eps = [f"inproc://bench.relay{i}" for i in range(RELAYS + 1)]
    elif transport == "ipc":
        d = tmp / "ipc-relay"
        d.mkdir(parents=True, exist_ok=True)
        eps = [f"ipc://{d}/h{i}" for i in range(RELAYS + 1)]
    else:
        base = free_base_port()
        eps = [f"tcp://127.0.0.1:{base + i}" for i in range(RELAYS + 1)]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(eps[0])
    sub = _sub_all(ctx, eps[-1])
    children, lat = [], []
    sp = mp.get_context("spawn")
    try:
        for i in range(RELAYS):
            if transport == "inproc":
                ready = threading.Event()
                child = threading.Thread(target=_relay, args=(ctx, eps[i], eps[i + 1], ready), daemon=True)
            else:
                ready = sp.Event()
                child = sp.Process(target=_relay, args=(None, eps[i], eps[i + 1], ready))
            child.start()
            children.append(child)
            if not ready.wait(30):
                raise RuntimeError("relay floor: a relay did not start")
        deadline = time.monotonic() + 60
        while not sub.poll(10):                 # until the chain is connected end to end
            pub.send(b"w")
            if time.monotonic() > deadline:
                raise RuntimeError("relay floor: the chain never connected")
        while sub.poll(50):
            sub.recv()
        for _ in _paced(n):
            t = time.time_ns()
            pub.send(b"t %019d " % t + PAD)
            if sub.poll(2000):
                sub.recv()
                lat.append((time.time_ns() - t) / 1000)
    finally:
        pub.send(b"q")
        for c in children:
            c.join(5)
            if hasattr(c, "kill") and c.is_alive():
                c.kill()
        pub.close()
        sub.close()
        ctx.term()
    if len(lat) < n * 0.9:
        raise RuntimeError(f"relay floor: only {len(lat)} of {n} frames came back")
    return sorted(lat)


# --- the probe ----------------------------------------------------------------------------------------------

class Probe:
    """A SUB socket in its own thread: heartbeats (decoded at once), ``order.new`` and ``fill.``
    frames (stamped on arrival, decoded after the run)."""

    def __init__(self, ctx, mesh):
        self.ctx, self.mesh = ctx, mesh
        self.heartbeats = {}
        self.orders = []            # (recv_ns, frame)
        self.fills = []
        self.fill_count = 0         # orders with at least one fill (an order may fill in pieces)
        self._filled = set()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="t2t-probe", daemon=True)
        self.error = None

    def start(self):
        self._thread.start()
        if not self._subscribed.wait(10):
            raise RuntimeError("probe did not start")
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        import proto
        try:
            s = self.ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            for p in (b"node.heartbeat.", b"order.new", b"fill."):
                s.setsockopt(zmq.SUBSCRIBE, p)
            for n in NODES_UP:
                s.connect(self.mesh.endpoint(n, "pub"))
            self._subscribed.set()
            recv, now = s.recv, time.time_ns
            orders, fills = self.orders, self.fills
            while not self._stop.is_set():
                if not s.poll(100):
                    continue
                while True:
                    try:
                        f = recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = now()
                    if f[:5] == b"fill.":
                        fills.append((t, f))
                        coid = proto.decode(f).msg.client_order_id
                        if coid not in self._filled:
                            self._filled.add(coid)
                            self.fill_count += 1
                    elif f[:9] == b"order.new":
                        orders.append((t, f))
                    else:
                        env = proto.decode(f)
                        self.heartbeats[env.msg.node] = env.msg
            s.close()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            self.error = e
            self._subscribed.set()

    def wait(self, pred, timeout, what, alive=lambda: []):
        """Wait (polling the probe's counters) until ``pred()``; raise naming ``what``."""
        deadline = time.monotonic() + timeout
        while not pred():
            if self.error is not None:
                raise RuntimeError(f"probe failed: {self.error}")
            dead = alive()
            if dead:
                raise RuntimeError(f"node(s) died while waiting for {what}: {', '.join(dead)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tick_to_trade: {what} not reached within {timeout:.0f} s")
            self._stop.wait(0.05)


def latencies(probe: Probe, skip_fills: int):
    """[(total, md->exec, exec->venue fill, fill->probe)] in us, one per order (first fill)."""
    import proto
    origin = {}
    for _, f in probe.orders:
        o = proto.decode(f).msg
        origin[o.client_order_id] = (o.origin_ns, o.created_ns)
    out, seen = [], set()
    for i, (t, f) in enumerate(probe.fills):
        env = proto.decode(f)
        coid = env.msg.client_order_id
        if coid in seen:
            continue
        seen.add(coid)
        if i < skip_fills or coid not in origin:
            continue
        o_ns, created = origin[coid]
        if o_ns <= 0:
            continue
        out.append(((t - o_ns) / 1000, (created - o_ns) / 1000, (env.ts_recv - created) / 1000,
                    (t - env.ts_recv) / 1000))
    return out


# --- one transport -------------------------------------------------------------------------------------

def run_mesh(transport: str, trades: int, warmup: int, tmp, null: bool = False) -> dict:
    """The mesh on ``transport``; ``null``: the strategy and execution replaced by
    ``tools.bench.nullpath``'s nodes (the logic floor)."""
    from tools.netutil import free_base_port
    conf = common.write_conf(tmp, sections(transport, tmp, free_base_port()))
    cfg = common.load_conf(conf)
    ctx = zmq.Context()
    procs, threads = None, []
    probe = Probe(ctx, cfg.mesh).start()
    try:
        if transport == "inproc":
            from nodes.execution import ExecutionNode
            from nodes.marketdata import MarketDataNode
            from nodes.risk import RiskNode
            from nodes.strategy import StrategyNode
            if null:
                from .nullpath import NullExecution as ExecutionNode, NullStrategy as StrategyNode
            for cls in (RiskNode, ExecutionNode, StrategyNode, MarketDataNode):
                threads.append(cls.from_config(cfg, context=ctx).start())

            def alive():
                return [n.name for n in threads if not n.alive]
        else:
            procs = common.Procs(common.clean_env(conf), tmp / "logs")
            for n in ("risk", "execution", "strategy", "marketdata"):
                nullable = null and n in ("execution", "strategy")
                procs.start(n, command=["tools.bench.nullpath", n] if nullable else None)
            alive = procs.dead
        probe.wait(lambda: all(n in probe.heartbeats for n in NODES_UP), 60, "a heartbeat from every node", alive)
        probe.wait(lambda: probe.fill_count >= warmup, 60, f"{warmup} warm-up fills", alive)
        skip = len(probe.fills)
        t0 = time.monotonic()
        need = probe.fill_count + trades + 1       # the order filling at the cut may be dropped
        probe.wait(lambda: probe.fill_count >= need, 60 + 5 * trades / RATE_HZ, f"{trades} measured fills", alive)
        secs = time.monotonic() - t0
        counters = dict(probe.heartbeats["strategy"].counters)
    finally:
        if procs is not None:
            codes = procs.stop(order=("marketdata", "strategy", "execution", "risk"))
            bad = {n: c for n, c in codes.items() if c not in (0, -15)}
            if bad:
                print(f"tick_to_trade {transport}: node exit codes {bad}; marketdata log tail:\n"
                      f"{procs.tail('marketdata')}", flush=True)
        for node in threads[::-1]:
            node.stop()
        probe.stop()
        ctx.term()
    lat = latencies(probe, skip)
    return {"lat": lat, "secs": secs, "strategy": counters}


def run_transport(transport: str, trades: int, warmup: int, hop_n: int) -> dict:
    tmp = common.tmpdir("tmt-")
    # inproc is offline mode: one process confined like python -m nodes.offline (one cpu by
    # default), the raw hop measured in the same placement
    from nodes.offline import default_cpus
    cpus = default_cpus() if transport == "inproc" else None
    try:
        with common.confined(cpus):
            # half the raw samples just before the mesh runs, half just after: the shared
            # machine's load drifts, and a hop's wake-up cost with it
            hop = raw_hop(transport, hop_n // 2, tmp)
            m = run_mesh(transport, trades, warmup, tmp)
            hop = sorted(hop + raw_hop(transport, hop_n - hop_n // 2, tmp))
            floor = relay_floor(transport, hop_n, tmp)
            (tmp / "null").mkdir()
            null = sorted(x[0] for x in run_mesh(transport, hop_n, max(10, warmup // 2), tmp / "null", null=True)["lat"])
    finally:
        common.rmtree(tmp)
    lat = m["lat"]
    if not lat or not null:
        raise RuntimeError(f"tick_to_trade {transport}: no trade measured{' (logic floor)' if lat else ''}")
    total = sorted(x[0] for x in lat)
    raw = common.pct(hop, 0.5)
    p50, p99 = common.pct(total, 0.5), common.pct(total, 0.99)
    res = {"p50_us": round(p50, 1), "p99_us": round(p99, 1), "max_us": round(total[-1], 1),
           "raw_hop_us": round(raw, 1), "p50_ratio": round(p50 / raw, 2), "p99_ratio": round(p99 / raw, 2),
           "trades": len(total), "relay_floor_us": round(common.pct(floor, 0.5), 1),
           "floor_ratio": round(common.pct(floor, 0.5) / raw, 2),
           "logic_floor_us": round(common.pct(null, 0.5), 1), "logic_floor_ratio": round(common.pct(null, 0.5) / raw, 2),
           "logic_floor_p99_ratio": round(common.pct(null, 0.99) / raw, 2)}
    parts = [sorted(x[i] for x in lat) for i in (1, 2, 3)]
    c = m["strategy"]
    print(f"tick_to_trade {transport}: {len(total)} trades in {m['secs']:.1f} s "
          f"({len(total) / m['secs']:.0f}/s); raw hop p50 {raw:.1f} p99 {common.pct(hop, 0.99):.1f} us; "
          f"{RELAYS} relays, no node code, p50 {common.pct(floor, 0.5):.1f} p99 {common.pct(floor, 0.99):.1f} us; "
          f"logic floor (null strategy and execution, {len(null)} orders) p50 {common.pct(null, 0.5):.1f} "
          f"p99 {common.pct(null, 0.99):.1f} us; "
          f"split p50 (us): origin->execution {common.pct(parts[0], 0.5):.0f}, "
          f"execution->venue fill (checks, journal) {common.pct(parts[1], 0.5):.0f}, "
          f"fill->probe (journal, publish, hop) {common.pct(parts[2], 0.5):.0f}; "
          f"strategy: submitted {c.get('submitted')}, "
          f"rejected {c.get('rejected')}, timeouts {c.get('submit_timeouts')}, "
          f"suppressed pending {c.get('suppressed_pending')}", flush=True)
    return res


def run(quick: bool = False) -> dict:
    common.quiet_logs()
    trades = common.size(quick, 10_000, 1_500, 150)
    warmup = common.size(quick, 300, 150, 30)
    hop_n = common.size(quick, 2_000, 500, 100)
    print(f"tick_to_trade: {trades} trades per transport after {warmup} warm-up, {RATE_HZ:g} ticks/s, "
          f"raw hop x{hop_n}", flush=True)
    return {tr: run_transport(tr, trades, warmup, hop_n) for tr in TRANSPORTS}


def table(sec: dict) -> str:
    lines = [f"{'transport':<9} {'p50 us':>8} {'p99 us':>8} {'max us':>9} {'raw hop':>8} {'p50/hop':>8} "
             f"{'p99/hop':>8} {'trades':>7} {'floor':>8} {'floor/hop':>9} {'logic':>8} {'logic/hop':>9}"]
    for tr, r in sec.items():
        target = ""
        if tr == "ipc":
            target = f"  target p50 <= 4x {'ok' if r['p50_ratio'] <= 4 else 'MISSED'}, " \
                     f"p99 <= 10x {'ok' if r['p99_ratio'] <= 10 else 'MISSED'}"
        lines.append(f"{tr:<9} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['max_us']:>9.1f} {r['raw_hop_us']:>8.1f} "
                     f"{r['p50_ratio']:>8.2f} {r['p99_ratio']:>8.2f} {r['trades']:>7} {r['relay_floor_us']:>8.1f} "
                     f"{r['floor_ratio']:>9.2f} {r['logic_floor_us']:>8.1f} {r['logic_floor_ratio']:>9.2f}{target}")
    lines.append("(tick receive stamp in marketdata -> fill event received by a subscriber; raw hop: one "
                 "pyzmq PUB->SUB hop at the same pace; floor: the same 3 hops through 2 relays that do "
                 "nothing; logic: the same mesh, market data and risk real, with a strategy and an execution "
                 "that do no work of their own (tools/bench/nullpath.py), the lowest p50/hop their logic "
                 "could reach)")
    return "\n".join(lines)
