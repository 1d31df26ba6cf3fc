"""The node runtime every node stands on.

A ``Node`` binds a PUB socket and a ROUTER (request/reply) socket, connects one SUB socket to every
other publisher of the mesh, and runs one loop thread that polls them plus a wake pipe (the control
channel: ``stop()`` and ``call_soon()`` from other threads). Sockets are made, used and closed in
that thread. The same code runs on tcp, ipc and inproc: only the endpoints, derived from
``MeshConfig``, differ.

Per (publisher, topic) sequence numbers are checked on every received event: a jump is a *gap*
(counted, logged, passed to ``on_gap``), a drop back to 1 is a publisher restart. Malformed frames
are counted and dropped. A handler exception is counted and logged; it never kills the loop. Every
request gets a reply: ``Reply(ok, code, reason, data)``.

Lifecycle (a transition table, like supervisor's states): STARTING -> RUNNING -> STOPPING ->
STOPPED, and STARTING/RUNNING -> FAILED.
"""
import errno
import fcntl
import heapq
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections import deque

import zmq

import proto
from proto import Code, DecodeError, Heartbeat, Query, Reply, topics

from . import log as _log
from .config import MeshConfig, NODES


class NodeState:
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


_TRANSITIONS = {
    NodeState.STARTING: {NodeState.RUNNING, NodeState.FAILED, NodeState.STOPPING},
    NodeState.RUNNING: {NodeState.STOPPING, NodeState.FAILED},
    NodeState.STOPPING: {NodeState.STOPPED, NodeState.FAILED},
    NodeState.FAILED: {NodeState.STOPPED},
    NodeState.STOPPED: set(),
}


class IllegalTransition(RuntimeError):
    pass


class NodeStartError(RuntimeError):
    """The node could not start (bind failed, setup raised, readiness timed out)."""


