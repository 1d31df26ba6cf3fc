"""Store throughput: ``python -m tools.bench store [--quick]``.

The events are those of a store file recorded from the synthetic market (see ``tools.bench.replay``:
ticks, trades, level2 books, feed status), as the store would receive them.

* ``plain_per_s``: a plain loop writing the same JSON lines, the store's format
  (``proto.jsonl.dumps`` of each decoded envelope, one buffered ``write`` per line, the file closed
  at the end; no fsync): events/s. ``proto.jsonl.dumps`` is the C formatter when the extension is
  built (the fastest formatter of those lines there is, so the strictest baseline); the same loop
  with the pure Python definition (``proto.jsonl.dumps_py``, the baseline of earlier reports) is
  printed and reported as ``plain_python_per_s``.
* ``events_per_s``: the store node (``python -m nodes.store``, its own process, default ``[store]``
  settings: batches of up to 5000, flush every 0.2 s, fsync at most once per interval) receiving
  the same events as encoded frames from a raw XPUB over ipc, sent as fast as pyzmq can, with
  unlimited high-water marks so nothing is lost on the bus: events/s from the first frame sent
  until the store reports every event written (``Query("store")`` ``events_stored``).
* ``dropped``: a second store process at the default high-water mark (``mesh.hwm`` 100000) fed at
  the bus rate of the replay target (0.25 x the raw inproc bus rate measured by the replay section
  in this run, or measured here when the section runs alone) for 10 s (quick: 4 s; the events
  cycle, encoded as they are sent so sequence numbers run on): events the store dropped (its queue
  full: ``events_dropped``) plus events lost on the bus before it (its sequence gaps). Whether it
  kept up is also printed (the backlog it still had when the sender finished): a store slower
  than the rate fills its SUB buffer (``hwm``) and queue first and drops only then, so a short
  run can show 0 dropped without keeping up.
"""
import time

import zmq

from . import common

KEYS = ("events_per_s", "plain_per_s", "ratio", "dropped")


def plain(envs: list, path, dumps=None) -> float:
    """Events/s of a plain loop writing the store lines of ``envs`` (``proto.jsonl.dumps`` unless
    another formatter of the same lines is given)."""
    if dumps is None:
        from proto import jsonl
        dumps = jsonl.dumps
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8") as f:
        w = f.write
        for env in envs:
            w(dumps(env) + "\n")
    return len(envs) / (time.perf_counter() - t0)


class StoreProc:
    """A store node process on ipc and the XPUB that feeds it (bound on the market-data slot)."""

    def __init__(self, tmp, hwm: int):
        from nodes.client import RequestClient
        self.tmp = tmp
        conf = common.write_conf(tmp, {
            "mesh": {"transport": "ipc", "ipc_dir": str(tmp / "ipc"), "state_dir": str(tmp / "state"),
                     "hwm": hwm, "heartbeat_s": 1.0, "log_level": "WARNING"}})
        self.mesh = common.load_conf(conf).mesh
        (tmp / "ipc").mkdir(parents=True, exist_ok=True)
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, hwm)
        self.pub.setsockopt(zmq.LINGER, 2000)
        self.pub.bind(self.mesh.endpoint("marketdata", "pub"))
        self.procs = common.Procs(common.clean_env(conf), tmp / "logs")
        self.procs.start("store")
        self.client = RequestClient.for_node(self.mesh, "store", source="bench", context=self.ctx,
                                             timeout_ms=2000)

    def wait_subscribed(self, timeout=60.0):
        """The store's SUB has sent its ``md.`` subscription to our XPUB (no slow-joiner loss)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs.dead():
                raise RuntimeError(f"store died at start: {self.procs.tail('store')}")
            if self.pub.poll(100):
                if self.pub.recv() == b"\x01md.":
                    return
        raise RuntimeError("store: no subscription within the deadline")

    def stats(self) -> dict:
        from proto import Query
        r = self.client.request(Query("store"))
        if not r.ok:
            raise RuntimeError(f"store query failed: {r.code} {r.reason}")
        return r.data

    def gaps(self) -> int:
        from proto import Query
        return int(self.client.request(Query("status")).data["counters"]["gaps"])

    def close(self):
        self.client.close()
        codes = self.procs.stop()
        self.pub.close()
        self.ctx.term()
        if codes.get("store") not in (0, -15):
            print(f"store: node exit status {codes}: {self.procs.tail('store')}", flush=True)


def flat_out(frames: list, tmp) -> float:
    """Frames sent as fast as possible, nothing lost on the bus: events/s written by the store."""
    sp = StoreProc(tmp, hwm=0)
    try:
        sp.wait_subscribed()
        n = len(frames)
        send = sp.pub.send
        t0 = time.perf_counter()
        for f in frames:
            send(f)
        deadline = time.monotonic() + 60 + n / 2000
        while True:
            s = sp.stats()
            if s["events_stored"] + s["events_dropped"] >= n:
                break
            if time.monotonic() > deadline or sp.procs.dead():
                raise RuntimeError(f"store: {s['events_stored']} of {n} written before the deadline")
            time.sleep(0.005)           # polling a counter that has no event to wait on
        secs = time.perf_counter() - t0
        if s["events_dropped"]:
            print(f"store: flat out, the writer queue overflowed: {s['events_dropped']} dropped", flush=True)
        return s["events_stored"] / secs
    finally:
        sp.close()


def paced(envs: list, rate: float, seconds: float, tmp) -> dict:
    """The events at ``rate`` per second for ``seconds`` (cycling through them, encoded as they go
    so every topic's sequence numbers run on), default high-water marks: drops and gaps."""
    import proto
    sp = StoreProc(tmp, hwm=100_000)
    try:
        sp.wait_subscribed()
        send = sp.pub.send
        encode = proto.Encoder("marketdata").encode
        k = len(envs)
        total = int(rate * seconds)
        t0 = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * rate) + 1)
            while sent < due:
                e = envs[sent % k]
                send(encode(e.topic, e.msg, e.ts_event, e.ts_recv), zmq.NOBLOCK)
                sent += 1
            if sent < total:
                time.sleep(0.0005)      # pacing the load
        t_sent = time.monotonic()
        # one last event per topic, well after the rest: the store sees any gap at a topic's tail
        tail = {e.topic: e for e in envs}
        time.sleep(0.05)
        for e in tail.values():
            send(encode(e.topic, e.msg, e.ts_event, e.ts_recv))
        sent += len(tail)
        s = sp.stats()
        backlog = sent - s["events_stored"] - s["events_dropped"]
        last, idle_since = None, time.monotonic()
        while True:                     # until all is accounted for, or nothing moved for 2 s
            gaps = sp.gaps()
            done = s["events_stored"] + s["events_dropped"] + gaps
            if done >= sent or sp.procs.dead() or time.monotonic() - idle_since > 2.0:
                break
            if done != last:
                last, idle_since = done, time.monotonic()
            time.sleep(0.02)
            s = sp.stats()
        return {"sent": sent, "rate": total / (t_sent - t0), "stored": s["events_stored"],
                "queue_dropped": s["events_dropped"], "bus_gaps": gaps, "backlog_at_end": backlog,
                "catch_up_s": time.monotonic() - t_sent, "max_depth": s["max_depth"]}
    finally:
        sp.close()


