"""Alert rules and dedupe, without sockets or HTTP.

``AlertRules.on_event(env, now_ns)`` and ``AlertRules.check(now_ns)`` turn bus events and the passage
of time into ``Alert`` fire/resolve actions; ``Deduper`` decides which of them are actually sent:

* every change of state of a key pages once, at once: a firing when the key was not firing, a
  resolve when it was. A critical alert is never held or dropped;
* a repeat of the current state (the same key firing again while it fires) is not sent (dedupe);
* flapping warnings are grouped: a warning that fires again less than ``cooldown_s`` after its last
  page is held; it is sent when the cooldown ends if it is still firing (saying how many times it
  flapped meanwhile), and dropped if it resolved meanwhile (its resolve was never announced).

The market-data feed is one incident (``AlertRules``, key ``feed``): the first gap, stale feed or
unhealthy product pages; every later event of the same incident (the per-product GAP statuses, a
second gap) is folded into it; it resolves once every product it touched has been healthy for
``feed_settle_s``. One small gap is one message per channel and one resolve.
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


class Deduper:
    def __init__(self, cooldown_s: float):
        self.cooldown_ns = int(cooldown_s * 1e9)
        self._st: dict = {}     # key -> {"firing", "sent", "last_ns", "pending", "flaps"}
        self.counts = {"sent": 0, "deduped": 0, "held": 0, "dropped": 0}

    def _state(self, key):
        st = self._st.get(key)
        if st is None:
            st = self._st[key] = {"firing": False, "sent": False, "last_ns": None, "pending": None, "flaps": 0}
        return st

    def _cooling(self, st, now_ns) -> bool:
        return st["last_ns"] is not None and now_ns - st["last_ns"] < self.cooldown_ns

    def _send(self, st, alert, now_ns) -> Alert:
        st["sent"] = True
        st["last_ns"] = now_ns
        if st["flaps"]:
            n, st["flaps"] = st["flaps"], 0
            alert = alert._replace(text=f"{alert.text} (flapping: it fired {n} more time(s) since the "
                                        "last message without being paged)")
        self.counts["sent"] += 1
        return alert

    def offer(self, alert: Alert, now_ns: int) -> Optional[Alert]:
        """The alert to send now, or None (a repeat, a held flapping warning, or nothing to resolve)."""
        st = self._state(alert.key)
        if alert.resolved:
            if not st["firing"]:
                return None
            st["firing"] = False
            if not st["sent"]:              # a held re-fire that ended before its cooldown did
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
        if alert.severity != CRITICAL and self._cooling(st, now_ns):
            st["pending"] = alert
            st["sent"] = False
            st["flaps"] += 1
            self.counts["held"] += 1
            return None
        return self._send(st, alert, now_ns)

    def due(self, now_ns: int) -> list:
        """Held warnings whose cooldown has ended and that are still firing."""
        out = []
        for st in self._st.values():
            a = st["pending"]
            if a is not None and st["firing"] and not self._cooling(st, now_ns):
                st["pending"] = None
                st["flaps"] -= 1            # this one is the page itself, not a flap beside it
                out.append(self._send(st, a, now_ns))
        return out

    def firing(self) -> list:
        return sorted(k for k, st in self._st.items() if st["firing"])


def _age_text(age_s: float) -> str:
    """A feed's last-message age for a sentence (the feed reports -1 before its first message)."""
    return "no message yet" if age_s < 0 else f"last message {age_s:.1f} s ago"


