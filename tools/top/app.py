"""The sockets and the terminal of ``tickmesh top``: a passive SUB socket on every publisher (the
tap's endpoints and CURVE keys), request clients (``nodes.client.RequestClient``, the Lazy Pirate
that ctl uses) run in a small thread pool so that a node that does not answer never freezes the
screen, and one loop that polls the SUB socket, the keyboard and a wake pipe.

No polling storm: the screen is driven by bus events (heartbeats, orders, fills, positions, PnL,
risk, feed status, alerts). Queries are sent only at start (a late joiner has missed the state
events), when a node comes back (a new process, or heartbeats after silence: what it published
meanwhile never reached us) and every ``model.REFRESH_S`` (10 s) to the nodes that are up, to
repair what a PUB/SUB drop may have left stale. That is about one request per node per 10 s from an
operator screen: nothing for the nodes. The screen is redrawn at most 4 times a second when events
flood in, and once a second otherwise (ages move).
"""
import os
import queue
import signal
import sys
import termios
import time
import tty
from concurrent.futures import ThreadPoolExecutor

import zmq

import proto
from proto import KillSwitchCmd, Query

from . import view
from .keys import Keys, split_keys
from .model import EXPECTED, ScreenModel

SUB_TOPICS = ("node.", "risk.", "order.", "position.", "pnl", "alert.", "md.status.", "md.gap", "md.stale")
REDRAW_MIN_S = 0.25
REDRAW_IDLE_S = 1.0


class Mesh:
    """The bus and the request side, for one config. ``drain()`` feeds the model; ``submit()``
    sends a request in a worker thread whose outcome ``results()`` hands back in the caller's
    thread."""

    def __init__(self, cfg, context=None):
        from tools import tap
        self.cfg = cfg
        self.mesh = cfg.mesh
        self.ctx = context or zmq.Context()
        self._own_ctx = context is None
        self.nodes = [n for n in EXPECTED]
        self.endpoints = [self.mesh.endpoint(n, "pub") for n in self.nodes]
        self.curve = tap.curve_from_config(cfg.path, self.nodes)
        self.stats = tap.Stats()
        self.sub = None
        # one worker per node: a node's queries run in order and stop at its first timeout
        self.pool = ThreadPoolExecutor(max_workers=len(self.nodes), thread_name_prefix="top-query")
        # the kill switch's commands have a worker of their own: never queued behind queries to a
        # node that is down (each waits out its deadline)
        self.cmd_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="top-cmd")
        self.done = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.timeout_ms = self.mesh.request_timeout_ms
        self.pending = 0

    def open(self):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        for t in SUB_TOPICS:
            s.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
        for ep in self.endpoints:
            keys = self.curve.get(ep)
            if keys is not None:
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = keys
            s.connect(ep)
        self.sub = s
        return self

    def close(self):
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None
        for pool in (self.pool, self.cmd_pool):
            pool.shutdown(wait=True, cancel_futures=True)   # each request ends by its deadline
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        if self._own_ctx:
            self.ctx.term()

    # --- events ---------------------------------------------------------------------------------
    def drain(self, model: ScreenModel, budget: int = 5000) -> int:
        n = 0
        for _ in range(budget):
            try:
                frame = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = time.time_ns()
            try:
                env = proto.decode(frame)
            except proto.DecodeError:
                model.malformed += 1
                continue
            model.bus_missing += self.stats.add(env, now)
            model.apply(env, now)
            n += 1
        return n

    # --- requests -------------------------------------------------------------------------------
    def submit(self, node: str, msg, tag):
        """Send ``msg`` to ``node`` in a worker; ``results()`` later yields (tag, node, msg, reply or error)."""
        self.pending += 1
        self.cmd_pool.submit(self._requests, node, [msg], tag)

    def ask(self, node: str, whats):
        """``Query(what)`` for each of ``whats``, in order, in one worker; after a timeout the rest
        are not sent (the node is down: each would wait out its own deadline) and fail the same."""
        self.pending += len(whats)
        self.pool.submit(self._requests, node, [Query(w) for w in whats], "query")

    def _requests(self, node, msgs, tag):
        from nodes.client import RequestClient, RequestTimeout
        # with CURVE, top speaks with ctl's key pair: it is an operator tool with ctl's powers
        kw = {"key_name": "ctl"} if self.mesh.curve and self.mesh.transport == "tcp" else {}
        c = None
        out = None
        try:
            for msg in msgs:
                if not isinstance(out, RequestTimeout):
                    try:
                        if c is None:
                            c = RequestClient.for_node(self.mesh, node, source="top", context=self.ctx,
                                                       timeout_ms=self.timeout_ms, **kw)
                        out = c.request(msg)
                    except Exception as e:  # noqa: BLE001 - a timeout, config or socket error is shown, never lost
                        out = e
                self.done.put((tag, node, msg, out))
                try:
                    os.write(self.wake_w, b"x")
                except OSError:
                    pass
        finally:
            if c is not None:
                c.close()

    def results(self):
        try:
            while True:
                os.read(self.wake_r, 4096)
        except OSError:
            pass
        while True:
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                return
            self.pending -= 1
            yield item

    def ask_due(self, model: ScreenModel, now_ns: int):
        per = {}
        for node, what in model.due_queries(now_ns):
            per.setdefault(node, []).append(what)
        for node, whats in per.items():
            self.ask(node, whats)


