"""The risk node's decision logic, without sockets.

``RiskEngine`` takes decoded events (``on_*``), answers pre-trade checks (``decide``), kill-switch
commands (``command``) and the state query (``query``), runs its periodic duties (``on_timer``),
and emits events through the ``emit(topic, msg)`` callable it is given (the node's ``publish``; a
list in unit tests). Time comes from two injectable clocks: ``clock()`` (monotonic seconds) for
windows and timeouts, ``wall_ns()`` for timestamps.
"""
import collections
import logging
import time
from decimal import ROUND_DOWN, Decimal

from proto import Code, OrderIntent, Reply, RiskBand, RiskDecision, RiskExposure, topics

from . import checks
from . import state as S
from .market import BUY, SELL, ZERO, Exposure, ProductMarket

log = logging.getLogger("tickmesh.risk")

REJECT_WINDOW_S = 60.0
HEARTBEAT_GONE_STATES = ("STOPPED",)        # a clean stop announces itself: not a loss


class RiskEngine:
    def __init__(self, conf, mesh, *, emit=None, clock=time.monotonic, wall_ns=time.time_ns,
                 state_file=None, log_=None, flatten=None):
        self.conf = conf
        self.mesh = mesh
        self.emit = emit or (lambda topic, msg: None)
        self.clock = clock
        self.wall_ns = wall_ns
        self.log = log_ or log
        self.flatten = flatten                   # callable(list[OrderIntent]) or None
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
        self.exposure = Exposure()
        self.machine = S.TradingStateMachine(S.ACTIVE)
        self.latch = S.KillSwitchLatch()
        self.statefile = S.StateFile(state_file or mesh.state_path(conf.state_file))
        self.approvals = collections.deque()
        # the order-rate window runs on the wall clock, or on market time (latest exchange
        # timestamp seen) when conf.rate_clock = "market", as offline replays use
        self.market_s = 0.0
        self.rate_clock = (lambda: self.market_s) if getattr(conf, "rate_clock", "wall") == "market" else self.clock
        self.rejects = collections.deque()
        self.manual_reducing = False
        self.pnl = None
        self.peak_equity = None
        self._peak_dirty = False
        self._peak_saved_mono = 0.0
        self.exec_last_hb = None                 # monotonic time of the last execution heartbeat
        self.exec_hb_state = None
        self.exec_down_reason = ""               # non-empty while execution is considered down
        self._exposure_key = None
        self._last_periodic = -1e18
        self._denial_log = [0.0, 0, 0]           # window start, lines in window, suppressed
        self._flatten_sent = {}                  # product -> monotonic time of the last exit sent
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
            self._peak_saved_mono = self.clock()
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
        if ev.state == S.HALTED and self.conf.flatten_on_halt:
            self._flatten()

    def engage(self, reason: str, source: str) -> bool:
        if not self.latch.engage(reason, source, self.wall_ns()):
            self.counters["killswitch_triggers_while_engaged"] += 1
            return False
        self.counters["killswitch_engaged"] += 1
        self.log.error("KILL SWITCH ENGAGED (%s): %s", source, reason)
        self.persist()
        self.emit(topics.RISK_KILLSWITCH, self.latch.record())
        self._apply_state(reason)
        self._publish_exposure(force=True)
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
        self._publish_exposure(force=True)
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

    FLATTEN_RETRY_S = 5.0

    def _flatten(self, retry: bool = False):
        """Reduce-only market exits for open positions not already covered by pending exits. On
        entering HALTED every position; from the timer (``retry``) those whose last exit is older
        than FLATTEN_RETRY_S (a rejected exit, or positions learnt after a restart while halted)."""
        if self.flatten is None:
            return
        intents = []
        now, now_ns = self.clock(), self.wall_ns()
        for p, q in sorted(self.exposure.positions.items()):
            spec = self.mesh.spec(p)
            if not q or spec is None or p not in self.markets:
                if q and p not in self.markets and not retry:
                    self.log.error("cannot flatten %s %s: not a product of this mesh", q, p)
                continue
            covering = self.exposure.pend_sell.get(p, ZERO) if q > 0 else self.exposure.pend_buy.get(p, ZERO)
            if covering >= abs(q):
                continue
            if retry and now - self._flatten_sent.get(p, -1e18) < self.FLATTEN_RETRY_S:
                continue
            size = (abs(q) - covering).quantize(spec.base_increment, rounding=ROUND_DOWN)
            if size < spec.base_min_size:
                continue
            self._flatten_sent[p] = now
            intents.append(OrderIntent(p, SELL if q > 0 else BUY, "MARKET", size=size, tif="IOC",
                                       reduce_only=True, client_order_id=f"risk-flatten-{p}-{now_ns}",
                                       strategy="risk.flatten"))
        if intents:
            self.counters["flatten_orders"] += len(intents)
            self.log.warning("flatten on halt: %s", ", ".join(f"{i.side} {i.size} {i.product}" for i in intents))
            self.flatten(intents)

    # --- the pre-trade check -------------------------------------------------------------------
    def decide(self, intent) -> RiskDecision:
        t0 = time.perf_counter_ns()
        now = self.clock()
        code, reason, ctx = checks.run(self, intent, now)
        approved = code == Code.OK
        if approved:
            self.approvals.append(self.rate_clock())
            size = ctx.size()
            if size is not None:
                self.exposure.add_pending(intent.client_order_id, intent.product, intent.side, size, now,
                                          estimated=ctx._size_est)
        # compute_ns: the decision itself; logging and publishing come after
        dec = RiskDecision(intent.client_order_id, intent.product, approved, code, reason,
                           time.perf_counter_ns() - t0)
        self.counters["decisions"] += 1
        self.counters["approved" if approved else "denied"] += 1
        if not approved:
            self.counters[f"denied.{code}"] += 1
            self._log_denial(intent, code, reason, now)
        self.emit(topics.RISK_DECISION, dec)
        if approved:
            self._publish_exposure()
        return dec

    def _log_denial(self, intent, code, reason, now):
        w = self._denial_log
        if now - w[0] >= 1.0:
            if w[2]:
                self.log.info("%d more denials not logged", w[2])
            w[0], w[1], w[2] = now, 0, 0
        if w[1] < 10:
            w[1] += 1
            self.log.info("denied %s %s %s %s: %s %s", intent.client_order_id or "-", intent.side,
                          intent.size if intent.size is not None else intent.quote_size, intent.product,
                          code, reason)
        else:
            w[2] += 1

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

    def on_feed_gap(self, env):
        now = self.clock()
        for p in env.msg.products:
            m = self.markets.get(p)
            if m is not None:
                m.mark_unhealthy("GAP", f"sequence gap on {env.msg.connection}: expected "
                                 f"{env.msg.expected}, got {env.msg.got}", now)

    def on_feed_stale(self, env):
        now = self.clock()
        for p in env.msg.products:
            m = self.markets.get(p)
            if m is not None:
                m.mark_unhealthy("STALE", f"{env.msg.connection} silent for {env.msg.silent_s:.1f} s", now)
        self._check_stale(now)

    def on_position(self, env):
        self.exposure.on_position(env.msg)
        self._publish_exposure()

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
        o = env.msg
        now = self.clock()
        m = self.markets.get(o.product)
        if self.exposure.on_order(o, now, m.mid if m is not None else None):
            self._publish_exposure()
        if o.status == "REJECTED" and o.code == Code.VENUE_REJECT:
            w = self.rejects
            w.append(now)
            while w and w[0] <= now - REJECT_WINDOW_S:
                w.popleft()
            self.counters["venue_rejects"] += 1
            if len(w) > self.conf.max_rejects_per_min:
                self.engage(f"{len(w)} venue rejects in the last minute (max {self.conf.max_rejects_per_min}); "
                            f"last: {o.reason}", S.AUTO_ERROR_RATE)

    def on_fill(self, env):
        self.counters["fills"] += 1
        if self.exposure.on_fill(env.msg):
            self._publish_exposure()

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
        if self.conf.flatten_on_halt and self.machine.state == S.HALTED:
            self._flatten(retry=True)
        if self.exposure.expire(now, self.conf.pending_ttl_s):
            self.counters["pending_expired"] += 1
            self._publish_exposure()
        while self.rejects and self.rejects[0] <= now - REJECT_WINDOW_S:
            self.rejects.popleft()
        if self._peak_dirty and now - self._peak_saved_mono >= 1.0:
            self.persist()
        if now - self._last_periodic >= self.conf.publish_interval_s:
            self._last_periodic = now
            for m in self.markets.values():
                self._publish_band(m, now)
            self._publish_exposure(force=True)
        else:
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
                        b.low if b.ready else ZERO, b.high if b.ready else ZERO, b.method)

    def _maybe_publish_band(self, m, now):
        if now - m.band_pub_mono >= self.conf.band_publish_min_interval_s:
            self._publish_band(m, now)

    def _publish_band(self, m, now):
        if m.last is None:
            return
        m.band_dirty = False
        m.band_pub_mono = now
        self.emit(topics.band(m.product), self.band_record(m))

    def exposure_record(self) -> RiskExposure:
        ex = self.exposure
        positions, exposures = {}, {}
        gross = net = ZERO
        for p in sorted(ex.products() | set(self.markets)):
            q = ex.qty(p)
            mark = checks._mark(self, p)
            positions[p] = q
            e = ex.worst_abs(p) * mark if mark is not None else ZERO
            exposures[p] = e
            gross += e
            if mark is not None:
                net += q * mark
        return RiskExposure(gross, net, positions, exposures, self.machine.state, self.latch.engaged)

    def _publish_exposure(self, force: bool = False):
        key = (self.exposure.version, self.machine.state, self.latch.engaged)
        if not force and key == self._exposure_key:
            return
        self._exposure_key = key
        self.emit(topics.RISK_EXPOSURE, self.exposure_record())

    # --- queries --------------------------------------------------------------------------------
    def query(self) -> dict:
        now = self.clock()
        ex = self.exposure
        feeds = {}
        bands = {}
        for p, m in self.markets.items():
            feeds[p] = {"state": m.status_state or "UNKNOWN", "healthy": m.status_healthy,
                        "reason": m.status_reason,
                        "status_age_s": None if m.status_mono is None else round(now - m.status_mono, 3),
                        "ticks": m.tick_seq, "returns": m.returns, "bars": m.bars}
            bands[p] = self.band_record(m)
        pnl = self.pnl
        return {
            "state": self.machine.state,
            "state_reason": self.machine.reason,
            "manual_reducing": self.manual_reducing,
            "killswitch": self.latch.record(),
            "exposure": self.exposure_record(),
            "pending": {k: {"product": p.product, "side": p.side, "remaining": p.remaining,
                            "seen_by_execution": p.seen, "age_s": round(now - p.created, 3)}
                        for k, p in ex.pending.items()},
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
