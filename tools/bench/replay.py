"""Replay throughput: ``python -m tools.bench replay [--quick]``.

1. A store file is recorded by the real nodes: the market-data node's seeded synthetic source at
   full speed (``synthetic_rate_hz = 0``: Coinbase frames through the normaliser, books kept from
   level2) and the store node, over inproc, until ``EVENTS`` market events are stored.
2. That file is replayed through the whole offline mesh as ``python -m nodes.offline --source
   replay:FILE`` runs it: every node (store, risk, execution, strategy with the default SMA plugin,
   metrics, alerts, marketdata and the offline summary node) driven by one thread on the market
   clock (``nodes.engine``), over inproc; the recording is read and parsed by a helper process on
   the other cpu (``nodes.marketdata.replay.Prefetch``), as offline mode does. The clock runs from the first event fed until the
   engine has fed the last one and the mesh is quiet (everything handled everywhere).
   ``ticks_per_s`` = market events replayed (Tick, Trade and Book records) per second.
3. ``direct_per_s``: the same replay with the bus taken out: every event a node publishes reaches
   its subscribers' handlers as a record (no encoding, no ZeroMQ, no decoding; the store still
   formats its lines). ``bus_share`` = 1 - ticks_per_s / direct_per_s: the share of the mesh's
   time the bus and the runtime's socket handling take.
4. ``raw_per_s``: raw pyzmq over inproc in the same process, one PUB thread sending the same
   events as pre-encoded frames and one SUB thread receiving them (messages/s at the receiver);
   ``fanout_raw_per_s``: the same frames to a SUB thread per offline node that takes market data.

``ratio`` = ticks_per_s / raw_per_s (target >= 0.12). Bus gaps (events a slow subscriber lost at
its high-water mark) are printed; a run with gaps did not keep up.
"""
import logging
import threading
import time
from pathlib import Path

import zmq

from . import common

PRODUCTS = ["BTC-USD", "ETH-USD"]
KEYS = ("ticks_per_s", "raw_per_s", "ratio", "direct_per_s", "bus_share")
MD_TYPES = ("Tick", "Trade", "Book")
LAST_RAW_PER_S = None       # the raw inproc rate of the last run (the store section reuses it)


def base_sections(tmp: Path, state: str) -> dict:
    return {
        "mesh": {"transport": "inproc", "state_dir": str(tmp / state), "products": PRODUCTS,
                 "heartbeat_s": 1.0, "log_level": "WARNING"},
        "metrics": {"port": 0},
    }


def _idle(ctx, mesh, names, stop_at: float) -> bool:
    """Two consecutive rounds of every node's status counters are equal (nothing moved) and the
    store's writer has nothing queued (every event it received is written)."""
    from nodes.client import RequestClient, RequestTimeout
    from proto import Query
    clients = [RequestClient.for_node(mesh, n, source="bench", context=ctx, timeout_ms=2000) for n in names]
    try:
        prev = None
        while time.monotonic() < stop_at:
            snap = []
            for c in clients:
                try:
                    cn = c.request(Query("status")).data["counters"]
                    snap.append((cn.get("received"), cn.get("published"), cn.get("store_queue", 0)))
                except RequestTimeout:
                    snap.append(None)
            if snap == prev and None not in snap and not any(x[2] for x in snap):
                return True
            prev = snap
        return False
    finally:
        for c in clients:
            c.close()


