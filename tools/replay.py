"""``python -m tools.replay FILE [--speed 1|10|max] [--topics PREFIX ...] [--conf PATH]``

Republishes a store file (``proto.jsonl``) into a running mesh from the ``replay`` node slot: the
tool binds ``mesh.endpoint("replay", "pub")``, which every node's SUB socket already connects to.

Envelopes go out with source ``replay``, fresh per-topic sequence numbers, the recorded ``ts_event``
and a new ``ts_recv`` (the time the replay published the event; ``--keep-ts-recv`` keeps the
recorded one). ``--speed 1`` and ``--speed 10`` pace events by the recorded ``ts_recv`` gaps (real
time, ten times faster); ``--speed max`` sends as fast as the subscribers take them.

Readiness instead of sleeping (ZeroMQ subscriptions travel asynchronously: a subscriber that has
not finished subscribing misses the first events, the "slow joiner"). The socket is an XPUB with
``XPUB_VERBOSE``, so every subscription of every connected subscriber arrives here. Before the first
event the tool waits (up to ``--wait-timeout``) until

* every ``--wait-for NODE`` has published a heartbeat (the node is up; seen through a SUB on its
  PUB socket), and
* at least ``--subscribers N`` subscriptions (default: the number of ``--wait-for`` nodes, at least
  1) cover one of the replayed topics. A node subscribes each of its prefixes once, so this counts
  the subscribers that will receive that topic. ``--subscribers 0`` does not wait at all.

The socket is XPUB_NODROP: at a subscriber's high-water mark the send is retried (bounded by
``--stall-timeout``) instead of silently dropped. At the end, with ``--wait-for``, the tool waits
until those nodes are idle (their heartbeat's ``received`` counter stops moving) before it closes,
so a slow subscriber is not cut off (a PUB that closes drops what subscribers have not read yet).

``_gap`` lines in the file (where the recording is incomplete) are reported, not replayed.
"""
import argparse
import fcntl
import os
import signal
import sys
import threading
import time

import zmq

import proto
from proto import jsonl, topics

SPEEDS = {"1": 1.0, "10": 10.0, "max": 0.0}


class ReplayError(Exception):
    pass


def load_events(path, prefixes=()):
    """The events of a store file (optionally only topics starting with one of ``prefixes``) and
    the bookkeeping lines. Returns ``(events, meta)``."""
    events, meta = [], []
    pre = tuple(prefixes)
    for item in jsonl.read(path, with_meta=True):
        if type(item) is dict:
            meta.append(item)
        elif not pre or item.topic.startswith(pre):
            events.append(item)
    return events, meta


