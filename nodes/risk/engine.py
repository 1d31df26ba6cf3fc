"""The risk node's logic, without sockets.

``RiskEngine`` owns the risk state: volatility bands per product, feed verdicts, the trading state,
the latched kill switch and the limits. It takes decoded events (``on_*``), answers kill-switch
commands (``command``) and queries (``query``, ``snapshot``), runs its periodic duties
(``on_timer``), and emits events through the ``emit(topic, msg)`` callable it is given (the node's
``publish``; a list in unit tests). It publishes a ``RiskSnapshot`` the moment anything a pre-trade
check reads changes, and every ``publish_interval_s``; execution runs the checks against it. It is
not on the per-order path. Time comes from two injectable clocks: ``clock()`` (monotonic seconds, or
market time in offline mode) for windows and timeouts, ``wall_ns()`` for timestamps.
"""
import collections
import logging
import time
from decimal import ROUND_CEILING, Decimal

from proto import Code, Reply, RiskBand, RiskSnapshot, topics

from . import state as S
from .market import ZERO, ProductMarket

log = logging.getLogger("tickmesh.risk")

REJECT_WINDOW_S = 60.0
HEARTBEAT_GONE_STATES = ("STOPPED",)        # a clean stop announces itself: not a loss


class RiskEngine:
    def __init__(self, conf, mesh, *, emit=None, clock=time.monotonic, wall_ns=time.time_ns,
                 state_file=None, log_=None):
        self.conf = conf
        self.mesh = mesh
        self.emit = emit or (lambda topic, msg: None)
        self.clock = clock
        self.wall_ns = wall_ns
        self.log = log_ or log
        bar_ns = max(1, int(round(conf.bar_interval_s * 1e9)))
        self.markets = {}
        self.limits = {}
        for p in mesh.products:
            spec = mesh.spec(p)
            if spec is None:
                self.log.warning("product %s has no spec in mesh.product_specs: its orders are refused", p)
                continue
            self.markets[p] = ProductMarket(p, spec, conf.window, conf.ewma_alpha, bar_ns, conf.atr_period)
            self.limits[p] = conf.limits(p)
        self.machine = S.TradingStateMachine(S.ACTIVE)
        self.latch = S.KillSwitchLatch()
        self.statefile = S.StateFile(state_file or mesh.state_path(conf.state_file))
        self.market_s = 0.0                      # latest exchange timestamp seen (s)
        self.rejects = collections.deque()
        self.manual_reducing = False
        self.pnl = None
        self.peak_equity = None
        self._peak_dirty = False
        self._peak_saved_mono = 0.0
        self.exec_last_hb = None                 # monotonic time of the last execution heartbeat
        self.exec_hb_state = None
        self.exec_down_reason = ""               # non-empty while execution is considered down
        self._last_periodic = -1e18
        self.epoch_ns = wall_ns()
        self.version = 0
        self._snap_key = None
        self.counters = collections.Counter()

    # --- start ----------------------------------------------------------------------------------
    def restore(self):
        """Read the state file; an unreadable one engages the kill switch (fail closed)."""
        try:
            d = self.statefile.load()
        except S.StateFileError as e:
            self.log.error("state file unreadable, engaging the kill switch: %s", e)
            self.latch.engage(f"state file unreadable: {e}", S.AUTO_STATE_FILE, self.wall_ns())
            self._apply_state("kill switch restored: state file unreadable", persist=False)
            return
        if d is None:
            self.log.info("no state file at %s: starting ACTIVE with the kill switch released",
                          self.statefile.path)
            return
        try:
            self.latch.restore(d.get("killswitch"))
            self.manual_reducing = bool(d.get("manual_reducing", False))
            self.peak_equity = S.parse_decimal(d.get("peak_equity"), "peak_equity")
        except S.StateFileError as e:
            self.log.error("state file invalid, engaging the kill switch: %s", e)
            self.latch.engage(f"state file invalid: {e}", S.AUTO_STATE_FILE, self.wall_ns())
        if self.latch.engaged:
            self.log.warning("kill switch restored ENGAGED (%s): %s", self.latch.source, self.latch.reason)
        self._apply_state("restored from the state file", persist=False)

    def persist(self):
        d = {"killswitch": self.latch.to_dict(), "manual_reducing": self.manual_reducing,
             "peak_equity": None if self.peak_equity is None else str(self.peak_equity),
             "trading_state": self.machine.state, "saved_ns": self.wall_ns()}
        try:
            self.statefile.save(d)
            self._peak_dirty = False
            self._peak_saved_mono = time.monotonic()
        except OSError as e:
            self.counters["state_write_errors"] += 1
            self.log.error("cannot write the state file %s: %s", self.statefile.path, e)

    # --- trading state and kill switch ---------------------------------------------------------
    def _auto_reducing(self):
        p = self.pnl
        if p is None:
            return None
        lim = self.conf.daily_loss_limit * Decimal(repr(self.conf.reduce_at_loss_fraction))
        if p.daily <= -lim:
            return f"daily PnL {p.daily} at or below -{lim:.2f} ({self.conf.reduce_at_loss_fraction:g} of the loss limit)"
        return None

    def _apply_state(self, reason: str, persist: bool = True):
        """Move the trading state to what the latch and the reducing conditions say."""
        if self.latch.engaged:
            want, why = S.HALTED, f"kill switch ({self.latch.source}): {self.latch.reason}"
        elif self.manual_reducing:
            want, why = S.REDUCING, "manual: reduce"
        else:
            auto = self._auto_reducing()
            want, why = (S.REDUCING, auto) if auto else (S.ACTIVE, reason)
        ev = self.machine.transition(want, why)
        if ev is None:
            return
        self.log.warning("trading state %s -> %s: %s", ev.previous, ev.state, ev.reason)
        self.counters["state_changes"] += 1
        self.emit(topics.RISK_STATE, ev)
        if persist:
            self.persist()
        self.publish_snapshot()

    def engage(self, reason: str, source: str) -> bool:
        if not self.latch.engage(reason, source, self.wall_ns()):
            self.counters["killswitch_triggers_while_engaged"] += 1
            return False
        self.counters["killswitch_engaged"] += 1
        self.log.error("KILL SWITCH ENGAGED (%s): %s", source, reason)
        self.persist()
        self.emit(topics.RISK_KILLSWITCH, self.latch.record())
        self._apply_state(reason)
        self.publish_snapshot()
        return True

    def release_blockers(self):
        """Automatic conditions that still hold (a release is refused while any does)."""
        out = []
        p = self.pnl
        if p is not None and p.daily <= -self.conf.daily_loss_limit:
            out.append(f"daily PnL {p.daily} still at or below -{self.conf.daily_loss_limit} "
                       f"(day {p.day}; resets at 00:00 UTC)")
        if self.exec_down_reason:
            out.append(f"execution is down: {self.exec_down_reason}")
        if self.conf.stale_halts:
            now = self.clock()
            for prod, m in self.markets.items():
                why = self._stale_reason(m, now)
                if why:
                    out.append(f"{prod} feed {why}")
        return out

    def release(self, reason: str):
        """Manual release. Returns (ok, message)."""
        if not self.latch.engaged:
            return True, "kill switch is not engaged"
        blockers = self.release_blockers()
        if blockers:
            self.counters["release_refused"] += 1
            return False, "cannot release: " + "; ".join(blockers)
        self.latch.release(reason or "manual release", self.wall_ns())
        # re-baseline what would otherwise re-trigger at once
        if self.pnl is not None:
            self.peak_equity = self.pnl.equity
        self.rejects.clear()
        self.counters["killswitch_released"] += 1
        self.log.warning("kill switch released: %s", reason or "manual release")
        self.persist()
        self.emit(topics.RISK_KILLSWITCH, self.latch.record())
        self._apply_state(f"kill switch released: {reason or 'manual'}")
        self.publish_snapshot()
        return True, "kill switch released"

    def command(self, cmd) -> Reply:
        a = cmd.action
        if a == "engage":
            changed = self.engage(cmd.reason or "manual", S.MANUAL)
            msg = "kill switch engaged" if changed else f"kill switch already engaged ({self.latch.source}): {self.latch.reason}"
            return Reply(True, Code.OK, f"{msg}; trading state {self.machine.state}", self.latch.record())
        if a == "release":
            ok, msg = self.release(cmd.reason)
            return Reply(ok, Code.OK if ok else Code.KILL_SWITCH, f"{msg}; trading state {self.machine.state}",
                         self.latch.record())
        if a == "status":
            st = "engaged" if self.latch.engaged else "released"
            return Reply(True, Code.OK, f"kill switch {st}; trading state {self.machine.state}", self.latch.record())
        if a in ("reduce", "resume"):
            self.manual_reducing = a == "reduce"
            self._apply_state(f"manual: {a}" + (f" ({cmd.reason})" if cmd.reason else ""))
            self.persist()
            return Reply(True, Code.OK, f"trading state {self.machine.state}", self.latch.record())
        return Reply(False, Code.BAD_REQUEST,
                     f"unknown kill switch action {a!r} (engage, release, status, reduce, resume)")

    # --- events ---------------------------------------------------------------------------------
    def on_tick(self, env):
        if env.ts_event > self.market_s * 1e9:
            self.market_s = env.ts_event / 1e9
        m = self.markets.get(env.msg.product)
        if m is None:
            return
        now = self.clock()
        if m.on_tick(env.msg, env.ts_event, now):
            self.counters["ticks"] += 1
            self._maybe_publish_band(m, now)
        else:
            self.counters["ticks_refused"] += 1

    def on_book(self, env):
        m = self.markets.get(env.msg.product)
        if m is not None:
            m.on_book(env.msg, self.clock())

    def on_status(self, env):
        m = self.markets.get(env.msg.product)
        if m is not None:
            before = m.status_state
            m.on_status(env.msg, self.clock())
            if m.status_state != before:
                self.log.info("feed %s: %s -> %s (%s)", m.product, before, m.status_state, m.status_reason)
                self.publish_snapshot()

    def on_feed_gap(self, env):
        now = self.clock()
        for p in env.msg.products:
            m = self.markets.get(p)
            if m is not None:
                m.mark_unhealthy("GAP", f"sequence gap on {env.msg.connection}: expected "
                                 f"{env.msg.expected}, got {env.msg.got}", now)
        self.publish_snapshot()

    def on_feed_stale(self, env):
        now = self.clock()
        for p in env.msg.products:
            m = self.markets.get(p)
            if m is not None:
                m.mark_unhealthy("STALE", f"{env.msg.connection} silent for {env.msg.silent_s:.1f} s", now)
        self._check_stale(now)
        self.publish_snapshot()

    def on_pnl(self, env):
        p = env.msg
        self.pnl = p
        if self.peak_equity is None or p.equity > self.peak_equity:
            self.peak_equity = p.equity
            self._peak_dirty = True
        if p.daily <= -self.conf.daily_loss_limit:
            self.engage(f"daily PnL {p.daily} reached the loss limit -{self.conf.daily_loss_limit}",
                        S.AUTO_DAILY_LOSS)
        dd = self.peak_equity - p.equity
        if dd >= self.conf.max_drawdown:
            self.engage(f"drawdown {dd} from peak equity {self.peak_equity} reached the limit "
                        f"{self.conf.max_drawdown}", S.AUTO_DRAWDOWN)
        self._apply_state("daily loss back within the reducing threshold")

    def on_order(self, env):
        """Execution's rejections: too many venue rejects in a minute engage the kill switch."""
        o = env.msg
        now = self.clock()
        if o.status == "REJECTED" and o.code == Code.VENUE_REJECT:
            w = self.rejects
            w.append(now)
            while w and w[0] <= now - REJECT_WINDOW_S:
                w.popleft()
            self.counters["venue_rejects"] += 1
            if len(w) > self.conf.max_rejects_per_min:
                self.engage(f"{len(w)} venue rejects in the last minute (max {self.conf.max_rejects_per_min}); "
                            f"last: {o.reason}", S.AUTO_ERROR_RATE)

    def on_heartbeat(self, env):
        hb = env.msg
        if hb.node != "execution":
            return
        now = self.clock()
        was_down = self.exec_down_reason or self.exec_last_hb is None
        self.exec_last_hb = now
        self.exec_hb_state = hb.state
        if hb.state == "FAILED":
            self._execution_down(f"execution heartbeat reports state FAILED (pid {hb.pid})")
            return
        if self.exec_down_reason:
            self.log.info("execution heartbeat is back (pid %s, state %s)", hb.pid, hb.state)
            self.exec_down_reason = ""
        if was_down and self.latch.engaged:
            # a (re)started execution learns that the switch is engaged and cancels its orders
            self.emit(topics.RISK_KILLSWITCH, self.latch.record())

    def on_process(self, env):
        ev = env.msg
        prog = self.conf.execution_program
        if ev.program != prog and f"{ev.group}:{ev.program}" != prog:
            return
        if ev.state in ("EXITED", "FATAL"):
            self._execution_down(f"supervisord reports {ev.group}:{ev.program} {ev.state} "
                                 f"(pid {ev.pid}, expected={ev.expected}) {ev.detail}".strip())

    def _execution_down(self, why: str):
        self.exec_down_reason = why
        self.counters["execution_down"] += 1
        self.engage(why, S.AUTO_EXECUTION_DOWN)

    # --- timers ---------------------------------------------------------------------------------
    def _stale_reason(self, m, now):
        """Why ``m``'s feed counts as stale for the kill switch, or ''."""
        timeout = self.conf.feed_status_timeout_s
        if m.unhealthy_since is not None:
            return f"{m.status_state} for {now - m.unhealthy_since:.1f} s: {m.status_reason}"
        if m.status_timed_out(now, timeout):
            return f"no md.status for {now - m.status_mono:.1f} s"
        return ""

    def _check_stale(self, now):
        if not self.conf.stale_halts:
            return
        after = self.conf.stale_halt_after_s
        timeout = self.conf.feed_status_timeout_s
        for p, m in self.markets.items():
            if not m.ever_healthy:
                continue        # never healthy (no internet at start, say): refused FEED_STALE, no latch
            since = m.unhealthy_since
            if since is None and m.status_timed_out(now, timeout):
                since = m.status_mono + timeout
            if since is not None and now - since >= after:
                self.engage(f"{p} feed stale for {now - since:.1f} s (>= {after} s): "
                            f"{self._stale_reason(m, now)}", S.AUTO_STALE_FEED)

    def on_timer(self):
        """Every ~0.25 s: automatic triggers, expiries, periodic publications."""
        now = self.clock()
        self._check_stale(now)
        if (self.exec_last_hb is not None and not self.exec_down_reason
                and self.exec_hb_state not in HEARTBEAT_GONE_STATES
                and now - self.exec_last_hb > self.conf.execution_heartbeat_timeout_s):
            self._execution_down(f"no execution heartbeat for {now - self.exec_last_hb:.1f} s "
                                 f"(timeout {self.conf.execution_heartbeat_timeout_s} s)")
        while self.rejects and self.rejects[0] <= now - REJECT_WINDOW_S:
            self.rejects.popleft()
        # a new equity peak is saved at most once a second of real time (file I/O; nothing on
        # the bus depends on it, so a market-time run writes no more often than a live one)
        if self._peak_dirty and time.monotonic() - self._peak_saved_mono >= 1.0:
            self.persist()
        if now - self._last_periodic >= self.conf.publish_interval_s:
            self._last_periodic = now
            for m in self.markets.values():
                self._publish_band(m, now)
            self.publish_snapshot(force=True)
        else:
            self.publish_snapshot()     # a feed verdict can change with time alone (md.status age)
            for m in self.markets.values():
                if m.band_dirty:
                    self._maybe_publish_band(m, now)

    # --- publications ---------------------------------------------------------------------------
    def band_record(self, m) -> RiskBand:
        lim = self.limits[m.product]
        b = m.band(lim.band_method, lim.band_k, lim.band_floor_pct, self.conf.min_history)
        sd, ew, atr = m.sigmas()
        nan0 = lambda v: 0.0 if v != v else v   # noqa: E731  (NaN: not ready -> 0 on the wire)
        return RiskBand(m.product, m.last or ZERO, m.mid or ZERO, nan0(sd), nan0(ew), nan0(atr),
                        b.low if b.ready else ZERO, b.high if b.ready else ZERO, b.method,
                        self.band_width(m, b))

    def band_width(self, m, b=None):
        """The band's half-width in price units on the tick grid (rounded up), None if not ready."""
        if b is None:
            lim = self.limits[m.product]
            b = m.band(lim.band_method, lim.band_k, lim.band_floor_pct, self.conf.min_history)
        if not b.ready:
            return None
        tick = m.spec.quote_increment
        return Decimal(b.width).quantize(tick, rounding=ROUND_CEILING)

    def _maybe_publish_band(self, m, now):
        if now - m.band_pub_mono >= self.conf.band_publish_min_interval_s:
            self._publish_band(m, now)

    def _publish_band(self, m, now):
        if m.last is None:
            return
        m.band_dirty = False
        m.band_pub_mono = now
        self.emit(topics.band(m.product), self.band_record(m))
        self.publish_snapshot()         # a band that just became ready changes what passes

    # --- the snapshot execution checks orders against ------------------------------------------
    def feed_verdict(self, m, now):
        """("", "") when orders in ``m``'s product may go, else (FEED_STALE | FEED_GAP, why)."""
        conf = self.conf
        if m.status_state is None:
            if conf.require_feed_status:
                return Code.FEED_STALE, f"no md.status for {m.product} seen yet"
            return "", ""
        if m.status_timed_out(now, conf.feed_status_timeout_s):
            return (Code.FEED_STALE, f"md.status for {m.product} is {now - m.status_mono:.1f} s old "
                    f"(> {conf.feed_status_timeout_s} s)")
        if not m.status_healthy:
            code = Code.FEED_GAP if m.status_state == "GAP" else Code.FEED_STALE
            return code, f"feed for {m.product} is {m.status_state}: {m.status_reason}"
        return "", ""

    def snapshot(self) -> RiskSnapshot:
        now = self.clock()
        products = {}
        for p, m in self.markets.items():
            lim = self.limits[p]
            b = m.band(lim.band_method, lim.band_k, lim.band_floor_pct, self.conf.min_history)
            w = self.band_width(m, b)
            code, why = self.feed_verdict(m, now)
            products[p] = {"max_position": str(lim.max_position), "max_exposure": str(lim.max_exposure),
                           "max_order_notional": str(lim.max_order_notional),
                           "max_price_band_pct": str(lim.max_price_band_pct),
                           "max_slippage_bps": str(lim.max_slippage_bps),
                           "band": "" if w is None else str(w), "band_method": b.method, "band_why": b.why,
                           "feed": code, "feed_reason": why}
        ks = self.latch
        self.version += 1
        return RiskSnapshot(self.version, self.epoch_ns, self.conf.state_max_age_ms, self.machine.state,
                            self.machine.reason, ks.engaged, ks.source or "", ks.reason or "", ks.since_ns or 0,
                            self.conf.flatten_on_halt, self.conf.max_gross_exposure, self.conf.max_orders_per_s,
                            products)

    def _snapshot_key(self):
        now = self.clock()
        return (self.machine.state, self.latch.engaged,
                tuple(self.feed_verdict(m, now)[0] for m in self.markets.values()),
                tuple(m.band(self.limits[p].band_method, self.limits[p].band_k, self.limits[p].band_floor_pct,
                             self.conf.min_history).ready for p, m in self.markets.items()))

    def publish_snapshot(self, force: bool = False):
        """Publish the snapshot if what the checks read changed (or ``force``): the trading state,
        the kill switch, a feed verdict or a band becoming ready. Band widths move with every tick;
        they travel on ``risk.band.<P>`` in between and in every periodic snapshot."""
        key = self._snapshot_key()
        if not force and key == self._snap_key:
            return
        self._snap_key = key
        self.counters["snapshots"] += 1
        self.emit(topics.RISK_SNAPSHOT, self.snapshot())

    # --- queries --------------------------------------------------------------------------------
    def query(self) -> dict:
        now = self.clock()
        feeds = {}
        bands = {}
        for p, m in self.markets.items():
            code, why = self.feed_verdict(m, now)
            feeds[p] = {"state": m.status_state or "UNKNOWN", "healthy": m.status_healthy,
                        "reason": m.status_reason, "verdict": code or "OK", "verdict_reason": why,
                        "ever_healthy": m.ever_healthy,
                        "status_age_s": None if m.status_mono is None else round(now - m.status_mono, 3),
                        "ticks": m.tick_seq, "returns": m.returns, "bars": m.bars}
            bands[p] = self.band_record(m)
        pnl = self.pnl
        return {
            "state": self.machine.state,
            "state_reason": self.machine.reason,
            "manual_reducing": self.manual_reducing,
            "killswitch": self.latch.record(),
            "snapshot_version": self.version,
            "epoch_ns": self.epoch_ns,
            "bands": bands,
            "feeds": feeds,
            "pnl": None if pnl is None else {"realized": pnl.realized, "unrealized": pnl.unrealized,
                                             "daily": pnl.daily, "equity": pnl.equity, "day": pnl.day},
            "peak_equity": self.peak_equity,
            "rejects_last_min": len(self.rejects),
            "execution": {"last_heartbeat_age_s": None if self.exec_last_hb is None
                          else round(now - self.exec_last_hb, 3),
                          "state": self.exec_hb_state, "down": self.exec_down_reason},
            "release_blockers": self.release_blockers() if self.latch.engaged else [],
            "state_file": str(self.statefile.path),
            "counters": dict(self.counters),
        }