class Node:
    """Base class of every node. Subclasses set ``name`` and ``subscriptions`` and register
    handlers in ``__init__`` with ``self.on(MsgType, fn)`` / ``self.serve(MsgType, fn)``;
    ``setup()``/``teardown()`` run in the loop thread."""

    name = "node"
    subscriptions: tuple = ()       # topic prefixes to receive
    publishers: tuple = NODES       # whose PUB sockets to connect to (self excluded)
    bind_pub = True
    bind_rep = True
    # frame -> Envelope for the SUB socket (raises proto.DecodeError); the store swaps in
    # proto.jsonl.decode_for_store, which keeps market data as its store line
    frame_decoder = staticmethod(proto.decode)

    def __init__(self, mesh: MeshConfig, conf=None, *, context: zmq.Context = None,
                 secrets: dict = None, instance: str = None):
        self.mesh = mesh
        self.conf = conf
        self.secrets = secrets or {}
        self.instance = instance or self.name
        self.log = _log.get(self.instance)
        self._ctx = context
        self._own_ctx = context is None
        self.state = NodeState.STARTING
        self.counters = {"published": 0, "received": 0, "malformed": 0, "gaps": 0,
                         "gap_events": 0, "joined_late": 0, "restarts_seen": 0, "requests": 0,
                         "request_errors": 0, "handler_errors": 0, "unhandled": 0,
                         "out_requests": 0, "out_replies": 0, "out_timeouts": 0, "out_unsent": 0}
        self.bus_gaps: dict = {}        # publisher -> missing events
        self._handlers: dict = {}
        self._any_handler = None
        self._servers: dict = {Query: self._serve_query}
        self.queries: dict = {"status": lambda arg: self.status(), "ping": lambda arg: arg}
        self._seqs: dict = {}
        self._timers: list = []
        self._timer_ids = itertools.count()
        self._delays: dict = {}         # timer id -> delay, for timers registered before the start
        self._calls: deque = deque()
        self._ready = threading.Event()
        self._stopping = False
        self._thread = None
        self._error = None
        self._started_ns = 0
        self._wake_r = self._wake_w = None
        self._lock_fds = []
        self.pub = self.sub = self.rep = None
        self._auth_holds = 0
        self._dealers: dict = {}        # node -> DEALER socket of asynchronous requests (loop thread)
        self._pending: dict = {}        # msg_id -> (on_reply, on_timeout, node)
        self._req_enc = None
        self._driven = False
        self._socket_added = None       # the offline engine's hook: poll a request socket opened later

    # the node's clocks: ``clock()`` (monotonic seconds) for timers, timeouts and every age a node
    # measures; ``now_ns()`` (wall-clock ns) for the timestamps it stamps. The offline driver
    # replaces both with the market clock, so a backtest runs on market time, deterministically.
    clock = staticmethod(time.monotonic)
    now_ns = staticmethod(time.time_ns)

    # --- registration ---------------------------------------------------------------------------
    def on(self, msg_type, fn):
        """Call ``fn(env)`` for every received event whose body is a ``msg_type``."""
        self._handlers[msg_type] = fn

    def on_any(self, fn):
        """Call ``fn(env)`` for events with no specific handler (store, tap-like nodes)."""
        self._any_handler = fn

    def serve(self, msg_type, fn):
        """Answer requests whose body is a ``msg_type``: ``fn(env)`` returns a Reply (or data)."""
        self._servers[msg_type] = fn

    def every(self, seconds: float, fn, first: float = None):
        """Run ``fn()`` in the loop thread every ``seconds`` (first after ``first`` seconds)."""
        self._schedule(seconds if first is None else first, seconds, fn)

    def after(self, seconds: float, fn):
        """Run ``fn()`` once in the loop thread after ``seconds``."""
        self._schedule(seconds, 0, fn)

    def _schedule(self, delay: float, period: float, fn):
        tid = next(self._timer_ids)
        if self.state == NodeState.STARTING:
            self._delays[tid] = delay           # a driver may move it to its own clock at start
        heapq.heappush(self._timers, (self.clock() + delay, tid, period, fn))

    def request(self, node: str, msg, on_reply, on_timeout=None, timeout_s: float = None) -> int:
        """Send ``msg`` to ``node``'s request socket without waiting (loop thread only).

        ``on_reply(reply)`` runs in the loop thread when the Reply with this request's ``msg_id``
        arrives; ``on_timeout(reason)`` when none came within ``timeout_s`` (default
        ``mesh.request_timeout_ms``), or at once when the request could not be sent (no connected
        peer: the DEALER socket has IMMEDIATE set, so nothing is queued for a server that is not
        there and delivered late). A reply after the timeout is dropped. Returns the msg_id."""
        sock = self._dealers.get(node)
        if sock is None:
            sock = self._open_dealer(node)
        mid = self._req_enc.next_id()
        frame = self._req_enc.encode("req", msg, msg_id=mid)
        self.counters["out_requests"] += 1
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as e:         # not a timeout: nothing left the node (counted apart)
            self.counters["out_unsent"] += 1
            why = f"{node} is not connected" if e.errno == zmq.EAGAIN else f"send to {node} failed: {e}"
            if on_timeout is not None:
                self.call_soon(on_timeout, why)
            return mid
        self._pending[mid] = (on_reply, on_timeout, node)
        timeout_s = self.mesh.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        self.after(timeout_s, lambda: self._request_expired(mid, timeout_s))
        return mid

    def _open_dealer(self, node):
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 10000)
        s.setsockopt(zmq.IMMEDIATE, 1)     # never queue for a server that is not connected
        self._secure(s, server=False, server_node=node)
        s.connect(self.mesh.endpoint(node, "rep"))
        self._dealers[node] = s
        self._poller.register(s, zmq.POLLIN)
        if self._socket_added is not None:
            self._socket_added(self, s)
        if self._req_enc is None:
            self._req_enc = proto.Encoder(self.instance)
        return s

    def connect_requests(self, *nodes):
        """Open the request sockets to ``nodes`` now (setup), so they are connected by the time the
        first request goes out."""
        for n in nodes:
            if n not in self._dealers:
                self._open_dealer(n)

    def _request_expired(self, mid, timeout_s):
        p = self._pending.pop(mid, None)
        if p is None:
            return
        self.counters["out_timeouts"] += 1
        if p[1] is not None:
            p[1](f"no reply from {p[2]} within {timeout_s * 1000:.0f} ms")

    def _drain_dealer(self, sock, budget: int = 500) -> int:
        n = 0
        for _ in range(budget):
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            try:
                env = proto.decode(raw)
            except DecodeError:
                self.counters["malformed"] += 1
                continue
            p = self._pending.pop(env.msg_id, None)
            if p is None or type(env.msg) is not Reply:
                continue                # a reply after its timeout: dropped
            self.counters["out_replies"] += 1
            try:
                p[0](env.msg)
            except Exception:  # noqa: BLE001
                self.counters["handler_errors"] += 1
                self.log.exception("reply handler for a request to %s failed", p[2])
        return n

    def call_soon(self, fn, *args):
        """Thread-safe: run ``fn(*args)`` in the loop thread (e.g. from a feed thread)."""
        self._calls.append((fn, args))
        self._wake()

    # --- hooks ----------------------------------------------------------------------------------
    def setup(self):
        """Loop thread, sockets bound, before readiness is reported."""

    def teardown(self):
        """Loop thread, before sockets close."""

    def extra_counters(self) -> dict:
        """Node-specific counters for the heartbeat (str -> int)."""
        return {}

    def on_gap(self, source: str, topic: str, missing: int):
        """Called when a sequence gap is detected on (source, topic)."""

    def on_joined_late(self, source: str, topic: str, missed: int):
        """The first event seen on (source, topic) has sequence ``missed + 1``: the publisher sent
        ``missed`` events before this subscriber was connected. Default: treated like a gap."""
        self.on_gap(source, topic, missed)

    # --- lifecycle ------------------------------------------------------------------------------
    def _set_state(self, new):
        if new not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.instance}: {self.state} -> {new}")
        self.log.info("state %s -> %s", self.state, new)
        self.state = new

    def start(self, timeout: float = 10.0):
        """Start the loop thread; return once sockets are bound and ``setup()`` ran."""
        if self._thread is not None:
            raise RuntimeError(f"{self.instance} already started")
        if self._own_ctx:
            self._ctx = zmq.Context()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name=f"node-{self.instance}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise NodeStartError(f"{self.instance}: not ready within {timeout} s")
        if self._error is not None:
            self._thread.join(2)
            self._cleanup_process_resources()
            raise NodeStartError(f"{self.instance}: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 2.0):
        """Ask the loop to stop and wait for it (sockets closed, PUB tail flushed)."""
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.log.error("loop did not stop within %.1f s", timeout)
        self._cleanup_process_resources()

    def _cleanup_process_resources(self):
        if self._own_ctx and self._ctx is not None and not (self._thread and self._thread.is_alive()):
            self._ctx.term()
            self._ctx = None
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self):
        fd = self._wake_w
        if fd is not None:
            try:
                os.write(fd, b"x")
            except (BlockingIOError, OSError):
                pass   # pipe full: the loop is already awake

    # --- the loop ---------------------------------------------------------------------------------
    def _run(self):
        try:
            self._open()
            self._started_ns = time.time_ns()
            self.setup()
            self._set_state(NodeState.RUNNING)
            self.every(self.mesh.heartbeat_s, self._heartbeat, first=0)
            self._ready.set()
            self._loop()
            self._set_state(NodeState.STOPPING)
        except BaseException as e:  # noqa: BLE001 - report any start/loop failure, then close
            self._error = e
            if self.state != NodeState.STARTING:
                self.log.error("failed: %s: %s", type(e).__name__, e,
                               exc_info=not isinstance(e, (NodeStartError, zmq.ZMQError)))
            elif not isinstance(e, (NodeStartError, zmq.ZMQError)):
                # start() raises NodeStartError for this; keep the traceback of an unexpected error
                self.log.debug("start failed", exc_info=True)
            if self.state in (NodeState.STARTING, NodeState.RUNNING):
                self._set_state(NodeState.FAILED)
            self._ready.set()
        finally:
            try:
                self.teardown()
            except Exception:  # noqa: BLE001
                self.log.exception("teardown failed")
            if self.pub is not None and self.state != NodeState.FAILED:
                self._publish_heartbeat(NodeState.STOPPED)
            self._close()
            if self.state == NodeState.STOPPING:
                self._set_state(NodeState.STOPPED)
            elif self.state == NodeState.FAILED:
                self._set_state(NodeState.STOPPED)
            self.log.info("stopped")

    # --- driven: one external thread runs many nodes (the offline engine, nodes/engine.py) --------
    def start_driven(self, clock, now_ns):
        """Open the sockets and run ``setup()`` in the calling thread, which from now on runs
        this node through ``drive()`` and ``due()``/``fire_timer()``; timers and timestamps follow
        ``clock``/``now_ns`` (market time). No loop thread is started."""
        if self._thread is not None:
            raise RuntimeError(f"{self.instance} already started")
        self.clock, self.now_ns = clock, now_ns
        now = clock()
        # timers registered before the start were due on the monotonic clock: move them to this
        # one, each the delay it was given after now (not the wall time that passed meanwhile)
        self._timers = [(now + self._delays.get(tid, 0.0), tid, iv, fn) for _due, tid, iv, fn in self._timers]
        heapq.heapify(self._timers)
        if self._own_ctx:
            self._ctx = zmq.Context()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._driven = True
        try:
            self._open()
            self._started_ns = now_ns()
            self.setup()
        except BaseException as e:
            self._error = e
            self._close()
            self._cleanup_process_resources()
            if isinstance(e, (NodeStartError, zmq.ZMQError)):
                raise NodeStartError(f"{self.instance}: {e}") from e
            raise
        self._set_state(NodeState.RUNNING)
        self.every(self.mesh.heartbeat_s, self._heartbeat, first=0)
        self._ready.set()
        return self

    def drive(self) -> int:
        """Handle everything readable now (SUB, ROUTER, request sockets) and the queued calls;
        the number of messages and calls handled (0: this node is idle)."""
        n = 0
        if self.sub is not None:
            n += self._drain_sub()
        if self.rep is not None:
            n += self._drain_rep()
        for sock in list(self._dealers.values()):
            n += self._drain_dealer(sock)
        return n + self.run_calls()

    def run_calls(self) -> int:
        """Run the calls queued so far (``call_soon``), not the ones they queue."""
        n = len(self._calls)
        for _ in range(n):
            self._run_one_call()
        return n

    def _run_one_call(self):
        fn, args = self._calls.popleft()
        try:
            fn(*args)
        except Exception:  # noqa: BLE001
            self.counters["handler_errors"] += 1
            self.log.exception("call_soon %s failed", getattr(fn, "__name__", fn))

    def next_due(self):
        """(due, timer id) of the next timer, or None."""
        t = self._timers
        return (t[0][0], t[0][1]) if t else None

    def fire_timer(self):
        """Run the next timer (the driver calls this when the market clock reached it)."""
        due, tid, interval, fn = heapq.heappop(self._timers)
        if interval:
            heapq.heappush(self._timers, (due + interval, tid, interval, fn))
        try:
            fn()
        except Exception:  # noqa: BLE001
            self.counters["handler_errors"] += 1
            self.log.exception("timer %s failed", getattr(fn, "__name__", fn))

    def stop_driven(self):
        """teardown(), the last heartbeat, sockets closed (the driving thread)."""
        if self.state not in (NodeState.RUNNING, NodeState.FAILED):
            return
        self._set_state(NodeState.STOPPING)
        try:
            self.teardown()
        except Exception:  # noqa: BLE001
            self.log.exception("teardown failed")
        if self.pub is not None:
            self._publish_heartbeat(NodeState.STOPPED)
        self._close()
        self._set_state(NodeState.STOPPED)
        self._cleanup_process_resources()
        self.log.info("stopped")

    def _open(self):
        ctx, m = self._ctx, self.mesh
        if m.transport == "ipc":
            os.makedirs(m.ipc_path(), mode=0o700, exist_ok=True)
        if self.bind_pub:
            self.pub = ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.SNDHWM, m.hwm)
            self.pub.setsockopt(zmq.LINGER, m.pub_linger_ms)
            self._secure(self.pub, server=True)
            self._bind(self.pub, m.endpoint(self.instance, "pub", bind=True))
        if self.bind_rep:
            self.rep = ctx.socket(zmq.ROUTER)
            self.rep.setsockopt(zmq.LINGER, 0)
            self.rep.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._secure(self.rep, server=True)
            self._bind(self.rep, m.endpoint(self.instance, "rep", bind=True))
        if self.subscriptions:
            self.sub = ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.RCVHWM, m.hwm)
            self.sub.setsockopt(zmq.LINGER, 0)
            for p in self.subscriptions:
                self.sub.setsockopt(zmq.SUBSCRIBE, topics.prefix(p))
            for node in self.publishers:
                if node != self.instance and node in NODES:
                    self._secure(self.sub, server=False, server_node=node)
                    self.sub.connect(m.endpoint(node, "pub"))
        self._poller = zmq.Poller()
        for s in (self.sub, self.rep):
            if s is not None:
                self._poller.register(s, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._enc = proto.Encoder(self.instance)
        self._encode = self._enc.encode
        self._send = self.pub.send if self.pub is not None else None

    def _bind(self, sock, endpoint):
        if endpoint.startswith("ipc://"):
            path = endpoint[6:]
            if not path.startswith("@"):
                # a second bind to an ipc path silently steals it: hold a lock instead
                fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise NodeStartError(f"{endpoint} is in use by another process "
                                         f"(is a second {self.instance} running?)") from None
                self._lock_fds.append(fd)
        # a node restarted in the same process can find its tcp port still held for a moment while
        # libzmq releases it in the background: retry EADDRINUSE briefly, then say which endpoint
        deadline = time.monotonic() + (2.0 if endpoint.startswith("tcp://") else 0)
        while True:
            try:
                sock.bind(endpoint)
                break
            except zmq.ZMQError as e:
                if e.errno == errno.EADDRINUSE and time.monotonic() < deadline and not self._stopping:
                    time.sleep(0.05)
                    continue
                raise NodeStartError(f"cannot bind {endpoint}: {e}") from None
        if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
            os.chmod(endpoint[6:], 0o600)
        self.log.info("bound %s", endpoint)

    def _secure(self, sock, server: bool, server_node: str = None):
        """CurveZMQ on tcp when ``mesh.curve`` is on (see nodes.security)."""
        if self.mesh.curve and self.mesh.transport == "tcp":
            from . import security
            security.apply(sock, self.mesh, self.instance, server=server, context=self._ctx,
                           server_node=server_node)
            if server:
                self._auth_holds += 1

    def _close(self):
        for s in list(self._dealers.values()) + [self.sub, self.rep]:
            if s is not None:
                s.close(linger=0)
        self._dealers.clear()
        if self.pub is not None:
            if self.mesh.transport == "inproc":
                # release the name at once so a node restarted in this process can bind it; inproc
                # messages already sit in the subscribers' pipes, so nothing published is lost
                try:
                    self.pub.unbind(self.mesh.endpoint(self.instance, "pub"))
                except zmq.ZMQError:
                    pass
            self.pub.close()   # bounded linger (mesh.pub_linger_ms): the unsent tail is flushed
        self.sub = self.rep = self.pub = None
        if self._auth_holds:
            from . import security
            for _ in range(self._auth_holds):
                security.release(self._ctx)
            self._auth_holds = 0
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []

    def _loop(self):
        poll = self._poller.poll
        sub, rep, wake = self.sub, self.rep, self._wake_r
        while not self._stopping:
            timeout = self._run_timers()
            for sock, _ in poll(timeout):
                if sock is sub:
                    self._drain_sub()
                elif sock is rep:
                    self._drain_rep()
                elif sock == wake:
                    try:
                        os.read(wake, 4096)
                    except BlockingIOError:
                        pass
                else:
                    self._drain_dealer(sock)
            # only what was queued before this point: a source that keeps the queue full (a
            # full-speed replay) must not starve the timers (heartbeats, md.status) and sockets
            for _ in range(len(self._calls)):
                if self._stopping:
                    break
                self._run_one_call()

    def _run_timers(self) -> int:
        timers = self._timers
        clock = self.clock
        now = clock()
        while timers and timers[0][0] <= now:
            due, tid, interval, fn = heapq.heappop(timers)
            if interval:
                heapq.heappush(timers, (max(due + interval, now), tid, interval, fn))
            try:
                fn()
            except Exception:  # noqa: BLE001
                self.counters["handler_errors"] += 1
                self.log.exception("timer %s failed", getattr(fn, "__name__", fn))
            now = clock()
        if not timers:
            return 1000
        return max(0, int((timers[0][0] - now) * 1000) + 1)

    def _drain_sub(self, budget: int = 2000):
        # the hot path: everything looked up once, the in-order sequence case inlined
        recv = self.sub.recv
        decode = self.frame_decoder
        counters = self.counters
        seqs = self._seqs
        handlers = self._handlers
        anyh = self._any_handler
        n = 0
        try:
            while n < budget:
                frame = recv(zmq.NOBLOCK)
                n += 1
                try:
                    env = decode(frame)
                except DecodeError as e:
                    counters["malformed"] += 1
                    if counters["malformed"] <= 10 or counters["malformed"] % 1000 == 0:
                        self.log.warning("dropped malformed frame (%d so far): %s", counters["malformed"], e)
                    continue
                key = (env[2], env[0])          # (source, topic)
                last = seqs.get(key)
                seqs[key] = env[3]
                if last is None or env[3] != last + 1:
                    self._seq_anomaly(env, last)
                h = handlers.get(type(env[6])) or anyh
                if h is None:
                    counters["unhandled"] += 1
                    continue
                try:
                    h(env)
                except Exception:  # noqa: BLE001
                    self._handler_failed(env)
        except zmq.Again:
            pass
        counters["received"] += n
        return n

    def _check_seq(self, env):
        key = (env.source, env.topic)
        last = self._seqs.get(key)
        self._seqs[key] = env.seq
        if last is None or env.seq != last + 1:
            self._seq_anomaly(env, last)

    def _seq_anomaly(self, env, last):
        seq = env.seq
        if last is None:
            if seq > 1:
                # joined late: the publisher's first seq-1 events on this topic went out before
                # this subscriber was connected. Counted apart from gaps (they are expected at a
                # start in any order) and passed to on_gap, so the store records them
                self.counters["joined_late"] += seq - 1
                try:
                    self.on_joined_late(env.source, env.topic, seq - 1)
                except Exception:  # noqa: BLE001
                    self.counters["handler_errors"] += 1
                    self.log.exception("on_gap failed")
            return
        if seq <= last:
            self.counters["restarts_seen"] += 1
            self.log.info("publisher %s restarted (topic %s seq %d after %d)", env.source, env.topic, seq, last)
            if seq == 1:
                return
            last = 0    # the restarted publisher's first seq-1 events on this topic never arrived
        missing = seq - last - 1
        self.counters["gaps"] += missing
        self.counters["gap_events"] += 1
        self.bus_gaps[env.source] = self.bus_gaps.get(env.source, 0) + missing
        if self.counters["gap_events"] <= 20 or self.counters["gap_events"] % 1000 == 0:
            self.log.warning("sequence gap from %s on %s: %d missing (seq %d after %d)",
                             env.source, env.topic, missing, seq, last)
        try:
            self.on_gap(env.source, env.topic, missing)
        except Exception:  # noqa: BLE001
            self.counters["handler_errors"] += 1
            self.log.exception("on_gap failed")

    def dispatch(self, env):
        """Run the handler for one decoded event (also used by tests and offline replays)."""
        h = self._handlers.get(type(env.msg)) or self._any_handler
        if h is None:
            self.counters["unhandled"] += 1
            return
        try:
            h(env)
        except Exception:  # noqa: BLE001
            self._handler_failed(env)

    def _handler_failed(self, env):
        self.counters["handler_errors"] += 1
        n = self.counters["handler_errors"]
        if n <= 20 or n % 1000 == 0:
            self.log.exception("handler for %s failed (%d so far)", env.msg.TAG, n)

    def _drain_rep(self, budget: int = 500) -> int:
        n = 0
        for _ in range(budget):
            try:
                frames = self.rep.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            self.counters["requests"] += 1
            if len(frames) < 2 or len(frames) > 3 or (len(frames) == 3 and frames[1] != b""):
                self.counters["malformed"] += 1
                self.counters["request_errors"] += 1
                self.log.warning("dropped request with %d frames", len(frames))
                if len(frames) >= 2:
                    self._send_reply(frames[:1] + ([b""] if len(frames) == 3 else []), 0,
                                     Reply(False, Code.BAD_REQUEST, "expected one payload frame"))
                continue
            head, payload = frames[:-1], frames[-1]
            # fresher state for the answer: events already waiting on the SUB socket are handled
            # first (not a correctness rule: nothing depends on it, requests are asynchronous)
            sub = self.sub
            if sub is not None and not self._driven and sub.get(zmq.EVENTS) & zmq.POLLIN:
                self._drain_sub()
            try:
                env = proto.decode(payload)
            except DecodeError as e:
                self.counters["malformed"] += 1
                self.counters["request_errors"] += 1
                self._send_reply(head, _salvage_msg_id(payload), Reply(False, Code.BAD_REQUEST, str(e)))
                continue
            self._send_reply(head, env.msg_id, self.handle_request(env))
        return n

    def handle_request(self, env) -> Reply:
        """Run the server for one decoded request; never raises."""
        fn = self._servers.get(type(env.msg))
        if fn is None:
            self.counters["request_errors"] += 1
            return Reply(False, Code.UNKNOWN_REQUEST, f"{self.instance} does not serve {env.msg.TAG}")
        try:
            out = fn(env)
        except Exception as e:  # noqa: BLE001
            self.counters["request_errors"] += 1
            self.counters["handler_errors"] += 1
            self.log.exception("request %s failed", env.msg.TAG)
            return Reply(False, Code.HANDLER_ERROR, f"{type(e).__name__}: {e}")
        if type(out) is Reply:
            return out
        return Reply(True, Code.OK, "", out)

    def _send_reply(self, head, msg_id, reply):
        try:
            frame = self._enc.encode("rep", reply, msg_id=msg_id)
        except proto.EncodeError as e:
            self.log.error("cannot encode reply: %s", e)
            frame = self._enc.encode("rep", Reply(False, Code.HANDLER_ERROR, f"unencodable reply: {e}"),
                                     msg_id=msg_id)
        try:
            self.rep.send_multipart(head + [frame], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY) or HWM
            self.counters["request_errors"] += 1
            self.log.warning("reply not delivered: %s", e)

    def _serve_query(self, env):
        q = env.msg
        fn = self.queries.get(q.what)
        if fn is None:
            return Reply(False, Code.UNKNOWN_REQUEST,
                         f"{self.instance} answers queries {sorted(self.queries)}, not {q.what!r}")
        return fn(q.arg)

    # --- publishing -------------------------------------------------------------------------------
    def publish(self, topic: str, msg, ts_event: int = 0, ts_recv: int = 0):
        """Encode and publish (loop thread only). Never blocks: PUB drops at its high-water mark,
        which subscribers see as a sequence gap. A time not given is the node's ``now_ns()``."""
        if not (ts_event and ts_recv):
            now = self.now_ns()
            ts_event = ts_event or now
            ts_recv = ts_recv or now
        self._send(self._encode(topic, msg, ts_event, ts_recv), zmq.NOBLOCK)
        self.counters["published"] += 1

    def status(self) -> dict:
        c = dict(self.counters)
        c.update(self.extra_counters())
        return {"node": self.instance, "state": self.state, "pid": os.getpid(),
                "uptime_s": (self.now_ns() - self._started_ns) / 1e9 if self._started_ns else 0.0,
                "counters": c, "bus_gaps": dict(self.bus_gaps)}

    def _heartbeat(self):
        self._publish_heartbeat(self.state)

    def _publish_heartbeat(self, state):
        c = dict(self.counters)
        try:
            c.update(self.extra_counters())
        except Exception:  # noqa: BLE001
            self.log.exception("extra_counters failed")
        for src, n in self.bus_gaps.items():
            c[f"bus_gaps.{src}"] = n
        c = {k: int(v) for k, v in c.items()}
        now = self.now_ns()
        hb = Heartbeat(self.instance, os.getpid(), state, self._started_ns,
                       (now - self._started_ns) / 1e9 if self._started_ns else 0.0, c, socket.gethostname())
        try:
            self.publish(topics.heartbeat(self.instance), hb)
        except zmq.ZMQError:
            pass


def _salvage_msg_id(payload) -> int:
    """The msg_id of an undecodable request when its envelope is readable, so the client can match
    the BAD_REQUEST reply to its request; 0 otherwise."""
    import msgpack
    try:
        i = payload.find(b"\x00")
        obj = msgpack.unpackb(payload[i + 1:], raw=False, ext_hook=lambda c, d: None)
        mid = obj[3]
        return mid if type(mid) is int and 0 < mid < 2**64 else 0
    except Exception:  # noqa: BLE001 - it is garbage; there is nothing to salvage
        return 0


def run_main(node_cls, argv=None, description=None, log_stream=None, build=None, prog=None) -> int:
    """The ten-line main() of every node: args, logging, config, build, start, wait, stop.
    ``log_stream``: where logs go (stdout by default; the supervisord event listener needs stderr).
    ``build(cfg, stop_event)``: make the node (default ``node_cls.from_config(cfg)``); a node that
    can end on its own (end of input) sets ``stop_event``."""
    import argparse
    from . import config as _config
    doc = (node_cls.__doc__ or f"the {node_cls.name} node").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog=prog or f"python -m nodes.{node_cls.name}", description=description or doc)
    p.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    p.add_argument("--log-level", default=None)
    args = p.parse_args(argv)
    try:
        cfg = _config.load(args.conf)
    except _config.ConfigError as e:
        print(f"{node_cls.name}: config error: {e}", file=sys.stderr)
        return 2
    _log.setup(args.log_level or cfg.mesh.log_level, stream=log_stream)
    log = _log.get(node_cls.name)
    stop = threading.Event()
    try:
        node = build(cfg, stop) if build is not None else node_cls.from_config(cfg)
    except _config.ConfigError as e:
        print(f"{node_cls.name}: config error: {e}", file=sys.stderr)
        return 2
    cpus = cfg.mesh.cpu_affinity.get(node_cls.name)
    if cpus:
        try:
            _config.pin_cpus(cpus, f"mesh.cpu_affinity.{node_cls.name}")
        except _config.ConfigError as e:
            print(f"{node_cls.name}: config error: {e}", file=sys.stderr)
            return 2
        log.info("pinned to cpus %s", cpus)
    signaled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (signaled.append(1), stop.set()))
    try:
        node.start()
    except NodeStartError as e:
        cause = e.__cause__
        expected = cause is None or isinstance(cause, (NodeStartError, zmq.ZMQError, _config.ConfigError, OSError))
        log.error("cannot start: %s", e, exc_info=None if expected else cause)
        return 1
    # what exists once the node runs (modules, kernels, config) lives as long as the process: keep
    # it out of the collector's full passes, whose pauses would otherwise grow with it
    import gc
    gc.collect()
    gc.freeze()
    try:
        while not stop.wait(0.25):
            if not node.alive:
                log.error("loop died: %s", node._error)
                return 1
        log.info("signal received, stopping" if signaled else "stopping")
    finally:
        t0 = time.monotonic()
        node.stop()
        log.info("stop took %.3f s", time.monotonic() - t0)
    return 0 if node._error is None else 1


def node_from_config(cls, cfg, **kw):
    return cls(cfg.mesh, cfg.section(cls.name), secrets=cfg.secrets, **kw)


Node.from_config = classmethod(lambda cls, cfg, **kw: node_from_config(cls, cfg, **kw))
