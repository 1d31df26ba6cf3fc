"""Lockstep: wait until the rest of the mesh has digested an event before publishing the next.

For deterministic offline runs (``nodes.offline``, every node a thread over inproc): the source
publishes one event, then asks every node that answers requests for its ``Query("status")``
counters until two rounds in a row are identical (nothing received or published in between):
the event and everything it caused (a strategy's order, execution's fill, risk's position update)
has been handled everywhere, because a node answers a request only between handlers and, on
inproc, an event published before the question is visible to the receiver when the question is.
Over tcp/ipc the sockets are separate streams and this is only "usually" true.

Runs in the source thread; its request sockets are made there, and closed by ``close()`` once
that thread has ended.
"""
import time

from nodes.client import RequestTimeout
from nodes.config import NODES
from proto import Query

PROBE_MS = 150          # a node that does not answer this fast at the start is not in the mesh
ASK_MS = 100            # one try; a node busy in a handler (a request chain) is asked again


class Barrier:
    def __init__(self, node):
        self.node = node
        self.clients = None
        self.rounds = 0
        self.waits = 0
        self.timeouts = 0

    def _setup(self, stopping):
        from nodes.client import RequestClient
        node = self.node
        self.clients = []
        skipped = []
        named = tuple(getattr(node.conf, "lockstep_nodes", ()) or ())
        for name in named or NODES:
            if name == node.instance or stopping():
                continue
            c = RequestClient.for_node(node.mesh, name, timeout_ms=PROBE_MS, source=f"{node.instance}-lockstep",
                                       context=node._ctx)
            if named:               # known members: wait for them however busy the machine is
                self.clients.append((name, c))
                continue
            try:
                c.request(Query("status"))
                self.clients.append((name, c))
            except RequestTimeout:
                c.close()
                skipped.append(name)
        node.log.info("lockstep with %s (not answering: %s)", ", ".join(n for n, _ in self.clients) or "nobody",
                      ", ".join(skipped) or "none")

    def _ask(self, c, stopping):
        while not stopping():
            try:
                cn = c.request(Query("status"), ASK_MS).data["counters"]
                return cn.get("received"), cn.get("published")
            except RequestTimeout:
                self.timeouts += 1
            except (KeyError, TypeError, AttributeError):
                return "?", time.monotonic()                     # an odd answer: never "idle"
        return None

    def wait_idle(self, stopping) -> bool:
        """Return once two consecutive rounds of counters match (False if ``stopping()``)."""
        if self.clients is None:
            self._setup(stopping)
        if not self.clients:
            return not stopping()
        self.waits += 1
        prev = None
        while not stopping():
            self.rounds += 1
            snap = [self._ask(c, stopping) for _, c in self.clients]
            if snap == prev:
                return True
            prev = snap
        return False

    def close(self):
        """In the thread that used it, or once that thread has ended."""
        for _, c in self.clients or ():
            c.close()
        self.clients = []