def _names(items) -> str:
    items = sorted(map(str, items))
    return ", ".join(items) if items else "no product listed"


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
        self._feed_bad_since: dict = {}     # product -> ns since when it is unhealthy (grace at start)
        self._feed_was_healthy: set = set()
        self._feed_unhealthy: dict = {}     # product -> state, for products of the open incident
        self._incident: Optional[dict] = None   # the open feed incident
        self.counts = {"feed_incidents": 0, "feed_events_grouped": 0}
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
        """Time-based rules: heartbeats that stopped arriving, a feed incident that has settled."""
        out = []
        for node, seen in self._last_seen.items():
            if node in self._stopped or node in self._down:
                continue
            if now_ns - seen > self._node_timeout_ns:
                self._down.add(node)
                out.append(Alert(f"node.down.{node}", "node", CRITICAL, f"Node {node} is down",
                                 f"No heartbeat from {node} for {(now_ns - seen) / 1e9:.1f} s "
                                 f"(timeout {self.conf.node_timeout_s:g} s)."))
        out.extend(self._feed_settled(now_ns))
        return out

    # --- rules --------------------------------------------------------------------------------------
    def _killswitch_ev(self, m, now_ns):
        prev, self._killswitch = self._killswitch, m.engaged
        if m.engaged and prev is not True:
            return [Alert("killswitch", "killswitch", CRITICAL, "Kill switch ENGAGED",
                          f"Trading halted by {m.source or 'an unnamed source'}: {m.reason or 'no reason given'}")]
        if not m.engaged and prev is True:
            return [Alert("killswitch", "killswitch", CRITICAL, "Kill switch released",
                          f"Trading may resume ({m.source or 'an unnamed source'}): "
                          f"{m.reason or 'no reason given'}", resolved=True)]
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
        where = f"pid {m.pid} on {m.host}" if m.host else f"pid {m.pid}"
        if m.state in ("STOPPED", "STOPPING"):
            if node not in self._stopped:
                self._stopped.add(node)
                if self.conf.alert_on_clean_stop:
                    out.append(Alert(f"node.stopped.{node}", "node", WARNING, f"Node {node} stopped",
                                     f"{node} ({where}) reported a clean stop."))
            self._last_seen[node] = now_ns
            return out
        self._last_seen[node] = now_ns
        if node in self._stopped:
            self._stopped.discard(node)
            if self.conf.alert_on_clean_stop:
                out.append(Alert(f"node.stopped.{node}", "node", WARNING, f"Node {node} is back",
                                 f"{node} is {m.state} ({where}).", resolved=True))
        if node in self._down:
            self._down.discard(node)
            out.append(Alert(f"node.down.{node}", "node", CRITICAL, f"Node {node} is up again",
                             f"{node} is {m.state} again ({where}, uptime {m.uptime_s:.1f} s).", resolved=True))
        return out

    # --- the feed: one incident -------------------------------------------------------------------------
    def _feed_bad(self, now_ns, products, state, title, text) -> list:
        """Products turned unhealthy: open the incident (one page) or fold them into the open one."""
        for p in products:
            self._feed_unhealthy[p] = state
        inc = self._incident
        if inc is not None:
            inc["products"].update(products)
            inc["events"] += 1
            inc["healthy_since"] = None
            self.counts["feed_events_grouped"] += 1
            return []
        self._incident = {"opened_ns": now_ns, "products": set(products), "events": 1, "healthy_since": None,
                          "title": title}
        self.counts["feed_incidents"] += 1
        return [Alert("feed", "feed", WARNING, title, f"{text} Risk refuses new orders on "
                      f"{'this product' if len(products) == 1 else 'these products'} until healthy.")]

    def _feed_settled(self, now_ns) -> list:
        inc = self._incident
        if inc is None or self._feed_unhealthy or inc["healthy_since"] is None:
            return []
        if now_ns - inc["healthy_since"] < self.conf.feed_settle_s * 1e9:
            return []
        self._incident = None
        dur = (inc["healthy_since"] - inc["opened_ns"]) / 1e9
        more = inc["events"] - 1
        return [Alert("feed", "feed", WARNING, "Feed healthy again",
                      f"{_names(inc['products'])} healthy again after {dur:.1f} s "
                      f"({inc['title']}{f', and {more} later event(s) of the same incident' if more else ''}).",
                      resolved=True)]

    def _feed_status(self, m, now_ns):
        if not self.conf.feed_alerts:
            return []
        p = m.product
        if m.healthy:
            self._feed_was_healthy.add(p)
            self._feed_bad_since.pop(p, None)
            self._feed_unhealthy.pop(p, None)
            inc = self._incident
            if inc is not None and not self._feed_unhealthy and inc["healthy_since"] is None:
                inc["healthy_since"] = now_ns
            return self._feed_settled(now_ns)
        # a feed that has not been healthy yet since this node started (connecting, first
        # snapshot) gets feed_grace_s before it pages anyone
        since = self._feed_bad_since.setdefault(p, now_ns)
        if p not in self._feed_was_healthy and now_ns - since < self.conf.feed_grace_s * 1e9:
            return []
        if self._feed_unhealthy.get(p) == m.state and self._incident is not None:
            return []                       # the every-second status of a product already counted
        return self._feed_bad(now_ns, [p], m.state, f"Feed {p} {m.state}",
                              f"{m.reason or m.state}; {_age_text(m.last_msg_age_s)}.")

    def _feed_gap(self, m, now_ns):
        if not self.conf.feed_alerts:
            return []
        missed = m.got - m.expected
        return self._feed_bad(now_ns, [str(p) for p in m.products], "GAP", f"Feed gap on {m.connection}",
                              f"Exchange sequence jumped from {m.expected} to {m.got} on {m.connection} "
                              f"({missed} message(s) missed; products {_names(m.products)}); the books resync.")

    def _feed_stale(self, m, now_ns):
        if not self.conf.feed_alerts:
            return []
        return self._feed_bad(now_ns, [str(p) for p in m.products], "STALE", f"Feed stale on {m.connection}",
                              f"No message for {m.silent_s:.1f} s on {m.connection} "
                              f"(products {_names(m.products)}); reconnecting.")

    def _process(self, m, now_ns):
        p = m.program
        pid = f" (pid {m.pid})" if m.pid else ""
        if m.state == "EXITED" and not m.expected:
            return [Alert(f"process.exited.{p}", "process", CRITICAL, f"Process {p} exited unexpectedly",
                          f"supervisord saw {p}{pid} exit{f': {m.detail}' if m.detail else ''}. "
                          "It restarts it (autorestart).")]
        if m.state == "FATAL":
            return [Alert(f"process.fatal.{p}", "process", CRITICAL, f"Process {p} FATAL",
                          f"supervisord gave up starting {p}: {m.detail or 'too many failed starts'}. "
                          f"Check var/log/{p}.err.log, then `supervisorctl start tickmesh:{p}`.")]
        if m.state == "RUNNING":
            return [Alert(f"process.exited.{p}", "process", CRITICAL, f"Process {p} running again",
                          f"{p} is running{pid}.", resolved=True),
                    Alert(f"process.fatal.{p}", "process", CRITICAL, f"Process {p} running again",
                          f"{p} is running{pid}.", resolved=True)]
        return []