class Replayer:
    """Publishes envelopes from the replay slot. Usable in-process (offline mode, tests) with a
    shared zmq Context; ``run()`` does readiness, pacing, publishing and the final drain."""

    def __init__(self, mesh, events, *, context=None, speed: float = 0.0, keep_ts_recv: bool = False,
                 wait_for=(), subscribers: int = None, wait_timeout: float = 10.0,
                 stall_timeout: float = 10.0, stop: threading.Event = None, log=None):
        self.mesh = mesh
        self.events = list(events)
        self.ctx = context or zmq.Context.instance()
        self.speed = speed
        self.keep_ts_recv = keep_ts_recv
        self.wait_for = tuple(wait_for)
        self.subscribers = max(1, len(self.wait_for)) if subscribers is None else subscribers
        self.wait_timeout = wait_timeout
        self.stall_timeout = stall_timeout
        self.stop = stop or threading.Event()
        self.log = log or (lambda *a: print(*a, file=sys.stderr))
        self.subs: dict = {}          # subscription prefix (bytes) -> number of subscribers
        self.published = 0
        self.stalls = 0
        self._lock_fd = None
        self._auth_hold = False
        self.pub = None

    # --- sockets ----------------------------------------------------------------------------------
    def open(self):
        m = self.mesh
        ep = m.endpoint("replay", "pub", bind=True)
        if ep.startswith("ipc://"):
            os.makedirs(m.ipc_path(), mode=0o700, exist_ok=True)
            path = ep[6:]
            if not path.startswith("@"):   # a second bind to an ipc path silently steals it
                fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise ReplayError(f"{ep} is in use (is another replay running?)") from None
                self._lock_fd = fd
        s = self.ctx.socket(zmq.XPUB)
        s.setsockopt(zmq.SNDHWM, m.hwm)
        s.setsockopt(zmq.LINGER, m.pub_linger_ms)
        s.setsockopt(zmq.XPUB_VERBOSE, 1)
        s.setsockopt(zmq.XPUB_NODROP, 1)
        if m.curve and m.transport == "tcp":
            from nodes import security
            security.apply(s, m, "replay", server=True, context=self.ctx)
            self._auth_hold = True
        try:
            s.bind(ep)
        except zmq.ZMQError as e:
            s.close(linger=0)
            raise ReplayError(f"cannot bind {ep}: {e} (is another replay running?)") from None
        self.pub = s
        self.enc = proto.Encoder("replay")

    def close(self):
        if self.pub is not None:
            self.pub.close()      # bounded linger (mesh.pub_linger_ms) flushes the tail
            self.pub = None
        if self._auth_hold:
            from nodes import security
            security.release(self.ctx)
            self._auth_hold = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _read_subscriptions(self, timeout_ms: int = 0) -> bool:
        got = False
        while self.pub.poll(timeout_ms, zmq.POLLIN):
            msg = self.pub.recv()
            if msg:
                p = msg[1:]
                n = self.subs.get(p, 0) + (1 if msg[0] == 1 else -1)
                if n > 0:
                    self.subs[p] = n
                else:
                    self.subs.pop(p, None)
                got = True
            timeout_ms = 0
        return got

    def coverage(self) -> int:
        """The largest number of subscribers that receive one of the replayed topics."""
        best = 0
        for t in {e.topic for e in self.events}:
            tb = t.encode("ascii")
            best = max(best, sum(n for p, n in self.subs.items() if tb.startswith(p)))
        return best

    # --- readiness ----------------------------------------------------------------------------------
    def wait_ready(self):
        deadline = time.monotonic() + self.wait_timeout
        if self.wait_for:
            self._wait_heartbeats(deadline)
        if self.subscribers <= 0 or not self.events:
            return
        while self.coverage() < self.subscribers:
            left = deadline - time.monotonic()
            if left <= 0 or self.stop.is_set():
                raise ReplayError(
                    f"only {self.coverage()} of {self.subscribers} subscribers for the replayed topics "
                    f"after {self.wait_timeout} s (subscriptions seen: "
                    f"{sorted(p.decode('ascii', 'replace') for p in self.subs) or 'none'})")
            self._read_subscriptions(int(min(left, 0.1) * 1000) + 1)

    def _heartbeat_sub(self, nodes):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        curve = self.mesh.curve and self.mesh.transport == "tcp"
        for n in nodes:
            s.setsockopt(zmq.SUBSCRIBE, topics.exact(topics.heartbeat(n)))
            if curve:             # the server key is set again before every connect
                from nodes import security
                security.apply(s, self.mesh, "replay", server=False, server_node=n)
            s.connect(self.mesh.endpoint(n, "pub"))
        return s

    def _wait_heartbeats(self, deadline):
        s = self._heartbeat_sub(self.wait_for)
        try:
            missing = set(self.wait_for)
            while missing:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    raise ReplayError(f"no heartbeat from {', '.join(sorted(missing))} within "
                                      f"{self.wait_timeout} s")
                self._read_subscriptions(0)
                if s.poll(int(min(left, 0.1) * 1000) + 1):
                    env = _decode_or_none(s.recv())
                    if env is not None and type(env.msg) is proto.Heartbeat:
                        missing.discard(env.msg.node)
        finally:
            s.close(linger=0)

    # --- publishing ---------------------------------------------------------------------------------
    def _send(self, frame):
        stalled_since = None
        while True:
            try:
                self.pub.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:   # XPUB_NODROP: a subscriber is at its high-water mark
                now = time.monotonic()
                if stalled_since is None:
                    stalled_since = now
                    self.stalls += 1
                elif now - stalled_since > self.stall_timeout:
                    raise ReplayError(f"a subscriber took nothing for {self.stall_timeout} s "
                                      f"({self.published} events sent)") from None
                self._read_subscriptions(0)
                if self.stop.wait(0.001):   # back off; also wakes on Ctrl-C
                    raise ReplayError("stopped") from None

    def publish_all(self):
        evs = self.events
        if not evs:
            return
        speed = self.speed
        t0_rec = _rec_time(evs[0])
        t0 = time.monotonic()
        encode = self.enc.encode
        keep = self.keep_ts_recv
        for i, e in enumerate(evs):
            if self.stop.is_set():
                raise ReplayError("stopped")
            if speed > 0:
                due = t0 + (_rec_time(e) - t0_rec) / 1e9 / speed
                left = due - time.monotonic()
                if left > 0.0005 and self.stop.wait(left):
                    raise ReplayError("stopped")
            self._send(encode(e.topic, e.msg, e.ts_event, e.ts_recv if keep else 0))
            self.published += 1
            if (i & 1023) == 0:
                self._read_subscriptions(0)

    def drain(self, timeout: float = 10.0):
        """With ``--wait-for``: wait until those nodes have read everything (their ``received``
        counter stops moving between two heartbeats), up to ``timeout``."""
        if not self.wait_for:
            return True
        s = self._heartbeat_sub(self.wait_for)
        try:
            last, idle = {}, set()
            deadline = time.monotonic() + timeout
            while idle != set(self.wait_for):
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    return False
                if not s.poll(int(min(left, 0.1) * 1000) + 1):
                    continue
                env = _decode_or_none(s.recv())
                if env is None or type(env.msg) is not proto.Heartbeat:
                    continue
                hb = env.msg
                rec = hb.counters.get("received", 0)
                if last.get(hb.node) == rec:
                    idle.add(hb.node)
                else:
                    idle.discard(hb.node)
                last[hb.node] = rec
            return True
        finally:
            s.close(linger=0)

    def run(self) -> dict:
        self.open()
        try:
            self.wait_ready()
            t = time.monotonic()
            self.publish_all()
            elapsed = time.monotonic() - t
            drained = self.drain()
        finally:
            self.close()
        return {"published": self.published, "seconds": round(elapsed, 3),
                "rate": round(self.published / elapsed) if elapsed > 0 else None,
                "stalls": self.stalls, "drained": drained}


