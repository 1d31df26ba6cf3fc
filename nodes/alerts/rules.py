"""Alert rules and dedupe, without sockets or HTTP.

``AlertRules.on_event(env, now_ns)`` and ``AlertRules.check(now_ns)`` turn bus events and the passage
of time into ``Alert`` fire/resolve actions; ``Deduper`` decides which of them are actually sent:

* a key that is already firing is not sent again (dedupe);
* a key that fired less than ``cooldown_s`` ago is held back (pending) and sent when the cooldown
  ends if it is still firing; a pending alert that resolves before that is dropped silently;
* a resolve is sent only for a firing that was sent, and is never delayed;
* one-shot events (a feed gap, a stale feed) have no resolve: the cooldown alone dedupes them.
"""
from decimal import Decimal
from typing import NamedTuple, Optional

import proto

CRITICAL, WARNING, INFO = "critical", "warning", "info"


class Alert(NamedTuple):
    key: str            # dedupe key, e.g. "node.down.risk"
    kind: str           # topic suffix: alert.<kind> (killswitch, pnl, drawdown, node, feed, process)
    severity: str
    title: str
    text: str
    resolved: bool = False
    oneshot: bool = False


class Deduper:
    def __init__(self, cooldown_s: float):
        self.cooldown_ns = int(cooldown_s * 1e9)
        self._st: dict = {}     # key -> {"firing", "sent", "last_ns", "pending"}
        self.counts = {"sent": 0, "deduped": 0, "held": 0, "dropped": 0}

    def _state(self, key):
        st = self._st.get(key)
        if st is None:
            st = self._st[key] = {"firing": False, "sent": False, "last_ns": None, "pending": None}
        return st

    def _cooling(self, st, now_ns) -> bool:
        return st["last_ns"] is not None and now_ns - st["last_ns"] < self.cooldown_ns

    def offer(self, alert: Alert, now_ns: int) -> Optional[Alert]:
        """The alert to send now, or None (deduped, held for the cooldown, or nothing to resolve)."""
        st = self._state(alert.key)
        if alert.oneshot:
            if self._cooling(st, now_ns):
                self.counts["deduped"] += 1
                return None
            st["last_ns"] = now_ns
            self.counts["sent"] += 1
            return alert
        if alert.resolved:
            if not st["firing"]:
                return None
            st["firing"] = False
            if not st["sent"]:
                st["pending"] = None
                self.counts["dropped"] += 1
                return None
            st["sent"] = False
            self.counts["sent"] += 1
            return alert
        if st["firing"]:
            self.counts["deduped"] += 1
            return None
        st["firing"] = True
        if self._cooling(st, now_ns):
            st["pending"] = alert
            st["sent"] = False
            self.counts["held"] += 1
            return None
        st["sent"] = True
        st["last_ns"] = now_ns
        self.counts["sent"] += 1
        return alert

    def due(self, now_ns: int) -> list:
        """Held alerts whose cooldown has ended and that are still firing."""
        out = []
        for st in self._st.values():
            a = st["pending"]
            if a is not None and st["firing"] and not self._cooling(st, now_ns):
                st["pending"] = None
                st["sent"] = True
                st["last_ns"] = now_ns
                self.counts["sent"] += 1
                out.append(a)
        return out

    def firing(self) -> list:
        return sorted(k for k, st in self._st.items() if st["firing"])


