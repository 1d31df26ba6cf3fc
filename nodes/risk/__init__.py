"""The risk node: the pre-trade gate every order passes, volatility bands, trading states and a
kill switch that survives restarts.

Subscribes: ``md.tick.``, ``md.book.``, ``md.status.``, ``md.gap``, ``md.stale`` (not ``md.trade.``),
``order.``, ``fill.``, ``position.``, ``pnl``, ``node.heartbeat.execution``, ``node.process``.
Serves: ``OrderIntent`` -> ``Reply(ok=approved, code, reason, data=RiskDecision)``;
``KillSwitchCmd`` (engage | release | status | reduce | resume) -> ``Reply(data=KillSwitch)``;
``Query("risk")`` -> the full state (trading state, kill switch, positions, exposures, bands, ...).
Publishes: ``risk.decision`` (every decision, right after its reply), ``risk.state`` (on change, with the reason),
``risk.killswitch`` (on change, at start, and when execution's heartbeat (re)appears),
``risk.exposure`` and ``risk.band.<P>`` (on change and at least every ``publish_interval_s``).

The logic lives in ``engine.RiskEngine`` (no sockets); this class binds it to the runtime.
"""
import queue
import threading
import time

from proto import (Book, FeedGap, FeedStale, FeedStatus, Fill, Heartbeat, KillSwitchCmd, Order,
                   OrderIntent, PnL, Position, ProcessEvent, Reply, Tick, jsonl, topics)
from nodes.client import RequestClient, RequestError
from nodes.runtime import Node

from . import kernels
from .config import RiskConfig
from .engine import RiskEngine

__all__ = ["RiskNode", "RiskConfig"]

TIMER_S = 0.25