def _rec_time(e) -> int:
    return e.ts_recv or e.ts_event


def _decode_or_none(frame):
    try:
        return proto.decode(frame)
    except proto.DecodeError:
        return None


def main(argv=None) -> int:
    from nodes import config as _config
    p = argparse.ArgumentParser(prog="python -m tools.replay", description=__doc__.strip().splitlines()[0])
    p.add_argument("file")
    p.add_argument("--speed", choices=sorted(SPEEDS), default="max",
                   help="1 = recorded pace, 10 = ten times faster, max = as fast as possible")
    p.add_argument("--topics", nargs="+", default=[], metavar="PREFIX", help="only these topic prefixes")
    p.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    p.add_argument("--wait-for", nargs="+", default=[], metavar="NODE",
                   help="wait for these nodes' heartbeats (and their subscriptions) before replaying")
    p.add_argument("--subscribers", type=int, default=None,
                   help="subscribers that must cover the replayed topics first (0: do not wait)")
    p.add_argument("--wait-timeout", type=float, default=10.0)
    p.add_argument("--stall-timeout", type=float, default=10.0)
    p.add_argument("--keep-ts-recv", action="store_true", help="publish the recorded ts_recv")
    a = p.parse_args(argv)
    try:
        cfg = _config.load(a.conf)
    except _config.ConfigError as e:
        print(f"replay: config error: {e}", file=sys.stderr)
        return 2
    for n in a.wait_for:
        if n not in _config.NODES:
            print(f"replay: --wait-for: unknown node {n!r} (known: {', '.join(_config.NODES)})", file=sys.stderr)
            return 2
    try:
        events, meta = load_events(a.file, a.topics)
    except (OSError, proto.DecodeError) as e:
        print(f"replay: cannot read {a.file}: {e}", file=sys.stderr)
        return 2
    gaps = [m for m in meta if m.get("type") == "_gap"]
    lags = [m for m in meta if m.get("type") == "_lag" and m.get("dropped")]
    if gaps or lags:
        print(f"replay: note: the recording is incomplete: {len(gaps)} bus gap line(s) "
              f"({sum(g.get('missing', 0) for g in gaps)} events missing), {sum(m['dropped'] for m in lags)} "
              f"events dropped by the store", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = zmq.Context()
    r = Replayer(cfg.mesh, events, context=ctx, speed=SPEEDS[a.speed], keep_ts_recv=a.keep_ts_recv,
                 wait_for=a.wait_for, subscribers=a.subscribers, wait_timeout=a.wait_timeout,
                 stall_timeout=a.stall_timeout, stop=stop)
    try:
        out = r.run()
    except ReplayError as e:
        print(f"replay: {e} ({r.published} of {len(events)} events published)", file=sys.stderr)
        return 1
    finally:
        ctx.term()
    print(f"replay: {out['published']} events from {a.file} in {out['seconds']} s "
          f"({out['rate']} ev/s, speed {a.speed}, {out['stalls']} stalls)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
