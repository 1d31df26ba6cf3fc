"""The offline engine: every node of the mesh driven by one thread, on the market clock.

The nodes are the classes supervisord runs, over ZeroMQ ``inproc`` in one context; only the driver
differs. There is no loop thread per node: ``Node.start_driven`` opens a node's sockets and runs its
``setup()`` here, and the engine then repeats, in one thread:

1. **quiesce**: every node, in a fixed order, handles what its sockets hold (``Node.drive``: SUB,
   ROUTER, request replies, queued calls), again and again until a whole pass finds nothing. An
   inproc send is delivered before ``send`` returns and a non-blocking receive sees it, so once a
   pass is empty everything the last event caused (the strategy's order, execution's checks and
   fills, the store's lines) has been handled, everywhere.
2. **timers**: the earliest due timer of any node (ties: node order, then registration order)
   runs when the market clock reaches it, followed by a quiesce.
3. **the source**: the next batch of the market-data source (``batches()`` of the synthetic or
   replay source, pulled here; no source thread) sets the market clock to its exchange time and
   goes through the market-data node's normal path (``_on_batch``), then a quiesce.

Every clock a node reads (``Node.clock`` for timers, ages and windows, ``Node.now_ns`` for the
timestamps it stamps) is the market clock. With the same seed and source, two runs therefore make
the same calls in the same order and publish the same events: determinism by construction, with no
barrier and no waiting. ``speed`` > 0 paces the source against the wall clock (1: real time);
0 runs as fast as the mesh goes.
"""
import time

QUIESCE_PASSES_MAX = 100_000      # a feedback loop between nodes would spin here: fail instead


class EngineError(RuntimeError):
    pass


class MarketClock:
    """The market time of the run (ns since the epoch), advanced by the engine only."""

    def __init__(self, start_ns: int):
        self.ns = int(start_ns)

    def mono(self) -> float:
        return self.ns / 1e9

    def wall(self) -> int:
        return self.ns