def apply_result(model: ScreenModel, item, now_ns: int) -> bool:
    """One finished request into the model: query data, or the kill switch command's outcome."""
    tag, node, msg, out = item
    from nodes.client import RequestError
    if tag == "query":
        if isinstance(out, proto.Reply) and out.ok:
            return model.apply_reply(node, msg.what, out.data, now_ns)
        return False
    # a KillSwitchCmd: say what happened, in words
    if isinstance(out, RequestError):
        model.message = f"kill switch {msg.action}: risk did not answer ({out.code}: {out.reason})"
    elif isinstance(out, Exception):
        model.message = f"kill switch {msg.action}: {type(out).__name__}: {out}"
    else:
        if isinstance(out.data, proto.KillSwitch):
            model.killswitch = (out.data, now_ns)
            model.risk_heard_ns = now_ns
        verdict = "done" if out.ok else f"REFUSED ({out.code})"
        model.message = f"kill switch {msg.action} {verdict}: {out.reason or msg.reason}"
    return True


def collect_once(mesh: Mesh, model: ScreenModel, listen_s: float) -> None:
    """Listen for ``listen_s`` and ask every node its queries; return when both are done."""
    mesh.open()
    # a node that is down answers nothing: give up on it about as fast as `ctl status` does
    mesh.timeout_ms = min(mesh.timeout_ms, max(500, int(1500 * model.heartbeat_s)))
    mesh.ask_due(model, time.time_ns())
    poller = zmq.Poller()
    poller.register(mesh.sub, zmq.POLLIN)
    poller.register(mesh.wake_r, zmq.POLLIN)
    deadline = time.monotonic() + listen_s
    hard = deadline + 2 * mesh.timeout_ms / 1000 + 1
    while True:
        now = time.monotonic()
        if (now >= deadline and mesh.pending == 0) or now >= hard:
            break
        for sock, _ in poller.poll(100):
            if sock is mesh.sub:
                mesh.drain(model)
        for item in mesh.results():
            apply_result(model, item, time.time_ns())


class Screen:
    """The interactive loop: terminal in cbreak mode, full-screen rich Live, keys -> actions."""

    def __init__(self, mesh: Mesh, model: ScreenModel, *, stdin_fd: int = None, console=None):
        self.mesh = mesh
        self.model = model
        self.keys = Keys()
        self.filter = ""
        self.stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self.console = console
        self.stopping = False

    def stop(self, *_):
        self.stopping = True

    def on_action(self, action):
        if action[0] == "quit":
            self.stopping = True
        elif action[0] == "filter":
            self.filter = action[1]
        elif action[0] in ("engage", "release"):
            self.model.message = f"kill switch {action[0]}: asking risk ..."
            self.mesh.submit("risk", KillSwitchCmd(action[0], f"{action[1]} (tickmesh top)"), "killswitch")

    def run(self) -> int:
        from rich.console import Console
        from rich.live import Live
        console = self.console or Console(highlight=False, emoji=False)
        mesh, model = self.mesh, self.model
        mesh.open()
        poller = zmq.Poller()
        poller.register(mesh.sub, zmq.POLLIN)
        poller.register(mesh.wake_r, zmq.POLLIN)
        poller.register(self.stdin_fd, zmq.POLLIN)
        old = termios.tcgetattr(self.stdin_fd)
        tty.setcbreak(self.stdin_fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.stop)
        last_draw = 0.0
        dirty = True
        try:
            with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                      redirect_stderr=False) as live:
                while not self.stopping:
                    now_ns = time.time_ns()
                    mesh.ask_due(model, now_ns)
                    mono = time.monotonic()
                    due = last_draw + (REDRAW_MIN_S if dirty else REDRAW_IDLE_S)
                    if mono >= due:
                        model.note_down(now_ns)
                        snap = model.snapshot(now_ns, self.filter)
                        live.update(view.render_screen(snap, console, self.keys.prompt, self.keys.note),
                                    refresh=True)
                        last_draw, dirty = mono, False
                        continue
                    for sock, _ in poller.poll(max(1, int((due - mono) * 1000))):
                        if sock is mesh.sub:
                            if mesh.drain(model):
                                dirty = True
                        elif sock == mesh.wake_r:
                            for item in mesh.results():
                                dirty |= apply_result(model, item, time.time_ns())
                        elif sock == self.stdin_fd:
                            data = os.read(self.stdin_fd, 1024)
                            if not data:            # the terminal went away
                                self.stopping = True
                                break
                            for k in split_keys(data.decode("utf-8", "replace")):
                                action = self.keys.feed(k)
                                if action is not None:
                                    self.on_action(action)
                            dirty = True
                            last_draw = 0.0         # a key is echoed at once
        finally:
            termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, old)
        return 0