def bus_rate_of_target3(frames: list) -> float:
    """0.25 x the raw inproc bus rate: the replay section's measurement of this run if it ran, else
    measured here the same way (in offline mode's placement)."""
    from nodes.offline import default_cpus
    from . import replay
    raw = replay.LAST_RAW_PER_S
    if raw is None:
        with common.confined(default_cpus()):
            raw = replay.raw_inproc(frames, common.size(False, 200_000, 100_000, 20_000))
    return 0.25 * raw


def run(quick: bool = False) -> dict:
    from . import replay
    common.quiet_logs()
    events = common.size(quick, 100_000, 30_000, 3_000)
    rounds = common.size(quick, 3, 1, 1)
    paced_s = common.size(quick, 10.0, 4.0, 0.5)
    tmp = common.tmpdir("tms-")
    try:
        path = replay.record(tmp / "rec", events)
        from proto import jsonl
        envs = list(jsonl.read(path))
        frames = replay.frames_of(envs)
        try:
            from nodes.store.lines import dumps as fast_dumps
        except ImportError:             # a checkout from before the store had its own formatter
            fast_dumps = None
        plains, stores, pys = [], [], []
        for i in range(rounds):
            plains.append(plain(envs, tmp / f"plain{i}.jsonl"))
            pys.append(plain(envs, tmp / f"py{i}.jsonl", getattr(jsonl, "dumps_py", jsonl.dumps)))
            fast = f" (plain with the store's own formatter, nodes.store.lines.dumps: " \
                   f"{plain(envs, tmp / f'fast{i}.jsonl', fast_dumps):,.0f}/s; with the pure Python " \
                   f"definition proto.jsonl.dumps_py: {pys[-1]:,.0f}/s)" if fast_dumps else ""
            stores.append(flat_out(frames, tmp / f"flat{i}"))
            print(f"store: round {i + 1}: {len(frames)} events, store {stores[-1]:,.0f}/s, plain {plains[-1]:,.0f}/s"
                  f"{fast}", flush=True)
        rate = bus_rate_of_target3(frames)
        p = paced(envs, rate, paced_s, tmp / "paced")
        kept_up = p["backlog_at_end"] < rate * 0.5 and not (p["queue_dropped"] or p["bus_gaps"])
        print(f"store: at the replay target's bus rate ({rate:,.0f}/s asked, {p['rate']:,.0f}/s sent) for "
              f"{paced_s:g} s: {p['sent']} sent, {p['stored']} stored, {p['queue_dropped']} dropped by the store, "
              f"{p['bus_gaps']} lost on the bus; backlog when the sender finished {p['backlog_at_end']} "
              f"(writer queue max {p['max_depth']}), done {p['catch_up_s']:.2f} s later: "
              f"{'kept up' if kept_up else 'did NOT keep up'}", flush=True)
    finally:
        common.rmtree(tmp)
    ev, pl = sorted(stores)[len(stores) // 2], sorted(plains)[len(plains) // 2]
    if rounds > 1:
        print(f"store: spread over {rounds} rounds: store {common.spread(stores)}/s, plain {common.spread(plains)}/s")
    py = sorted(pys)[len(pys) // 2]
    return {"events_per_s": round(ev), "plain_per_s": round(pl), "ratio": round(ev / pl, 3),
            "dropped": int(p["queue_dropped"] + p["bus_gaps"]), "kept_up": kept_up,
            "plain_python_per_s": round(py), "ratio_vs_python_plain": round(ev / py, 3)}


def table(sec: dict) -> str:
    ok = "ok" if sec["ratio"] >= 0.5 else "MISSED"
    return (f"store node, events written:        {sec['events_per_s']:>10,} events/s\n"
            f"plain JSON-lines writes, same lines: {sec['plain_per_s']:>8,} events/s\n"
            f"ratio {sec['ratio']:.2f} (target >= 0.5: {ok}); dropped at the replay target's bus rate: "
            f"{sec['dropped']} (target 0: {'ok' if sec['dropped'] == 0 else 'MISSED'}; over the paced run, "
            f"10 s, --quick 4 s: see whether it kept up above)")