def record(tmp: Path, events: int) -> Path:
    """Run marketdata (synthetic, full speed) + store over inproc until ``events`` are stored."""
    from nodes.marketdata import MarketDataNode
    from nodes.store import StoreNode
    conf = common.write_conf(tmp, {**base_sections(tmp, "rec"),
                                   "marketdata": {"source": "synthetic", "seed": 3, "synthetic_rate_hz": 0.0}})
    cfg = common.load_conf(conf)
    ctx = zmq.Context()
    store = StoreNode.from_config(cfg, context=ctx).start()
    md = MarketDataNode.from_config(cfg, context=ctx)
    t0 = time.monotonic()
    md.start()
    try:
        deadline = t0 + 30 + events / 500
        while True:
            fc = md.fc
            if fc["ticks"] + fc["trades"] + fc["books"] >= events:
                break
            if time.monotonic() > deadline or not md.alive:
                raise RuntimeError(f"replay: recording stalled at {fc['ticks'] + fc['trades'] + fc['books']} events")
            md._closing.wait(0.02)
        secs = time.monotonic() - t0
    finally:
        md.stop()
        store.stop()
        ctx.term()
    n = md.fc["ticks"] + md.fc["trades"] + md.fc["books"]
    print(f"replay: recorded {n} market events from the synthetic source in {secs:.1f} s "
          f"({n / secs:,.0f}/s: the synthetic market, the parser and the publishing path)", flush=True)
    files = sorted((tmp / "rec" / "store").glob("*.jsonl"))
    if len(files) != 1:
        raise RuntimeError(f"replay: expected one store file, found {files}")
    return files[0]


def load_events(path: Path) -> list:
    from proto import jsonl
    return [env for env in jsonl.read(path) if env.msg.TAG in MD_TYPES]


def replay_conf(tmp: Path, path: Path):
    conf = common.write_conf(tmp, {**base_sections(tmp, "replay"),
                                   "marketdata": {"source": "replay", "replay_file": str(path),
                                                  "replay_speed": "max"}})
    return common.load_conf(conf)


def mesh_subscriptions(cfg) -> dict:
    """name -> the SUB prefixes of every node of the offline mesh (constructors are cheap: nothing
    is started)."""
    from nodes.offline import Summary, available_nodes
    out = {name: tuple(cls.from_config(cfg).subscriptions) for name, cls in available_nodes()}
    out["offline"] = Summary.subscriptions
    return out


def replay_mesh(tmp: Path, path: Path, expect: int, direct: bool = False) -> dict:
    """The whole offline mesh on ``path``, driven by the engine; returns the figures of one run."""
    from nodes.engine import Engine, MarketClock
    from nodes.offline import OFFLINE_CADENCE, Summary, _first_ts, available_nodes
    from nodes.marketdata import replay as md_replay
    cfg = replay_conf(tmp, path)
    for section, keys in OFFLINE_CADENCE.items():          # as python -m nodes.offline runs it
        cfg = cfg.replace(section, **keys)
    mdc = cfg.section("marketdata")
    # as python -m nodes.offline runs it: the recording read and parsed by a helper process (it
    # forks: before this process has a ZeroMQ context)
    src = md_replay.ReplaySource(mdc, cfg.mesh.products, None, logging.getLogger("tickmesh.marketdata"),
                                 md_replay.resolve(mdc.replay_file))
    prefetch = md_replay.Prefetch(src)
    ctx = zmq.Context()
    nodes = {name: cls.from_config(cfg, context=ctx) for name, cls in available_nodes()}
    md = nodes["marketdata"]
    md.driven_source = True
    summary = Summary(cfg.mesh, context=ctx)
    md.source = src
    clock = MarketClock(_first_ts(md.source))
    engine = Engine(list(nodes.values()) + [summary], clock, direct=direct)
    try:
        engine.start()
        t0 = time.monotonic()
        why = engine.run(md, md.source.batches(stamp=lambda ts: ts, prefetch=prefetch))
        t1 = time.monotonic()
        if why != "source" or not md.fc["replay_done"]:
            raise RuntimeError(f"replay: the replay did not finish ({why})")
        rep = dict(md.replay)
        gaps = {n: node.counters["gaps"] for n, node in nodes.items()}
        gaps["offline"] = summary.counters["gaps"]
        orders = nodes["strategy"].c["submitted"]
        killswitch = summary.killswitch_engaged and summary.killswitch_reason
    finally:
        engine.stop()               # the store's writer finishes its queue
        prefetch.close()
        ctx.term()
    w = nodes["store"].writer
    return {"secs": t1 - t0, "used": rep.get("used", 0), "gaps": gaps, "stored": w.stored if w else 0,
            "orders": orders, "killswitch": killswitch}


