"""The offline engine: every node of the mesh driven by one thread, on the market clock.

The nodes are the classes supervisord runs, over ZeroMQ ``inproc`` in one context; only the driver
differs. There is no loop thread per node: ``Node.start_driven`` opens a node's sockets and runs its
``setup()`` here, and the engine then repeats, in one thread:

1. **quiesce**: every node, in a fixed order, handles what its sockets hold (``Node.drive``: SUB,
   ROUTER, request replies, queued calls), again and again until a whole pass finds nothing. An
   inproc send is delivered before ``send`` returns and a non-blocking receive sees it, so once a
   pass is empty everything the last event caused (the strategy's order, execution's checks and
   fills, the store's lines) has been handled, everywhere. The engine follows every send (it
   wraps ``publish``, ``request`` and the replies), so it knows which sockets hold how many
   frames and drains exactly those. A poll of every socket, for what no hook saw, runs at every
   quiet point while the nodes start and stop, and at every ``POLL_EVERY``-th one in between:
   a safety net, at points that are the same in every run (nothing outside the process can send
   to an inproc socket; ``unrouted_running`` counts what it found, 0 in a correct mesh). Its
   place matters: a poll, like a receive that finds a socket empty, parks the empty pipes of a
   SUB's fair queue, and that decides the order of the next frames from several publishers.
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

import zmq

import proto

Node_decode = proto.decode                 # the runtime's default frame decoder
QUIESCE_PASSES_MAX = 100_000      # a feedback loop between nodes would spin here: fail instead
POLL_EVERY = 256                  # quiet points between two polls of every socket (a safety net)
SUB_BUDGET = 2000                 # frames drained from one SUB socket per pass


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
    def __init__(self, nodes, clock: MarketClock, *, speed: float = 0.0, direct: bool = False):
        self.nodes = list(nodes)           # drive order: the source's node first, observers last
        self.clock = clock
        self.speed = speed
        # direct: events published reach their subscribers' handlers as records, with no encoding,
        # no ZeroMQ and no decoding (the benchmark's measure of the bus's share; requests still
        # cross sockets). Not for real runs: the runtime's sequence checks see nothing.
        self.direct = direct
        self._queue = None
        self.events = 0                    # source batches fed
        self.timers_fired = 0
        self.passes = 0
        self.unrouted = 0                  # quiet checks that found something no hook routed
        self.unrouted_at_start = 0
        self.unrouted_running = 0          # found by the polls between the start and the stop: 0 in a correct mesh
        self._steady = False               # started: the poll runs at every POLL_EVERY-th quiet point
        self._due = 0.0                    # no timer of any node is due before this (market s)
        self._quiet = 0                    # quiet points reached while steady
        self.started = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self):
        """Start every node in this thread, then let subscriptions settle (each socket processes
        its pending commands: subscriptions reach the publishers before the first event)."""
        self._poller = zmq.Poller()
        self._readers = {}                 # socket -> (node index, socket index, drain function)
        self._index = {n.instance: i for i, n in enumerate(self.nodes)}
        self._sub_dirty = [0] * len(self.nodes)        # frames routed to each node's SUB, not drained
        self._mask = 0                     # bit i: node i's SUB or ROUTER was sent something
        self._calls = [n._calls for n in self.nodes]
        self._rep_dirty = [False] * len(self.nodes)
        self._dealers_dirty = False
        self._routes = {}                  # (publisher index, topic) -> subscriber indices
        self._route_bits = {}              # (publisher index, topic) -> their bits in _mask
        cache = self._decoded = {}

        def shared_decode(frame, _decode=proto.decode, _get=cache.get):
            env = _get(frame)
            if env is None:
                env = cache[frame] = _decode(frame)
            return env
        for i, n in enumerate(self.nodes):
            n._socket_added = self._watch
            if n.frame_decoder is Node_decode:
                # every subscriber of an event gets the same frame: decode it once (envelopes and
                # messages are immutable records; the cache is emptied after each quiesce)
                n.frame_decoder = shared_decode
            n.start_driven(self.clock.mono, self.clock.wall)
            self.started.append(n)
            self._watch(n)
            self._hook(i, n)
        self._settle()
        self._routes.clear()               # routes cached while nodes were starting missed some
        self._route_bits.clear()
        self._calls = [n._calls for n in self.nodes]
        for n in self.nodes:
            self._hook_timers(n)
        self._due = self._min_due()
        self._quiet = 0
        self.quiesce()
        self.unrouted_at_start = self.unrouted
        self._steady = True
        # what exists now lives for the whole run: keep the collector off it, and let it run
        # less often (a backtest allocates millions of short-lived records, almost no cycles)
        import gc
        gc.collect()
        gc.freeze()
        self._gc_threshold = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)

    def _hook(self, i, n):
        """Follow what ``n`` sends, so a quiesce drains exactly the sockets that received it: a
        publish reaches the SUB sockets of the nodes subscribed to its topic, a request the
        target's ROUTER, a reply the requesters' DEALERs. (inproc delivers before send returns.)"""
        publish, request, send_reply = n.publish, n.request, n._send_reply
        routes, sub_dirty, nodes = self._routes, self._sub_dirty, self.nodes
        if n.pub is not None:
            # the publish socket's send without pyzmq's Python layer (frames are bytes, no
            # tracking, no routing id): 0.19 us a send instead of 0.70
            n._send = zmq.backend.Socket.send.__get__(n.pub)

        if self.direct:
            import collections
            from proto.codec import Envelope
            from proto.jsonl import decode_for_store
            if self._queue is None:
                self._queue = collections.deque()
            q = self._queue
            seqs = {}
            enc = proto.Encoder(n.instance)

            def direct_publish(topic, msg, ts_event=0, ts_recv=0):
                if not (ts_event and ts_recv):
                    now = n.now_ns()
                    ts_event, ts_recv = ts_event or now, ts_recv or now
                seq = seqs[topic] = seqs.get(topic, 0) + 1
                r = routes.get((i, topic))
                if r is None:
                    r = self._route(i, topic)
                env = Envelope(topic, 0, n.instance, seq, ts_event, ts_recv, msg)
                for j in r:
                    if nodes[j].frame_decoder is decode_for_store:     # the store keeps a line
                        q.append((j, decode_for_store(enc.encode(topic, msg, ts_event, ts_recv))))
                    else:
                        q.append((j, env))
                n.counters["published"] += 1
            n.publish, n.request, n._send_reply = direct_publish, self._routed_request(n, request), \
                self._routed_reply(send_reply)
            return

        bits = self._route_bits
        eng = self

        def routed_publish(topic, msg, ts_event=0, ts_recv=0):
            publish(topic, msg, ts_event, ts_recv)
            r = routes.get((i, topic))
            if r is None:
                r = self._route(i, topic)
            for j in r:
                sub_dirty[j] += 1
            eng._mask |= bits[(i, topic)]

        n.publish, n.request, n._send_reply = routed_publish, self._routed_request(n, request), \
            self._routed_reply(send_reply)

    def _route(self, i, topic) -> tuple:
        """The nodes (indices) whose SUB sockets take ``topic`` from node ``i`` (cached)."""
        r = self._routes[(i, topic)] = tuple(
            j for j, m in enumerate(self.nodes) if j != i and m.sub is not None
            and any(topic.startswith(p) for p in m.subscriptions))
        self._route_bits[(i, topic)] = sum(1 << j for j in r)
        return r

    def _routed_request(self, n, request):
        index, rep_dirty = self._index, self._rep_dirty

        def routed_request(node, msg, on_reply, on_timeout=None, timeout_s=None):
            mid = request(node, msg, on_reply, on_timeout, timeout_s)
            j = index.get(node)
            if j is not None:
                rep_dirty[j] = True
                self._mask |= 1 << j
            return mid
        return routed_request

    def _routed_reply(self, send_reply):
        def routed_reply(head, msg_id, reply):
            send_reply(head, msg_id, reply)
            self._dealers_dirty = True
        return routed_reply

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
        if self._steady:                   # what the run's polls found that no hook routed
            self.unrouted_running = self.unrouted - self.unrouted_at_start
        self._steady = False               # every quiesce from here on polls
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
        import gc
        if getattr(self, "_gc_threshold", None):
            gc.set_threshold(*self._gc_threshold)
            gc.unfreeze()

    # --- the three steps ------------------------------------------------------------------------
    def quiesce(self) -> int:
        """Until no socket of any node holds anything and no call is queued. Each pass drains,
        node by node in drive order, the frames something sent (``_hook``): exactly as many as
        were routed to each SUB socket. When none is left, a poll of every socket (once every
        ``POLL_EVERY`` quiet points while running, at each while starting or stopping) confirms
        the mesh is quiet and drains anything a hook did not see, counted in ``unrouted``."""
        total = 0
        nodes, sub_dirty, rep_dirty, calls = self.nodes, self._sub_dirty, self._rep_dirty, self._calls
        nn = len(nodes)
        q = self._queue
        for _ in range(QUIESCE_PASSES_MAX):
            work = 0
            if q:                               # direct mode: records handed to handlers
                while q:
                    j, env = q.popleft()
                    if nodes[j].state == "RUNNING":
                        nodes[j].dispatch(env)
                    work += 1
            # the nodes in drive order: every one when a call is queued somewhere (rare offline),
            # else only those whose bit is set, the bits re-read after each node (what a node
            # sends to one after it is handled in this same pass, as in the full scan)
            full = any(calls)
            i = -1
            while True:
                if full:
                    i += 1
                    if i == nn:
                        break
                else:
                    m = self._mask >> (i + 1)
                    if not m:
                        break
                    i += (m & -m).bit_length()
                self._mask &= ~(1 << i)
                n = nodes[i]
                k = sub_dirty[i]
                if k:
                    if n.state == "RUNNING":
                        take = k if k < SUB_BUDGET else SUB_BUDGET
                        sub_dirty[i] = k - take         # the rest next pass
                        if k > take:
                            self._mask |= 1 << i
                        work += n._drain_sub(take) + 1
                    else:
                        sub_dirty[i] = 0
                if rep_dirty[i]:
                    rep_dirty[i] = False
                    if n.state == "RUNNING":
                        work += n._drain_rep() + 1
                if calls[i]:
                    work += n.run_calls()
            if self._dealers_dirty:
                self._dealers_dirty = False
                for n in nodes:
                    if n.state == "RUNNING":
                        for d in list(n._dealers.values()):
                            work += n._drain_dealer(d)
            if work:
                total += work
                self.passes += 1
                continue
            if self._steady:
                self._quiet += 1
                if self._quiet % POLL_EVERY:
                    self._decoded.clear()
                    return total
            ready = self._poller.poll(0)
            if not ready:
                self._decoded.clear()
                return total
            self.unrouted += 1
            for i, _, fn in sorted(self._readers[s] for s, _ in ready):   # drive order, then socket order
                if nodes[i].state == "RUNNING":
                    total += fn()
        raise EngineError(f"the mesh did not go quiet after {QUIESCE_PASSES_MAX} passes (a loop between nodes?)")

    def next_timer(self):
        best = None
        for i, n in enumerate(self.nodes):
            if n._driven and n.state == "RUNNING":
                d = n.next_due()
                if d is not None and (best is None or (d[0], i, d[1]) < best[:3]):
                    best = (d[0], i, d[1], n)
        return best

    def _min_due(self) -> float:
        """The earliest timer of any node (market seconds), inf if none."""
        return min((n._timers[0][0] for n in self.nodes if n._timers), default=float("inf"))

    def _hook_timers(self, n):
        """Keep ``_due`` (the earliest timer of all) as low as any timer ``n`` schedules."""
        schedule = n._schedule

        def scheduled(delay, period, fn):
            schedule(delay, period, fn)
            d = n._timers[0][0]
            if d < self._due:
                self._due = d
        n._schedule = scheduled

    def run_timers(self, until_ns: int):
        """Fire every timer due up to ``until_ns`` in time order, the clock following each."""
        until = until_ns / 1e9
        while self._due <= until:               # the common case: nothing due yet, one comparison
            t = self.next_timer()
            if t is None or t[0] > until:
                return
            due_ns = int(t[0] * 1e9)
            if due_ns > self.clock.ns:
                self.clock.ns = due_ns
            t[3].fire_timer()
            self.timers_fired += 1
            self._due = self._min_due()         # fire_timer re-armed or dropped the one it ran
            if self._sent():                    # it published, asked or queued something
                self.quiesce()

    def _sent(self) -> bool:
        return (any(self._sub_dirty) or any(self._rep_dirty) or self._dealers_dirty or bool(self._queue)
                or any(n._calls for n in self.nodes))

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