class RiskNode(Node):
    """Risk node: pre-trade checks, volatility bands, trading states and the kill switch."""

    name = "risk"
    # the market-data topics it handles (not md.trade: the busiest topic, which risk does not use)
    subscriptions = (topics.MD_TICK, topics.MD_BOOK, topics.MD_STATUS, topics.MD_GAP, topics.MD_STALE,
                     topics.ORDER, topics.FILL, topics.POSITION, topics.PNL,
                     topics.heartbeat("execution"), topics.NODE_PROCESS)

    def __init__(self, mesh, conf=None, **kw):
        super().__init__(mesh, conf if conf is not None else RiskConfig(), **kw)
        self.engine = RiskEngine(self.conf, mesh, emit=self._emit, log_=self.log,
                                 flatten=self._queue_flatten)
        e = self.engine
        self.on(Tick, e.on_tick)
        self.on(Book, e.on_book)
        self.on(FeedStatus, e.on_status)
        self.on(FeedGap, e.on_feed_gap)
        self.on(FeedStale, e.on_feed_stale)
        self.on(Position, e.on_position)
        self.on(PnL, e.on_pnl)
        self.on(Order, e.on_order)
        self.on(Fill, e.on_fill)
        self.on(Heartbeat, e.on_heartbeat)
        self.on(ProcessEvent, e.on_process)
        self.serve(OrderIntent, self._serve_intent)
        self.serve(KillSwitchCmd, lambda env: e.command(env.msg))
        self.queries["risk"] = lambda arg: e.query()
        self.every(TIMER_S, e.on_timer)
        self._flat_q = queue.Queue()
        self._flat_stop = threading.Event()
        self._flat_thread = None
        self.warm_ms = 0.0
        self.dropped_emits = 0
        self._deferred = None         # events of a pre-trade check, published after its reply

    # --- plumbing -------------------------------------------------------------------------------
    def _emit(self, topic, msg):
        if self.pub is None:          # not started (unit use) or already closed
            self.dropped_emits += 1
            return
        if self._deferred is not None:
            self._deferred.append((topic, msg))
            return
        self.publish(topic, msg)

    def _serve_intent(self, env):
        # the decision's events (risk.decision, risk.exposure) go out right after the reply, in
        # this loop thread before anything else is handled: the answer execution waits for is
        # not held up by publishing them (each send can cost a wake-up of the I/O thread)
        self._deferred = []
        try:
            dec = self.engine.decide(env.msg)
        finally:
            out, self._deferred = self._deferred, None
        if out:
            self.call_soon(self._publish_deferred, out)
        return Reply(dec.approved, dec.code, dec.reason, dec)

    def _publish_deferred(self, events):
        for topic, msg in events:
            self._emit(topic, msg)

    def setup(self):
        t0 = time.perf_counter()
        kernels.warm(self.conf.window, self.conf.ewma_alpha,
                     max(1, int(round(self.conf.bar_interval_s * 1e9))), self.conf.atr_period)
        self.warm_ms = (time.perf_counter() - t0) * 1e3
        self.log.info("kernels warm in %.2f ms", self.warm_ms)
        self.engine.restore()
        if self.conf.history_file:
            self._warm_from_history(self.conf.history_file)
        if self.conf.flatten_on_halt:
            self._flat_thread = threading.Thread(target=self._flatten_loop, name="risk-flatten", daemon=True)
            self._flat_thread.start()
        # tell whoever listens where we stand (execution cancels on an engaged switch)
        self._emit(topics.RISK_KILLSWITCH, self.engine.latch.record())

    def teardown(self):
        self._flat_stop.set()
        if self._flat_thread is not None:
            self._flat_thread.join(1.0)
        self.engine.persist()

    def extra_counters(self) -> dict:
        c = {f"risk.{k}": int(v) for k, v in self.engine.counters.items()}
        c["risk.killswitch"] = int(self.engine.latch.engaged)
        c["risk.pending_orders"] = len(self.engine.exposure.pending)
        return c

    # --- history warm-up (the batch kernels) ----------------------------------------------------
    def _warm_from_history(self, path):
        """Prime the bands from a store file's ticks with one batch call per product."""
        import numpy as np
        per = {}
        try:
            for env in jsonl.read(path):
                m = env.msg
                if type(m) is Tick and m.product in self.engine.markets and m.price > 0:
                    per.setdefault(m.product, ([], []))
                    per[m.product][0].append(float(m.price))
                    per[m.product][1].append(env.ts_event)
        except (OSError, ValueError) as e:
            self.log.warning("history file %s not used: %s", path, e)
            return
        for p, (px, ts) in per.items():
            mk = self.engine.markets[p]
            n = len(px)
            o = [np.empty(n) for _ in range(3)]
            kernels.batch(mk.st, np.asarray(px, dtype=np.float64), np.asarray(ts, dtype=np.int64), *o)
            self.log.info("bands of %s warmed from %d historical ticks", p, n)

    # --- flatten on halt: exits sent to execution from a helper thread --------------------------
    def _queue_flatten(self, intents):
        if self._flat_thread is None:
            self.log.error("flatten requested but the flatten thread is not running")
            return
        for i in intents:
            self._flat_q.put(i)

    def _flatten_loop(self):
        # its own request socket (one client per thread); execution will ask us to check each exit,
        # which the loop thread answers while this thread waits
        client = RequestClient.for_node(self.mesh, "execution", timeout_ms=self.conf.flatten_timeout_ms,
                                        source="risk", context=self._ctx)
        try:
            while not self._flat_stop.is_set():
                try:
                    intent = self._flat_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    r = client.request(intent)
                    self.call_soon(self._flatten_done, intent, r.ok, r.code, r.reason)
                except RequestError as e:
                    self.call_soon(self._flatten_done, intent, False, e.code, e.reason)
        finally:
            client.close()

    def _flatten_done(self, intent, ok, code, reason):
        self.engine.counters["flatten_sent" if ok else "flatten_failed"] += 1
        (self.log.info if ok else self.log.error)("flatten %s %s %s: %s %s", intent.side, intent.size,
                                                   intent.product, code, reason)