def _raw_sub(ctx, ep, prefixes, n, ready, out):
    """A raw SUB thread: subscribes to ``prefixes``, then receives ``n`` frames (poll, then one
    ``recv``) and does nothing with them; appends (got, n, first received, last received)."""
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.LINGER, 0)
    for p in prefixes + (b"w",):
        s.setsockopt(zmq.SUBSCRIBE, p)
    s.connect(ep)
    while not s.poll(10):
        ready.set()
    s.recv()
    ready.set()
    got, t0 = 0, None
    recv = s.recv
    while got < n:
        if not s.poll(5000):
            break
        if recv()[:1] != b"w":
            if t0 is None:
                t0 = time.perf_counter()
            got += 1
    out.append((got, n, t0, time.perf_counter()))
    s.close()


def raw_inproc(frames: list, n: int) -> float:
    """Messages/s of raw pyzmq PUB -> SUB over inproc, two threads of this process."""
    return fanout_inproc(frames, n, {"raw": ("",)})[0]


def fanout_inproc(frames: list, n: int, subs: dict):
    """Messages/s of raw pyzmq over inproc from one PUB thread (this one) sending ``frames`` to a
    SUB thread per entry of ``subs`` (name -> topic prefixes), each receiving what its prefixes
    match and doing nothing with it. With the offline mesh's nodes that take market data, that is
    the bus's share of the mesh with no node code. The clock runs from the first frame received
    until the last subscriber has all of its frames. Returns (messages/s, subscriber threads)."""
    topics = [f.split(b"\x00", 1)[0] for f in frames]
    k = len(frames)
    full, rest = divmod(n, k)          # frames[i % k] for i < n: the list full times, then its head
    plan = []
    for name, prefixes in sorted(subs.items()):
        pre = tuple(p.encode() for p in prefixes)
        per = sum(1 for t in topics if t.startswith(pre))
        if per:
            plan.append((pre, full * per + sum(1 for t in topics[:rest] if t.startswith(pre))))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 1000)
    ep = "inproc://bench.raw"
    pub.bind(ep)
    out, threads = [], []
    for pre, expect in plan:
        ready = threading.Event()
        th = threading.Thread(target=_raw_sub, args=(ctx, ep, pre, expect, ready, out), daemon=True)
        th.start()
        threads.append((th, ready))
    for th, ready in threads:
        while not ready.wait(0.005):
            pub.send(b"w")
    for _ in range(20):
        pub.send(b"w")
    send = pub.send
    for i in range(n):
        send(frames[i % k])
    for th, _ in threads:
        th.join(120)
    pub.close()
    ctx.term()
    short = [(got, want) for got, want, _, _ in out if got < want]
    if len(out) < len(plan) or short:
        raise RuntimeError(f"raw inproc: subscribers short of frames: {short or 'a subscriber did not finish'}")
    return n / (max(o[3] for o in out) - min(o[2] for o in out)), len(plan)


def frames_of(envs: list) -> list:
    import proto
    enc = proto.Encoder("marketdata")
    return [enc.encode(e.topic, e.msg, e.ts_event, e.ts_recv) for e in envs]


