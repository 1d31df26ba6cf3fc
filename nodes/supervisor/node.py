"""The supervisord event listener as a node: PROCESS_STATE_* events -> ProcessEvent on ``node.process``.

It occupies the "supervisor" node slot (its own PUB and request socket, heartbeats like any node)
so the alert, risk and metrics nodes subscribe to it like to anyone else. The blocking stdin read
runs in its own thread and hands each event to the loop with ``call_soon``.
"""
import threading

from nodes.runtime import Node
from proto import topics

from . import listener


class SupervisorListener(Node):
    """supervisord event listener: process state changes onto the bus."""

    name = "supervisor"
    subscriptions = ()

    def __init__(self, mesh, conf=None, *, stdin=None, stdin_fd=None, stdout=None, on_eof=None, **kw):
        """``stdin``: a binary stream, or ``stdin_fd``: a descriptor read so that stop() can join
        the reader; ``stdout``: the binary protocol channel back to supervisord."""
        super().__init__(mesh, conf, **kw)
        if stdin is None and stdin_fd is not None:
            stdin = listener.StoppableReader(stdin_fd, lambda: self._stopping)
        self._stdin, self._stdout, self._on_eof = stdin, stdout, on_eof
        self._reader = None
        self.events = 0
        self.queries["events"] = lambda arg: self.events

    def setup(self):
        if self._stdin is not None:
            self._reader = threading.Thread(target=self._read, name="supervisor-events", daemon=True)
            self._reader.start()

    def teardown(self):
        if self._reader is not None:
            self._reader.join(1.0)      # the reader polls ``_stopping`` (StoppableReader)
            self._reader = None

    def _read(self):
        n = listener.serve(self._stdin, self._stdout, lambda ev: self.call_soon(self.emit, ev), self.log)
        self.log.info("supervisord closed the event stream after %d events", n)
        if self._on_eof is not None:
            self._on_eof()

    def emit(self, ev):
        """Loop thread: publish one ProcessEvent."""
        self.events += 1
        lvl = self.log.warning if ev.state in ("FATAL", "BACKOFF") or (ev.state == "EXITED" and not ev.expected) \
            else self.log.info
        lvl("process %s:%s %s pid=%d (%s)", ev.group, ev.program, ev.state, ev.pid, ev.detail)
        self.publish(topics.NODE_PROCESS, ev)

    def extra_counters(self) -> dict:
        return {"process_events": self.events}