class AlertRules:
    """Which situations are alerts. ``conf`` is an ``AlertsConfig``."""

    def __init__(self, conf):
        self.conf = conf
        self._node_timeout_ns = int(conf.node_timeout_s * 1e9)
        self._last_seen: dict = {}      # node -> ns of its last heartbeat
        self._stopped: set = set()      # nodes that reported a clean STOPPED
        self._down: set = set()
        self._peak_equity: Optional[Decimal] = None
        self._killswitch: Optional[bool] = None
        self._feed_bad_since: dict = {}     # product -> ns since when it is unhealthy
        self._feed_was_healthy: set = set()
        self._handlers = {proto.KillSwitch: self._killswitch_ev, proto.PnL: self._pnl,
                          proto.Heartbeat: self._heartbeat, proto.FeedStatus: self._feed_status,
                          proto.FeedGap: self._feed_gap, proto.FeedStale: self._feed_stale,
                          proto.ProcessEvent: self._process}

    def types(self):
        return tuple(self._handlers)

    def on_event(self, env, now_ns: int) -> list:
        h = self._handlers.get(type(env.msg))
        return h(env.msg, now_ns) if h is not None else []

    def check(self, now_ns: int) -> list:
        """Time-based rules: heartbeats that stopped arriving."""
        out = []
        for node, seen in self._last_seen.items():
            if node in self._stopped or node in self._down:
                continue
            if now_ns - seen > self._node_timeout_ns:
                self._down.add(node)
                out.append(Alert(f"node.down.{node}", "node", CRITICAL, f"Node {node} is down",
                                 f"No heartbeat from {node} for {(now_ns - seen) / 1e9:.1f} s "
                                 f"(timeout {self.conf.node_timeout_s:g} s)."))
        return out

    # --- rules --------------------------------------------------------------------------------------
    def _killswitch_ev(self, m, now_ns):
        prev, self._killswitch = self._killswitch, m.engaged
        if m.engaged and prev is not True:
            return [Alert("killswitch", "killswitch", CRITICAL, "Kill switch ENGAGED",
                          f"Trading halted by {m.source or 'unknown'}: {m.reason or 'no reason given'}")]
        if not m.engaged and prev is True:
            return [Alert("killswitch", "killswitch", CRITICAL, "Kill switch released",
                          f"Trading may resume ({m.source or 'unknown'}): {m.reason or 'no reason given'}",
                          resolved=True)]
        return []

    def _pnl(self, m, now_ns):
        out = []
        limit = -self.conf.daily_loss_threshold
        if m.daily < limit:
            out.append(Alert("pnl.daily_loss", "pnl", CRITICAL, "Daily loss limit breached",
                             f"Daily PnL {m.daily} is below -{self.conf.daily_loss_threshold} ({m.day})."))
        else:
            out.append(Alert("pnl.daily_loss", "pnl", CRITICAL, "Daily PnL back within limit",
                             f"Daily PnL {m.daily} ({m.day}).", resolved=True))
        if self._peak_equity is None or m.equity > self._peak_equity:
            self._peak_equity = m.equity
        peak = self._peak_equity
        floor = peak * (1 - self.conf.drawdown_fraction)
        if peak > 0 and m.equity < floor:
            dd = (peak - m.equity) / peak
            out.append(Alert("pnl.drawdown", "drawdown", CRITICAL, "Equity drawdown",
                             f"Equity {m.equity} is {dd:.2%} below its peak {peak} "
                             f"(limit {self.conf.drawdown_fraction:.2%})."))
        else:
            out.append(Alert("pnl.drawdown", "drawdown", CRITICAL, "Equity drawdown recovered",
                             f"Equity {m.equity}, peak {peak}.", resolved=True))
        return out

    def _heartbeat(self, m, now_ns):
        node = m.node
        out = []
        if m.state in ("STOPPED", "STOPPING"):
            if node not in self._stopped:
                self._stopped.add(node)
                if self.conf.alert_on_clean_stop:
                    out.append(Alert(f"node.stopped.{node}", "node", WARNING, f"Node {node} stopped",
                                     f"{node} (pid {m.pid} on {m.host}) reported a clean stop."))
            self._last_seen[node] = now_ns
            return out
        self._last_seen[node] = now_ns
        if node in self._stopped:
            self._stopped.discard(node)
            if self.conf.alert_on_clean_stop:
                out.append(Alert(f"node.stopped.{node}", "node", WARNING, f"Node {node} is back",
                                 f"{node} is {m.state} (pid {m.pid}).", resolved=True))
        if node in self._down:
            self._down.discard(node)
            out.append(Alert(f"node.down.{node}", "node", CRITICAL, f"Node {node} is up again",
                             f"{node} is {m.state} again (pid {m.pid} on {m.host}, uptime {m.uptime_s:.1f} s)."
                             , resolved=True))
        return out

    def _feed_status(self, m, now_ns):
        if not self.conf.feed_alerts:
            return []
        key = f"feed.{m.product}"
        if not m.healthy:
            # a feed that has not been healthy yet since this node started (connecting, first
            # snapshot) gets feed_grace_s before it pages anyone
            since = self._feed_bad_since.setdefault(m.product, now_ns)
            if m.product not in self._feed_was_healthy and now_ns - since < self.conf.feed_grace_s * 1e9:
                return []
            return [Alert(key, "feed", WARNING, f"Feed {m.product} {m.state}",
                          f"{m.reason or m.state}; last message {m.last_msg_age_s:.1f} s ago. "
                          "Risk refuses new orders on this product.")]
        self._feed_was_healthy.add(m.product)
        self._feed_bad_since.pop(m.product, None)
        return [Alert(key, "feed", WARNING, f"Feed {m.product} healthy again",
                      f"state {m.state}", resolved=True)]

    def _feed_gap(self, m, now_ns):
        if not self.conf.feed_alerts:
            return []
        return [Alert(f"feed.gap.{m.connection}", "feed", WARNING, f"Feed gap on {m.connection}",
                      f"Exchange sequence jumped from {m.expected} to {m.got} "
                      f"(products {', '.join(map(str, m.products)) or '-'}); the book resyncs.", oneshot=True)]

    def _feed_stale(self, m, now_ns):
        if not self.conf.feed_alerts:
            return []
        return [Alert(f"feed.stale.{m.connection}", "feed", WARNING, f"Feed stale on {m.connection}",
                      f"No message for {m.silent_s:.1f} s (products {', '.join(map(str, m.products)) or '-'}).",
                      oneshot=True)]

    def _process(self, m, now_ns):
        p = m.program
        if m.state == "EXITED" and not m.expected:
            return [Alert(f"process.exited.{p}", "process", CRITICAL, f"Process {p} exited unexpectedly",
                          f"supervisord saw {p} (pid {m.pid}) exit: {m.detail or 'no detail'}. "
                          "It restarts it (autorestart).")]
        if m.state == "FATAL":
            return [Alert(f"process.fatal.{p}", "process", CRITICAL, f"Process {p} FATAL",
                          f"supervisord gave up starting {p}: {m.detail or 'too many retries'}. "
                          f"Check var/log/{p}.err.log, then `supervisorctl start tickmesh:{p}`.")]
        if m.state == "RUNNING":
            return [Alert(f"process.exited.{p}", "process", CRITICAL, f"Process {p} running again",
                          f"pid {m.pid}", resolved=True),
                    Alert(f"process.fatal.{p}", "process", CRITICAL, f"Process {p} running again",
                          f"pid {m.pid}", resolved=True)]
        return []