def run(quick: bool = False) -> dict:
    common.quiet_logs()
    events = common.size(quick, 100_000, 20_000, 3_000)
    raw_n = common.size(quick, 300_000, 100_000, 20_000)
    rounds = common.size(quick, 3, 1, 1)
    from nodes.offline import default_cpus
    cpus = default_cpus()           # what python -m nodes.offline does; the raw baseline too
    print(f"replay: offline mode's placement: this process confined to cpu(s) {sorted(cpus)}, "
          f"the mesh and the raw baseline alike", flush=True)
    tmp = common.tmpdir("tmr-")
    try:
        with common.confined(cpus):
            path = record(tmp, events)
            envs = load_events(path)
            ticks = sum(1 for e in envs if e.msg.TAG == "Tick")
            frames = frames_of(envs)
            print(f"replay: file {path.stat().st_size / 1e6:.1f} MB, {len(envs)} market events "
                  f"({ticks} Tick, {sum(1 for e in envs if e.msg.TAG == 'Trade')} Trade, "
                  f"{sum(1 for e in envs if e.msg.TAG == 'Book')} Book)", flush=True)
            subs = mesh_subscriptions(replay_conf(tmp / "subs", path))
            rates, raws, fans, directs = [], [], [], []
            for i in range(rounds):             # interleaved: drift on the shared machine hits both
                raws.append(raw_inproc(frames, raw_n))
                fan, nsubs = fanout_inproc(frames, raw_n, subs)
                fans.append(fan)
                r = replay_mesh(tmp / f"run{i}", path, len(envs))
                rate = r["used"] / r["secs"]
                rates.append(rate)
                d = replay_mesh(tmp / f"direct{i}", path, len(envs), direct=True)
                directs.append(d["used"] / d["secs"])
                gaps = sum(r["gaps"].values())
                print(f"replay: run {i + 1}: {r['used']} events in {r['secs']:.2f} s ({rate:,.0f}/s), store wrote "
                      f"{r['stored']}, strategy orders {r['orders']}, bus gaps {gaps} {r['gaps'] if gaps else ''}; "
                      f"without the bus {directs[-1]:,.0f}/s (orders {d['orders']}); raw inproc "
                      f"{raws[-1]:,.0f}/s, raw fan-out to {nsubs} subscribers {fan:,.0f}/s"
                      + (f"; kill switch engaged during the run: {r['killswitch']}" if r["killswitch"] else ""),
                      flush=True)
    finally:
        common.rmtree(tmp)
    global LAST_RAW_PER_S
    rate = sorted(rates)[len(rates) // 2]
    raw = LAST_RAW_PER_S = sorted(raws)[len(raws) // 2]
    fan = sorted(fans)[len(fans) // 2]
    direct = sorted(directs)[len(directs) // 2]
    if len(rates) > 1:
        print(f"replay: spread over {len(rates)} runs: mesh {common.spread(rates)}/s, raw {common.spread(raws)}/s, "
              f"raw fan-out {common.spread(fans)}/s, without the bus {common.spread(directs)}/s")
    return {"ticks_per_s": round(rate), "raw_per_s": round(raw), "ratio": round(rate / raw, 4),
            "fanout_raw_per_s": round(fan), "fanout_ceiling": round(fan / raw, 4), "cpus": sorted(cpus),
            "direct_per_s": round(direct), "bus_share": round(max(0.0, 1 - rate / direct), 4)}


def table(sec: dict) -> str:
    ok = "ok" if sec["ratio"] >= 0.12 else "MISSED"
    return (f"offline mesh replay (the engine, every node):             {sec['ticks_per_s']:>10,} market events/s\n"
            f"the same without the bus (records to the handlers):       {sec['direct_per_s']:>10,} market events/s "
            f"(the bus and socket handling: {100 * sec['bus_share']:.0f}% of the mesh's time)\n"
            f"raw pyzmq inproc PUB->SUB, same frames:                   {sec['raw_per_s']:>10,} msgs/s\n"
            f"raw pyzmq inproc PUB->the mesh's subscribers, no node code: {sec['fanout_raw_per_s']:>8,} msgs/s "
            f"(ceiling of the ratio: {sec['fanout_ceiling']:.3f})\n"
            f"ratio {sec['ratio']:.3f} (target >= 0.12: {ok})")
