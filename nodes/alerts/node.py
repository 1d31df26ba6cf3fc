"""The alert node: bus events -> rules -> dedupe -> Slack / Teams / log, and an AlertEvent back on
the bus (``alert.<kind>``) for every alert it sent.

The bus loop only evaluates rules and appends to the sender's queue; HTTP happens in the
``Dispatcher`` worker thread, whose completion comes back to the loop with ``call_soon``.
"""
import json
import os
import socket
import time

import requests

from nodes.runtime import Node
from proto import AlertEvent, topics

from .rules import CRITICAL, Alert, AlertRules, Deduper
from .senders import Dispatcher, channels_for_mode, channels_from_secrets

SUBSCRIPTIONS = (topics.RISK_KILLSWITCH, topics.PNL, topics.NODE_HEARTBEAT, topics.NODE_PROCESS,
                 topics.MD_STATUS, topics.MD_GAP, topics.MD_STALE)


class AlertsNode(Node):
    """Slack/Teams alerts from bus events (kill switch, PnL, drawdown, nodes, feeds, processes)."""

    name = "alerts"
    subscriptions = SUBSCRIPTIONS

    def __init__(self, mesh, conf=None, **kw):
        super().__init__(mesh, conf, **kw)
        if self.conf is None:
            from .config import AlertsConfig
            self.conf = AlertsConfig()
        self.rules = AlertRules(self.conf)
        self.dedupe = Deduper(self.conf.cooldown_s)
        for t in self.rules.types():
            self.on(t, self._on_event)
        self.queries["alerts"] = lambda arg: {"firing": self.dedupe.firing(), "dedupe": dict(self.dedupe.counts),
                                              "rules": dict(self.rules.counts),
                                              "sender": dict(self.sender.counts) if self.sender else {},
                                              "channels": [c.name for c in self.channels], "mode": self.conf.mode}
        self.channels = []
        self.sender = None
        self._session = None
        self.every(min(1.0, self.conf.node_timeout_s / 4), self._check)

    def setup(self):
        self._session = requests.Session()
        configured = channels_from_secrets(self.secrets, self.conf, self._session)
        self.channels, refused = channels_for_mode(configured, self.conf.mode)
        for ch, why in refused:
            self.log.warning("alerts.mode = %s: not paging %s (%s)", self.conf.mode, ch.name, why)
        if self.channels:
            self.log.info("alert channels: %s (alerts.mode = %s)", ", ".join(c.name for c in self.channels),
                          self.conf.mode)
        elif configured:
            self.log.warning("alerts.mode = %s: alerts go to this log only (offline: --alerts live pages)",
                             self.conf.mode)
        else:
            self.log.info("no Slack/Teams configured: alerts go to this log only")
        self.sender = Dispatcher(self.channels, self.conf, self.log, self._sent_from_worker,
                                 host=socket.gethostname())
        self.sender.start()
        self._previous_run()

    def teardown(self):
        if self.sender is not None:
            self.sender.stop()
            self.log.info("sender stopped")
        if self._session is not None:
            self._session.close()
        try:
            self.marker_path().unlink()          # a clean stop: the next start has nothing to report
        except OSError:
            pass

    # --- its own death ------------------------------------------------------------------------------
    def marker_path(self):
        return self.mesh.state_path("alerts", f"{self.instance}.running")

    def _previous_run(self):
        """The alert node cannot report its own death (supervisord's event came while it was dead):
        the next one does, at start, when the previous run left its marker behind (no clean stop).
        supervisord's RUNNING event for the program then resolves it, like any process alert."""
        path = self.marker_path()
        host = socket.gethostname()
        try:
            prev = json.loads(path.read_text())
        except FileNotFoundError:
            prev = None
        except (OSError, ValueError) as e:
            prev = {"pid": 0, "error": str(e)}
        if isinstance(prev, dict):
            pid = prev.get("pid") if type(prev.get("pid")) is int else 0
            if pid and pid != os.getpid() and prev.get("host") == host and _alive(pid):
                self.log.warning("another alert node (pid %d) uses %s: not reporting it", pid, path)
                return
            started = prev.get("started_ns") if type(prev.get("started_ns")) is int else 0
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started / 1e9)) if started else ""
            what = ", ".join(x for x in (f"pid {pid}" if pid else "", f"started {when}" if when else "") if x)
            self.log.warning("the previous %s process (%s) did not stop cleanly", self.instance,
                             what or f"its marker {path} unreadable")
            now = time.time_ns()
            self._offer(Alert(f"process.exited.{self.instance}", "process", CRITICAL,
                              f"Process {self.instance} exited unexpectedly",
                              f"The previous {self.instance} process on {host}{f' ({what})' if what else ''} "
                              "ended without a clean stop (crash or kill); alerts due while it was down were "
                              "not sent: check `tickmesh ctl status` and the kill switch."), now)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "started_ns": self._started_ns}))
        os.replace(tmp, path)

    def extra_counters(self) -> dict:
        c = {f"alerts_{k}": v for k, v in self.dedupe.counts.items()}
        if self.sender is not None:
            c.update({f"send_{k}": v for k, v in self.sender.counts.items()})
        return c

    # --- rules -> dedupe -> send ---------------------------------------------------------------------
    def _on_event(self, env):
        now = time.time_ns()
        for a in self.rules.on_event(env, now):
            self._offer(a, now)

    def _check(self):
        now = time.time_ns()
        for a in self.rules.check(now):
            self._offer(a, now)
        for a in self.dedupe.due(now):
            self._emit(a, now)

    def _offer(self, alert, now):
        out = self.dedupe.offer(alert, now)
        if out is not None:
            self._emit(out, now)

    def _emit(self, alert, now):
        level = self.log.info if alert.resolved or alert.severity == "info" else self.log.warning
        level("ALERT %s%s [%s] %s: %s", "RESOLVED " if alert.resolved else "", alert.key, alert.severity,
              alert.title, alert.text)
        if not self.channels:
            self._publish(alert, ["log"])
            return
        self.sender.submit(alert, now)

    def _sent_from_worker(self, alert, ts_ns, channels):
        self.call_soon(self._publish, alert, channels or ["log"])

    def _publish(self, alert, channels):
        self.publish(topics.alert(alert.kind),
                     AlertEvent(alert.key, alert.severity, alert.title, alert.text, alert.resolved, list(channels)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