class Engine:
    def __init__(self, nodes, clock: MarketClock, *, speed: float = 0.0):
        self.nodes = list(nodes)           # drive order: consumers first, the source's node last
        self.clock = clock
        self.speed = speed
        self.events = 0                    # source batches fed
        self.timers_fired = 0
        self.passes = 0
        self.started = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self):
        """Start every node in this thread, then let subscriptions settle (each socket processes
        its pending commands: subscriptions reach the publishers before the first event)."""
        import zmq
        self._poller = zmq.Poller()
        self._readers = {}                 # socket -> (node index, socket index, drain function)
        for n in self.nodes:
            n._socket_added = self._watch
            n.start_driven(self.clock.mono, self.clock.wall)
            self.started.append(n)
            self._watch(n)
        self._settle()
        self.quiesce()

    def _watch(self, n, sock=None):
        """Poll ``n``'s sockets (all of them, or one request socket it just opened)."""
        import zmq
        i = self.nodes.index(n)
        socks = [(sock, lambda s=sock, n=n: n._drain_dealer(s))] if sock is not None else [
            (n.sub, n._drain_sub), (n.rep, n._drain_rep),
            *[(d, lambda s=d, n=n: n._drain_dealer(s)) for d in n._dealers.values()]]
        for s, fn in socks:
            if s is not None and s not in self._readers:
                self._readers[s] = (i, len(self._readers), fn)
                self._poller.register(s, zmq.POLLIN)

    def _settle(self):
        import zmq
        for _ in range(3):
            for n in self.nodes:
                for s in (n.pub, n.sub, n.rep, *n._dealers.values()):
                    if s is not None:
                        s.getsockopt(zmq.EVENTS)       # processes the socket's pending commands

    def stop(self):
        """Stop the nodes in reverse order (the source first); what each one publishes on its way
        out is handled by the ones still running."""
        for n in reversed(self.started):
            try:
                self.quiesce()
            finally:
                for sock in [sk for sk in self._readers if self.nodes[self._readers[sk][0]] is n]:
                    self._poller.unregister(sock)
                    del self._readers[sock]
                n.stop_driven()
        self.started = []
        self.quiesce()

    # --- the three steps ------------------------------------------------------------------------
    def quiesce(self) -> int:
        """Until no socket of any node holds anything and no call is queued: each pass asks the
        poller once (no wait) and drains what is readable, node by node in drive order."""
        total = 0
        poll, readers, nodes = self._poller.poll, self._readers, self.nodes
        for _ in range(QUIESCE_PASSES_MAX):
            ready = poll(0)
            calls = [n for n in nodes if n._calls]
            if not ready and not calls:
                return total
            self.passes += 1
            work = sorted(readers[s] for s, _ in ready)          # drive order, then socket order
            for i, _, fn in work:
                if nodes[i].state == "RUNNING":
                    total += fn()
            for n in calls:
                total += n.run_calls()
        raise EngineError(f"the mesh did not go quiet after {QUIESCE_PASSES_MAX} passes (a loop between nodes?)")

    def next_timer(self):
        best = None
        for i, n in enumerate(self.nodes):
            if n._driven and n.state == "RUNNING":
                d = n.next_due()
                if d is not None and (best is None or (d[0], i, d[1]) < best[:3]):
                    best = (d[0], i, d[1], n)
        return best

    def run_timers(self, until_ns: int):
        """Fire every timer due up to ``until_ns`` in time order, the clock following each."""
        until = until_ns / 1e9
        while True:
            t = self.next_timer()
            if t is None or t[0] > until:
                return
            due_ns = int(t[0] * 1e9)
            if due_ns > self.clock.ns:
                self.clock.ns = due_ns
            before = self._activity()
            t[3].fire_timer()
            self.timers_fired += 1
            if self._activity() != before:      # it published, asked or queued something
                self.quiesce()

    def _activity(self) -> int:
        """What every node has sent so far (events, requests, replies) and queued (calls): a timer
        that changed none of it left nothing to handle."""
        n = 0
        for node in self.nodes:
            c = node.counters
            n += c["published"] + c["out_requests"] + c["requests"] + len(node._calls)
        return n

    def feed(self, node, ts_ns: int, batch):
        """One source batch at market time ``ts_ns``: timers due before it first."""
        if ts_ns > self.clock.ns:
            self.run_timers(ts_ns)
            self.clock.ns = ts_ns
        node._on_batch(batch, False)
        self.events += 1
        self.quiesce()

    def run(self, node, batches, *, end_ns: int = None, stop=None, wall_deadline: float = None,
            on_wall_second=None):
        """Feed ``batches`` (an iterable of ``(ts_ns, events)``) to ``node`` (the market-data node)
        until it ends, the market clock passes ``end_ns``, ``stop()`` says so, or the wall clock
        passes ``wall_deadline`` (monotonic). ``on_wall_second()`` is called about once a wall
        second. Returns why it ended: "end", "source", "stop" or "duration"."""
        w0 = time.monotonic()
        t0 = None
        next_report = w0 + 1.0
        for ts, batch in batches:
            if end_ns is not None and ts > end_ns:
                self.run_timers(end_ns)
                self.clock.ns = max(self.clock.ns, end_ns)
                return "end"
            if self.speed > 0 and ts:
                if t0 is None:
                    t0 = ts
                delay = w0 + (ts - t0) / 1e9 / self.speed - time.monotonic()
                if delay > 0:           # pacing a real-time run, not synchronisation
                    if stop is not None and stop(delay):
                        return "stop"
            self.feed(node, ts, batch)
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 1.0
                if on_wall_second is not None:
                    on_wall_second()
                if stop is not None and stop(0):
                    return "stop"
            if wall_deadline is not None and now >= wall_deadline:
                return "duration"
        return "source"
