"""The risk node: owns the risk state (volatility bands, feed verdicts, trading state, limits and a
kill switch that survives restarts) and publishes it; execution checks every order against it.

Subscribes: ``md.tick.``, ``md.status.``, ``md.gap``, ``md.stale`` (not ``md.trade.`` nor ``md.book.``),
``order.rejected`` (venue-reject rate), ``pnl`` (daily loss, drawdown), ``node.heartbeat.execution``,
``node.process``.
Serves (ctl and queries only; it is not on the per-order path): ``KillSwitchCmd`` (engage | release |
status | reduce | resume) -> ``Reply(data=KillSwitch)``; ``Query("risk")`` -> the full state;
``Query("snapshot")`` -> the current ``RiskSnapshot``; ``Query("bands")``.
Publishes: ``risk.snapshot`` (on every change of what a check reads, and every ``publish_interval_s``),
``risk.state`` (on change, with the reason), ``risk.killswitch`` (on change, at start, and when
execution's heartbeat (re)appears), ``risk.band.<P>`` (on change, rate-limited, and periodically).

The logic lives in ``engine.RiskEngine`` (no sockets); this class binds it to the runtime.
"""
import time

from proto import (FeedGap, FeedStale, FeedStatus, Heartbeat, KillSwitchCmd, Order, PnL, ProcessEvent,
                   Tick, jsonl, topics)
from nodes.runtime import Node

from . import kernels
from .config import RiskConfig
from .engine import RiskEngine

__all__ = ["RiskNode", "RiskConfig"]

TIMER_S = 0.25      # the duty timer; slower with a slower publish interval (offline: market time)


class RiskNode(Node):
    """Risk node: volatility bands, feed verdicts, trading states, limits and the kill switch."""

    name = "risk"
    # the market-data topics it handles (not md.trade nor md.book: the busiest, which risk does not use)
    subscriptions = (topics.MD_TICK, topics.MD_STATUS, topics.MD_GAP, topics.MD_STALE,
                     topics.ORDER_REJECTED, topics.PNL, topics.heartbeat("execution"), topics.NODE_PROCESS)

    def __init__(self, mesh, conf=None, **kw):
        super().__init__(mesh, conf if conf is not None else RiskConfig(), **kw)
        self.engine = RiskEngine(self.conf, mesh, emit=self._emit, log_=self.log,
                                 clock=lambda: self.clock(), wall_ns=lambda: self.now_ns())
        e = self.engine
        self.on(Tick, e.on_tick)
        self.on(FeedStatus, e.on_status)
        self.on(FeedGap, e.on_feed_gap)
        self.on(FeedStale, e.on_feed_stale)
        self.on(PnL, e.on_pnl)
        self.on(Order, e.on_order)
        self.on(Heartbeat, e.on_heartbeat)
        self.on(ProcessEvent, e.on_process)
        self.serve(KillSwitchCmd, lambda env: e.command(env.msg))
        self.queries["risk"] = lambda arg: e.query()
        self.queries["snapshot"] = lambda arg: e.snapshot()
        self.queries["bands"] = lambda arg: {p: e.band_record(m) for p, m in e.markets.items()
                                             if not arg or p == arg}
        self.every(max(TIMER_S, self.conf.publish_interval_s / 4), e.on_timer)
        self.warm_ms = 0.0
        self.dropped_emits = 0

    # --- plumbing -------------------------------------------------------------------------------
    def _emit(self, topic, msg):
        if self.pub is None:          # not started (unit use) or already closed
            self.dropped_emits += 1
            return
        self.publish(topic, msg)

    def setup(self):
        t0 = time.perf_counter()
        kernels.warm(self.conf.window, self.conf.ewma_alpha,
                     max(1, int(round(self.conf.bar_interval_s * 1e9))), self.conf.atr_period)
        self.warm_ms = (time.perf_counter() - t0) * 1e3
        self.log.info("kernels warm in %.2f ms", self.warm_ms)
        self.engine.epoch_ns = self.now_ns()    # this process's epoch (market time when driven offline)
        self.engine.restore()
        if self.conf.history_file:
            self._warm_from_history(self.conf.history_file)
        # tell whoever listens where we stand (execution cancels on an engaged switch); late
        # joiners get the next periodic snapshot, or ask with Query("snapshot")
        self._emit(topics.RISK_KILLSWITCH, self.engine.latch.record())
        self.engine.publish_snapshot(force=True)

    def teardown(self):
        self.engine.persist()

    def extra_counters(self) -> dict:
        c = {f"risk.{k}": int(v) for k, v in self.engine.counters.items()}
        c["risk.killswitch"] = int(self.engine.latch.engaged)
        c["risk.snapshot_version"] = self.engine.version
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
