"""``tickmesh tap``: watch the bus live, passively.

    tickmesh tap                              every event of every publisher in conf/mesh.toml
                                              (heartbeats folded: one line per node, again when its
                                              state or pid changes; --heartbeats shows each one)
    tickmesh tap --topic md.tick. --topic order.     only these topic prefixes
    tickmesh tap --json --count 10            ten events as JSON lines (the store's shape)
    tickmesh tap --stats                      per-topic events/s, sequence gaps, lag (refreshed)
    tickmesh tap --record out.jsonl           also write what it sees in the store's format
    tickmesh tap --endpoint tcp://127.0.0.1:7118      an explicit publisher (repeatable), e.g. the
                                              offline mode's tcp bridge

The tap is one SUB socket: it connects to publishers, never binds, never sends, so it cannot
disturb the mesh. ZeroMQ reconnects by itself when a publisher restarts (a sequence number back at
1 is reported as a restart, not a gap). It polls with a short timeout so Ctrl-C and SIGTERM stop it
within ~0.1 s. Exit status: 0, or 1 when ``--count`` was not reached before ``--duration``, 2 for
bad arguments.
"""
import argparse
import json
import os
import signal
import sys
import time

import zmq

import proto
from proto import jsonl

FORMAT = "tickmesh.jsonl/1"
POLL_MS = 100


def _meta(d: dict) -> str:
    return json.dumps(d, separators=(",", ":"))


def _fmt_value(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def format_line(env, now_ns: int = None) -> str:
    """One aligned human line: time, topic, source, seq, type, body fields, lag."""
    t = env.ts_event
    stamp = time.strftime("%H:%M:%S", time.gmtime(t // 1_000_000_000)) + f".{t % 1_000_000_000 // 1000:06d}"
    body = proto.to_plain(env.msg)
    fields = " ".join(f"{k}={_fmt_value(v)}" for k, v in body.items())
    line = f"{stamp}  {env.topic:<28} {env.source:<10} {env.seq:>7}  {env.msg.TAG:<12} {fields}"
    if now_ns is not None:
        line += f"  lag={(now_ns - env.ts_event) / 1e6:.3f}ms"
    return line


def format_heartbeat(env) -> str:
    """A node's heartbeat as one short line (shown once per node, and when its state or pid changes)."""
    t = env.ts_event
    stamp = time.strftime("%H:%M:%S", time.gmtime(t // 1_000_000_000)) + f".{t % 1_000_000_000 // 1000:06d}"
    hb = env.msg
    return (f"{stamp}  {env.topic:<28} {env.source:<10} {env.seq:>7}  {hb.node} {hb.state} pid {hb.pid} "
            f"host {hb.host} up {hb.uptime_s:.1f}s (heartbeats folded; --heartbeats shows each)")


def format_json(env) -> str:
    """The store's JSON shape (topic, type, source, seq, msg_id, ts_event, ts_recv, body)."""
    return jsonl.dumps(env)


class TopicStats:
    __slots__ = ("count", "window", "gaps", "restarts", "lag_sum", "lag_n", "lag_max", "last_rate", "last_lag")

    def __init__(self):
        self.count = self.window = self.gaps = self.restarts = 0
        self.lag_sum = 0
        self.lag_n = 0
        self.lag_max = 0
        self.last_rate = 0.0
        self.last_lag = 0.0


class Stats:
    """Per-topic counters, per-(source, topic) sequence tracking, lag from event time to now."""

    def __init__(self):
        self.topics: dict = {}
        self.seqs: dict = {}
        self.malformed = 0
        self.total = 0
        self._t0 = time.monotonic()
        self._last_roll = self._t0

    def add(self, env, now_ns: int):
        """Count one event; returns missing events when it reveals a gap (0 otherwise)."""
        st = self.topics.get(env.topic)
        if st is None:
            st = self.topics[env.topic] = TopicStats()
        st.count += 1
        st.window += 1
        self.total += 1
        lag = now_ns - env.ts_event
        st.lag_sum += lag
        st.lag_n += 1
        if lag > st.lag_max:
            st.lag_max = lag
        key = (env.source, env.topic)
        last = self.seqs.get(key)
        self.seqs[key] = env.seq
        if last is None or env.seq == last + 1:
            return 0
        if env.seq <= last:
            st.restarts += 1
            return 0
        missing = env.seq - last - 1
        st.gaps += missing
        return missing

    def roll(self):
        """Close the current window: compute events/s and mean lag per topic."""
        now = time.monotonic()
        dt = max(1e-9, now - self._last_roll)
        self._last_roll = now
        for st in self.topics.values():
            st.last_rate = st.window / dt
            st.last_lag = (st.lag_sum / st.lag_n / 1e6) if st.lag_n else 0.0
            st.window = 0
            st.lag_sum = st.lag_n = 0

    def render(self) -> str:
        rows = [f"{'TOPIC':<32} {'EVENTS':>9} {'EV/S':>9} {'GAPS':>6} {'RESTARTS':>8} {'LAG_MS':>10} {'MAX_LAG_MS':>11}"]
        for topic in sorted(self.topics):
            st = self.topics[topic]
            rows.append(f"{topic:<32} {st.count:>9} {st.last_rate:>9.1f} {st.gaps:>6} {st.restarts:>8} "
                        f"{st.last_lag:>10.3f} {st.lag_max / 1e6:>11.3f}")
        up = time.monotonic() - self._t0
        rows.append(f"{self.total} events in {up:.1f} s, {sum(s.gaps for s in self.topics.values())} missing, "
                    f"{self.malformed} malformed")
        return "\n".join(rows)


def endpoints_from_config(conf_path=None, nodes=None) -> list:
    from nodes import config
    cfg = config.load(conf_path)
    if cfg.mesh.transport == "inproc":
        raise config.ConfigError("mesh.transport is inproc: the tap needs --endpoint "
                                 "(the offline mode's tcp bridge)")
    return [cfg.mesh.endpoint(n, "pub") for n in (nodes or config.NODES)]


def curve_from_config(conf_path=None, nodes=None) -> dict:
    """With ``mesh.curve`` on tcp: endpoint -> (public, secret, server key), the tap's own key pair
    ("tap", from ``tickmesh keys generate``) and each publisher's public key. Empty otherwise."""
    from nodes import config, security
    mesh = config.load(conf_path).mesh
    if not (mesh.curve and mesh.transport == "tcp"):
        return {}
    pub, sec = security._load_pair(mesh, "tap")
    return {mesh.endpoint(n, "pub"): (pub, sec, security._load_public(mesh, n)) for n in (nodes or config.NODES)}


class Tap:
    """The SUB socket plus output. ``run()`` returns the number of events seen."""

    def __init__(self, endpoints, prefixes=("",), *, out=None, err=None, mode="lines", count=0,
                 duration=0.0, record=None, stats_interval=1.0, context=None, curve=None, fold_heartbeats=None):
        self.endpoints = list(endpoints)
        self.curve = curve or {}    # endpoint -> (public, secret, server key): CURVE client keys
        self.prefixes = list(prefixes) or [""]
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.mode = mode            # "lines" | "json" | "stats"
        self.count = count
        self.duration = duration
        self.stats = Stats()
        self.stats_interval = stats_interval
        self.record_path = record
        self._rec = None
        self._ctx = context
        self._own_ctx = context is None
        self.stopping = False
        self.seen = 0
        # the human view folds heartbeats (one per node per heartbeat_s drowned everything else)
        # unless asked for them by topic
        if fold_heartbeats is None:
            fold_heartbeats = not any(p.startswith("node.heartbeat") for p in self.prefixes)
        self.fold_heartbeats = fold_heartbeats and mode == "lines"
        self.heartbeats: dict = {}      # node -> [count, state, pid]

    def stop(self, *_):
        self.stopping = True

    def _open_record(self):
        if self.record_path:
            self._rec = open(self.record_path, "a", encoding="utf-8")
            self._rec.write(_meta({"type": "_open", "ts": time.time_ns(), "format": FORMAT,
                                   "file": os.path.basename(self.record_path), "writer": "tap",
                                   "endpoints": self.endpoints, "topics": self.prefixes}) + "\n")

    def _close_record(self):
        if self._rec is not None:
            self._rec.write(_meta({"type": "_close", "ts": time.time_ns(), "reason": "tap stopped",
                                   "events": self.seen}) + "\n")
            self._rec.close()
            self._rec = None

    def run(self) -> int:
        ctx = self._ctx or zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.RECONNECT_IVL, 100)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        for p in self.prefixes:
            sub.setsockopt(zmq.SUBSCRIBE, p.encode("ascii"))
        for ep in self.endpoints:
            keys = self.curve.get(ep)
            if keys is not None:
                sub.curve_publickey, sub.curve_secretkey, sub.curve_serverkey = keys
            sub.connect(ep)
        self._open_record()
        deadline = time.monotonic() + self.duration if self.duration else None
        next_roll = time.monotonic() + self.stats_interval
        tty = self.mode == "stats" and hasattr(self.out, "isatty") and self.out.isatty()
        try:
            while not self.stopping:
                if sub.poll(POLL_MS):
                    self._drain(sub)
                    if self._rec is not None:
                        self._rec.flush()
                    self.out.flush()
                if self.count and self.seen >= self.count:
                    break
                now = time.monotonic()
                if self.mode == "stats" and now >= next_roll:
                    next_roll = now + self.stats_interval
                    self.stats.roll()
                    self.out.write(("\x1b[H\x1b[2J" if tty else "\n") + self.stats.render() + "\n")
                    self.out.flush()
                if deadline is not None and now >= deadline:
                    break
        finally:
            sub.close(linger=0)
            if self._own_ctx:
                ctx.term()
            self._close_record()
        self._finish()
        return self.seen

    def _finish(self):
        """The closing view: final stats, or one line per node for the folded heartbeats."""
        if self.mode == "stats":
            self.stats.roll()
            self.out.write("\n" + self.stats.render() + "\n")
        elif self.fold_heartbeats and self.heartbeats:
            for node, (n, state, pid) in sorted(self.heartbeats.items()):
                self.out.write(f"-- heartbeats: {node:<10} {n:>6} seen, last {state} pid {pid}\n")
        self.out.flush()

    def _drain(self, sub, budget: int = 5000):
        for _ in range(budget):
            if self.count and self.seen >= self.count:
                return
            try:
                frame = sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.time_ns()
            try:
                env = proto.decode(frame)
            except proto.DecodeError as e:
                self.stats.malformed += 1
                topic = frame.split(b"\x00", 1)[0][:60]
                self.err.write(f"tap: malformed frame ({len(frame)} bytes, topic {topic!r}): {e}\n")
                continue
            self._show(env, now)

    def _show(self, env, now: int):
        """Count, record and print one decoded event (no sockets: tests call it directly)."""
        self.seen += 1
        missing = self.stats.add(env, now)
        if missing:
            if self.mode == "lines":
                self.out.write(f"-- gap: {missing} event(s) missing from {env.source} on {env.topic}\n")
            if self._rec is not None:
                self._rec.write(_meta({"type": "_gap", "source": env.source, "topic": env.topic,
                                       "missing": missing, "ts": now}) + "\n")
        if self._rec is not None:
            self._rec.write(jsonl.dumps(env) + "\n")
        if self.mode == "lines":
            if self.fold_heartbeats and isinstance(env.msg, proto.Heartbeat):
                hb = self.heartbeats.get(env.msg.node)
                if hb is not None and (hb[1], hb[2]) == (env.msg.state, env.msg.pid):
                    hb[0] += 1
                    return
                self.heartbeats[env.msg.node] = [(hb[0] if hb else 0) + 1, env.msg.state, env.msg.pid]
                self.out.write(f"{format_heartbeat(env)}\n")
                return
            self.out.write(format_line(env, now) + "\n")
        elif self.mode == "json":
            self.out.write(format_json(env) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickmesh tap", description="Watch the bus live (a passive subscriber).")
    p.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    p.add_argument("--endpoint", action="append", default=[], metavar="EP",
                   help="publisher endpoint to connect to instead of the config's (repeatable)")
    p.add_argument("--node", action="append", default=[], metavar="NAME",
                   help="only these nodes' publishers from the config (repeatable)")
    p.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                   help="topic prefix filter (repeatable; default: everything)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line (the store's shape)")
    fmt.add_argument("--stats", action="store_true", help="live per-topic events/s, gaps and lag")
    p.add_argument("--interval", type=float, default=1.0, help="--stats refresh interval, seconds")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events")
    p.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S seconds")
    p.add_argument("--record", metavar="FILE", help="append what is seen to FILE in the store's format")
    p.add_argument("--heartbeats", action="store_true",
                   help="show every heartbeat (default view: one line per node, again on a state or pid change)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.count < 0 or args.duration < 0 or args.interval <= 0:
        p.print_usage(sys.stderr)
        print("tickmesh tap: --count, --duration must be >= 0 and --interval > 0", file=sys.stderr)
        return 2
    for t in args.topic:
        if not t.isascii():
            p.print_usage(sys.stderr)
            print(f"tickmesh tap: topic prefixes are ASCII: {t!r}", file=sys.stderr)
            return 2
    curve = {}
    if args.endpoint:
        endpoints = args.endpoint
    else:
        from nodes import config
        unknown = [n for n in args.node if n not in config.NODES]
        if unknown:
            p.print_usage(sys.stderr)
            print(f"tickmesh tap: unknown node {unknown[0]!r} (known: {', '.join(config.NODES)})", file=sys.stderr)
            return 2
        try:
            endpoints = endpoints_from_config(args.conf, args.node or None)
            curve = curve_from_config(args.conf, args.node or None)
        except config.ConfigError as e:
            print(f"tickmesh tap: {e}", file=sys.stderr)
            return 2
    mode = "json" if args.json else "stats" if args.stats else "lines"
    tap = Tap(endpoints, args.topic or [""], mode=mode, count=args.count, duration=args.duration,
              record=args.record, stats_interval=args.interval, curve=curve,
              fold_heartbeats=False if args.heartbeats else None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, tap.stop)
    if mode != "json":
        print(f"tap: {len(endpoints)} publisher(s), topics {', '.join(repr(t) for t in tap.prefixes)}"
              + (f", recording to {args.record}" if args.record else ""), file=sys.stderr)
    try:
        seen = tap.run()
    except BrokenPipeError:          # `tickmesh tap | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except zmq.ZMQError as e:
        print(f"tickmesh tap: {e}", file=sys.stderr)
        return 2
    if args.count and seen < args.count:
        print(f"tap: saw {seen} of {args.count} events", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
