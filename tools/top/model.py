"""The screen model of ``tickmesh top``: what the screen shows, built from bus events and query
replies. No sockets and no terminal here: ``apply()`` takes a decoded envelope, ``apply_reply()`` a
query's answer, both with the local time they arrived; ``snapshot()`` turns it into plain data (the
``--json`` output and the only input of the renderer). Money stays ``Decimal`` until the snapshot,
where it becomes its exact string. A value nobody has told us is ``None`` in the snapshot and "—"
on the screen: never a placeholder number.

Times are local receive times (``time.time_ns()`` at arrival), so ages do not depend on the
publishers' clocks.
"""
from collections import deque
from decimal import Decimal

import proto
from proto import (AlertEvent, FeedGap, FeedStale, FeedStatus, Heartbeat, KillSwitch, Order, PnL, Position,
                   ProcessEvent, RiskBand, RiskDecision, RiskExposure, RiskState)

from tools.ctl import EXPECTED   # the nodes supervisord runs: always listed, so one never heard shows down

NS = 1_000_000_000
# What top asks each node, at start, when it comes back and every ``REFRESH_S``.
QUERIES = {"marketdata": ("status", "feed"), "risk": ("status", "risk"),
           "execution": ("status", "positions", "orders", "pnl"), "alerts": ("status", "alerts")}
REFRESH_S = 10.0
WORKING = frozenset({"NEW", "ACCEPTED", "PARTIALLY_FILLED"})
DOWN_PROCESS_STATES = frozenset({"EXITED", "FATAL", "BACKOFF", "STOPPED"})
# The heartbeat counters worth a column, per node, in this order (absent ones are skipped).
NODE_COUNTERS = {
    "marketdata": ("feed_gaps", "feed_reconnects", "feed_stale", "feed_parse_errors"),
    "risk": ("risk.snapshots", "risk.decisions", "risk.state_changes", "risk.pending_orders"),
    "execution": ("exec.submits", "exec.fills", "exec.rejected", "exec.risk_denied", "exec.risk_unavailable",
                  "exec.working_orders", "risk_state_age_ms", "exec.risk_state_age_ms"),
    "store": ("events_stored", "events_dropped", "store_write_errors"),
    "strategy": ("intents", "submitted", "fills", "rejected", "submit_timeouts"),
    "metrics": ("metrics_events",),
    "alerts": ("alerts_sent", "send_sent", "send_failed"),
    "supervisor": ("process_events",),
}
GENERIC_COUNTERS = ("gaps", "handler_errors", "malformed")


def _pct(used, limit):
    """``used / limit`` in % with one decimal, as a string; None when either is unknown."""
    if used is None or limit is None or limit <= 0:
        return None
    return str((Decimal(used) * 100 / Decimal(limit)).quantize(Decimal("0.1")))


def _plain(v):
    return proto.to_plain(v)


def _band_from_dict(product, d):
    """A band given as a plain map (a newer risk's query reply), or None when it does not read."""
    try:
        return RiskBand(product, _dec(d.get("last")), _dec(d.get("mid")), float(d.get("stddev") or 0.0),
                        float(d.get("ewma") or 0.0), float(d.get("atr") or 0.0), _dec(d.get("band_low")),
                        _dec(d.get("band_high")), str(d.get("method") or ""))
    except (ArithmeticError, TypeError, ValueError):
        return None


def _dec(v):
    return Decimal(0) if v is None or v == "" else Decimal(str(v))


class NodeView:
    __slots__ = ("name", "state", "pid", "host", "uptime_s", "seen_ns", "counters",
                 "incarnations", "process", "process_ns", "asked_ns", "was_down")

    def __init__(self, name):
        self.name = name
        self.state = None          # lifecycle state from the last heartbeat / status reply
        self.pid = self.host = None
        self.uptime_s = None       # at seen_ns
        self.seen_ns = None        # last heartbeat or status reply
        self.counters = {}
        self.incarnations = []     # pids seen, in order (restarts seen = len - 1)
        self.process = None        # last supervisord ProcessEvent for this program
        self.process_ns = None
        self.asked_ns = None       # when top last sent it its queries
        self.was_down = True       # down as of the last event: its return triggers fresh queries


class ScreenModel:
    """Everything on the screen. ``heartbeat_s``: the mesh's heartbeat interval (a node silent for
    ``down_after`` heartbeats is down). ``limits``: a ``nodes.risk.config.RiskConfig`` for the
    "limits used" percentages (None: they show as —)."""

    def __init__(self, heartbeat_s: float = 1.0, limits=None, products=(), recent: int = 12,
                 down_after: float = 3.0):
        self.heartbeat_s = heartbeat_s
        self.down_ns = int(max(1.5, down_after * heartbeat_s) * NS)
        self.limits = limits
        self.nodes = {n: NodeView(n) for n in EXPECTED}
        self.killswitch = None     # (KillSwitch, heard_ns)
        self.trading = None        # (RiskState, heard_ns)
        self.exposure = None       # (RiskExposure, heard_ns)
        self.risk_heard_ns = None  # newest risk state of any kind (event or reply)
        self.risk_extra = {}       # from Query("risk"): peak_equity, rejects_last_min, feeds
        self.bands = {}            # product -> (RiskBand, heard_ns)
        self.feeds = {p: {} for p in products}   # product -> dict (state, healthy, reason, age_s, heard_ns, ...)
        self.feed_totals = {}      # marketdata's connection-level counters
        self.positions = {}        # product -> (Position, heard_ns)
        self.orders = {}           # client_order_id -> Order (working only)
        self.pnl = None            # (PnL, heard_ns)
        self.recent = deque(maxlen=recent)   # order events and risk refusals, newest last
        self.alerts = deque(maxlen=recent)   # AlertEvents, newest last
        self.firing = None         # alert keys firing, from Query("alerts")
        self.message = ""          # the last operator action's outcome
        self.bus_events = 0
        self.bus_missing = 0
        self.malformed = 0
        self._handlers = {Heartbeat: self._heartbeat, ProcessEvent: self._process, KillSwitch: self._killswitch,
                          RiskState: self._risk_state, RiskExposure: self._exposure, RiskBand: self._band,
                          RiskDecision: self._decision, FeedStatus: self._feed_status, FeedGap: self._feed_gap,
                          FeedStale: self._feed_stale, Position: self._position, PnL: self._pnl,
                          Order: self._order, AlertEvent: self._alert}
        self._by_tag = {"RiskSnapshot": self._snapshot_event}   # newer messages, matched by tag
        self.risk_version = None   # (version, epoch_ns) of the newest risk snapshot
        self.risk_limits = {}      # from risk's snapshot: product -> {max_position, max_exposure, ...}
        self.risk_gross_limit = None

    # --- events ---------------------------------------------------------------------------------
    def apply(self, env, now_ns: int) -> bool:
        """One decoded bus event; True when it changed something on the screen."""
        self.bus_events += 1
        h = self._handlers.get(type(env.msg)) or self._by_tag.get(env.msg.TAG)
        if h is None:
            return False
        h(env, env.msg, now_ns)
        return True

    def _node(self, name):
        v = self.nodes.get(name)
        if v is None:
            v = self.nodes[name] = NodeView(name)
        return v

    def _alive(self, v, state, pid, uptime_s, counters, now_ns, host=None):
        if pid and (not v.incarnations or v.incarnations[-1] != pid):
            if v.incarnations:
                v.was_down = True              # a new process: ask it afresh
            v.incarnations.append(pid)
        v.state, v.pid, v.uptime_s, v.seen_ns = state, pid, uptime_s, now_ns
        if host:
            v.host = host
        if counters:
            v.counters = dict(counters)

    def _heartbeat(self, env, m, now):
        v = self._node(m.node)
        self._alive(v, m.state, m.pid, m.uptime_s, m.counters, now, m.host)

    def _process(self, env, m, now):
        v = self._node(m.program)
        v.process, v.process_ns = m, now

    def _killswitch(self, env, m, now):
        self.killswitch = (m, now)
        self.risk_heard_ns = now

    def _risk_state(self, env, m, now):
        self.trading = (m, now)
        self.risk_heard_ns = now

    def _snapshot_event(self, env, m, now):
        """risk's periodic versioned snapshot: state, kill switch and the limits it enforces. Read
        field by field with defaults, so that a field it does not carry shows as unknown."""
        g = lambda k, d=None: getattr(m, k, d)   # noqa: E731
        if g("state"):
            prev = self.trading[0].previous if self.trading else ""
            if self.trading and self.trading[0].state != g("state"):
                prev = self.trading[0].state
            self.trading = (RiskState(g("state"), prev, g("state_reason", "") or ""), now)
        if g("killswitch") is not None:
            self.killswitch = (KillSwitch(bool(g("killswitch")), g("ks_reason", "") or "", g("ks_source", "") or "",
                                          g("ks_since_ns", 0) or 0), now)
        if g("version") is not None:
            self.risk_version = (g("version"), g("epoch_ns"))
        prods = g("products")
        if isinstance(prods, dict):
            self.risk_limits = {p: d for p, d in prods.items() if isinstance(d, dict)}
        if g("max_gross_exposure") is not None:
            self.risk_gross_limit = g("max_gross_exposure")
        self.risk_heard_ns = now

    def _exposure(self, env, m, now):
        self.exposure = (m, now)
        self.risk_heard_ns = now

    def _band(self, env, m, now):
        self.bands[m.product] = (m, now)

    def _decision(self, env, m, now):
        if not m.approved:
            self.recent.append({"ts_ns": now, "kind": "refusal", "product": m.product, "id": m.client_order_id,
                                "side": None, "size": None, "limit": None, "filled": None, "avg_price": None,
                                "by": env.source, "code": m.code, "reason": m.reason})

    def _feed(self, product):
        f = self.feeds.get(product)
        if f is None:
            f = self.feeds[product] = {}
        return f

    def _feed_status(self, env, m, now):
        f = self._feed(m.product)
        if f.get("state") == "DISCONNECTED" and m.healthy:
            f["reconnects"] = f.get("reconnects", 0) + 1
        f.update(state=m.state, healthy=m.healthy, reason=m.reason, age_s=m.last_msg_age_s, heard_ns=now)

    def _feed_gap(self, env, m, now):
        for p in m.products:
            f = self._feed(p)
            f["gaps"] = f.get("gaps", 0) + 1

    def _feed_stale(self, env, m, now):
        for p in m.products:
            f = self._feed(p)
            f["stale"] = f.get("stale", 0) + 1

    def _position(self, env, m, now):
        self.positions[m.product] = (m, now)

    def _pnl(self, env, m, now):
        self.pnl = (m, now)

    def _order(self, env, m, now):
        if m.status in WORKING:
            self.orders[m.client_order_id] = m
        else:
            self.orders.pop(m.client_order_id, None)
        self.recent.append({"ts_ns": now, "kind": m.status, "product": m.product, "id": m.client_order_id,
                            "side": m.side, "size": m.size if m.size is not None else m.quote_size,
                            "limit": m.limit_price, "filled": m.filled_size or None,
                            "avg_price": m.avg_price if m.filled_size else None, "by": env.source,
                            "code": m.code if m.code not in ("", "OK") else None, "reason": m.reason or None})

    def _alert(self, env, m, now):
        self.alerts.append({"ts_ns": now, "key": m.key, "severity": m.severity, "title": m.title,
                            "resolved": m.resolved, "channels": list(m.channels)})

    # --- query replies --------------------------------------------------------------------------
    def asked(self, node: str, now_ns: int):
        v = self._node(node)
        v.asked_ns = now_ns
        v.was_down = False

    def apply_reply(self, node: str, what: str, data, now_ns: int) -> bool:
        """The data of a successful reply to ``Query(what)`` sent to ``node``."""
        if what == "status" and isinstance(data, dict):
            c = dict(data.get("counters") or {})
            for src, n in (data.get("bus_gaps") or {}).items():
                c[f"bus_gaps.{src}"] = n
            self._alive(self._node(node), data.get("state"), data.get("pid"), data.get("uptime_s"), c, now_ns)
        elif what == "feed" and isinstance(data, dict):
            for p, d in (data.get("products") or {}).items():
                if isinstance(d, dict):
                    f = self._feed(p)
                    f.update(state=d.get("state"), healthy=d.get("healthy"), reason=d.get("reason"),
                             age_s=d.get("age_s"), heard_ns=now_ns)
            c = data.get("counters")
            if isinstance(c, dict):
                self.feed_totals = dict(c)
        elif what == "risk" and isinstance(data, dict):
            ks = data.get("killswitch")
            if isinstance(ks, dict) and isinstance(ks.get("engaged"), bool):
                ks = KillSwitch(ks["engaged"], ks.get("reason") or "", ks.get("source") or "", ks.get("since_ns") or 0)
            if isinstance(ks, KillSwitch):
                self.killswitch = (ks, now_ns)
            if data.get("snapshot_version") is not None:
                self.risk_version = (data["snapshot_version"], data.get("epoch_ns"))
            ex = data.get("exposure")
            if isinstance(ex, RiskExposure):
                self.exposure = (ex, now_ns)
            if data.get("state"):
                prev = self.trading[0].previous if self.trading else ""
                self.trading = (RiskState(data["state"], prev, data.get("state_reason") or ""), now_ns)
            for p, b in (data.get("bands") or {}).items():
                if isinstance(b, dict):
                    b = _band_from_dict(p, b)
                if isinstance(b, RiskBand):
                    self.bands[p] = (b, now_ns)
            self.risk_extra = {k: data.get(k) for k in ("peak_equity", "rejects_last_min", "release_blockers")}
            self.risk_heard_ns = now_ns
        elif what == "positions" and isinstance(data, list):
            for p in data:
                if isinstance(p, Position):
                    self.positions[p.product] = (p, now_ns)
        elif what == "orders" and isinstance(data, list):
            self.orders = {o.client_order_id: o for o in data if isinstance(o, Order) and o.status in WORKING}
        elif what == "pnl" and isinstance(data, PnL):
            self.pnl = (data, now_ns)
        elif what == "alerts" and isinstance(data, dict):
            f = data.get("firing")
            self.firing = sorted(f) if isinstance(f, (list, dict, set, tuple)) else None
        else:
            return False
        return True

    # --- derived state --------------------------------------------------------------------------
    def node_up(self, v: NodeView, now_ns: int):
        """(up, why-not) of one node as of ``now_ns``."""
        if v.seen_ns is None:
            return False, "never heard"
        if v.process is not None and v.process_ns >= v.seen_ns and v.process.state in DOWN_PROCESS_STATES:
            return False, f"supervisord: {v.process.state}"
        if v.state in ("STOPPED", "FAILED", "STOPPING"):
            return False, v.state.lower()
        silent = now_ns - v.seen_ns
        if silent > self.down_ns:
            return False, f"silent {silent / NS:.0f}s"
        return v.state == "RUNNING", (v.state or "?").lower()

    def due_queries(self, now_ns: int, refresh_s: float = REFRESH_S) -> list:
        """(node, what) to ask now: nodes never asked or back from down (new process, or a
        heartbeat after silence), and every ``refresh_s`` the nodes that are up. A node that is
        down is not asked: its next heartbeat says when to."""
        out = []
        for name, v in self.nodes.items():
            up, _ = self.node_up(v, now_ns)
            due = v.asked_ns is None or (up and (v.was_down or now_ns - v.asked_ns >= refresh_s * NS))
            if due:
                out.extend((name, w) for w in QUERIES.get(name, ("status",)))
                self.asked(name, now_ns)
        return out

    def note_down(self, now_ns: int):
        """Remember which nodes are down now, so that their return triggers fresh queries."""
        for v in self.nodes.values():
            if not self.node_up(v, now_ns)[0]:
                v.was_down = True

    # --- the snapshot ---------------------------------------------------------------------------
    def snapshot(self, now_ns: int, product: str = "") -> dict:
        """Plain, JSON-ready data for the renderer and ``--json``. ``product``: only that product's
        rows in the per-product sections."""
        def age(t):
            return None if t is None else round((now_ns - t) / NS, 3)

        def keep(p):
            return not product or p == product

        nodes = []
        for name in sorted(self.nodes, key=lambda n: (EXPECTED.index(n) if n in EXPECTED else 99, n)):
            v = self.nodes[name]
            if name not in EXPECTED and v.seen_ns is None:
                continue
            up, why = self.node_up(v, now_ns)
            c = v.counters
            shown = {k: c[k] for k in NODE_COUNTERS.get(name, ()) + GENERIC_COUNTERS if k in c}
            gaps = [n for k, n in c.items() if k.startswith("bus_gaps.")]
            if gaps:
                shown["bus_gaps"] = sum(gaps)
            uptime = None
            if up and v.uptime_s is not None:
                uptime = round(v.uptime_s + (now_ns - v.seen_ns) / NS, 1)
            p = v.process
            nodes.append({"node": name, "up": up, "why": None if up else why, "state": v.state, "pid": v.pid,
                          "uptime_s": uptime, "restarts": max(0, len(v.incarnations) - 1) if v.incarnations else None,
                          "heartbeat_age_s": age(v.seen_ns), "counters": shown,
                          "process": None if p is None else {"state": p.state, "expected": p.expected,
                                                             "detail": p.detail, "age_s": age(v.process_ns)}})
        risk_up, _ = self.node_up(self.nodes["risk"], now_ns)

        ks = None
        if self.killswitch is not None:
            k, t = self.killswitch
            ks = {"engaged": k.engaged, "reason": k.reason or None, "source": k.source or None,
                  "since_ns": k.since_ns or None, "since_s": age(k.since_ns) if k.since_ns else None}
        trading = None
        if self.trading is not None:
            s, t = self.trading
            trading = {"state": s.state, "previous": s.previous or None, "reason": s.reason or None}
        elif self.exposure is not None:
            trading = {"state": self.exposure[0].state, "previous": None, "reason": None}

        feeds = []
        for p in sorted(self.feeds):
            if not keep(p):
                continue
            f = self.feeds[p]
            a = f.get("age_s")
            if a is not None and f.get("heard_ns") is not None:
                a = round(a + (now_ns - f["heard_ns"]) / NS, 3)
            feeds.append({"product": p, "state": f.get("state"), "healthy": f.get("healthy"),
                          "reason": f.get("reason") or None, "last_msg_age_s": a, "gaps": f.get("gaps", 0),
                          "reconnects": f.get("reconnects", 0), "stale": f.get("stale", 0)})

        positions = []
        for p in sorted(self.positions):
            if not keep(p):
                continue
            m, t = self.positions[p]
            positions.append({"product": p, "size": m.qty, "avg_cost": m.avg_cost, "mark": m.mark,
                              "unrealized": m.unrealized_pnl, "realized": m.realized_pnl,
                              "exposure": m.exposure, "age_s": age(t)})
        orders = [{"id": o.client_order_id, "product": o.product, "side": o.side, "type": o.order_type,
                   "size": o.size if o.size is not None else o.quote_size, "limit": o.limit_price,
                   "filled": o.filled_size, "status": o.status, "strategy": o.strategy or None}
                  for o in self.orders.values() if keep(o.product)]
        pnl = None
        if self.pnl is not None:
            m, t = self.pnl
            pnl = {"realized": m.realized, "unrealized": m.unrealized, "daily": m.daily, "equity": m.equity,
                   "fees": m.fees, "day": m.day, "age_s": age(t)}

        risk = self._risk_snapshot(now_ns, keep, age)
        recent = [dict(r, age_s=age(r["ts_ns"])) for r in self.recent if keep(r["product"])]
        alerts = [dict(a, age_s=age(a["ts_ns"])) for a in self.alerts]
        out = {"ts_ns": now_ns, "filter": product or None, "risk_up": risk_up, "killswitch": ks,
               "trading": trading, "nodes": nodes, "feeds": feeds, "feed_totals": dict(self.feed_totals) or None,
               "positions": positions, "orders": orders, "pnl": pnl, "risk": risk, "recent": recent,
               "alerts": alerts, "alerts_firing": self.firing, "message": self.message or None,
               "bus": {"events": self.bus_events, "missing": self.bus_missing, "malformed": self.malformed}}
        return _plain(out)

    def _limit(self, product, key):
        """A limit as risk published it in its snapshot, else as the config top read says."""
        d = self.risk_limits.get(product)
        if d and d.get(key) not in (None, ""):
            try:
                return Decimal(str(d[key]))
            except ArithmeticError:
                pass
        return getattr(self.limits.limits(product), key) if self.limits is not None else None

    def _risk_snapshot(self, now_ns, keep, age):
        lim = self.limits
        ex = self.exposure[0] if self.exposure else None
        exec_counters = self.nodes["execution"].counters
        exec_age = next((v for k, v in exec_counters.items() if k.endswith("risk_state_age_ms")), None)
        products = sorted(set(self.bands) | (set(ex.positions) if ex else set()) | set(self.positions))
        rows = []
        for p in products:
            if not keep(p):
                continue
            b = self.bands.get(p, (None, None))[0]
            qty = ex.positions.get(p) if ex else None
            if qty is None and p in self.positions:
                qty = self.positions[p][0].qty
            expo = ex.exposures.get(p) if ex else None
            if expo is None and p in self.positions:
                expo = self.positions[p][0].exposure
            ready = b is not None and b.band_high > 0
            rows.append({"product": p, "mid": b.mid if b is not None and b.mid > 0 else None,
                         "band_low": b.band_low if ready else None, "band_high": b.band_high if ready else None,
                         "method": (b.method or None) if b is not None else None,
                         "position": qty, "position_pct": _pct(abs(qty) if qty is not None else None,
                                                               self._limit(p, "max_position")),
                         "exposure": expo, "exposure_pct": _pct(expo, self._limit(p, "max_exposure"))})
        pnl = self.pnl[0] if self.pnl else None
        peak = self.risk_extra.get("peak_equity")
        loss = max(Decimal(0), -pnl.daily) if pnl is not None else None
        dd = max(Decimal(0), Decimal(peak) - pnl.equity) if (pnl is not None and peak is not None) else None
        rejects = self.risk_extra.get("rejects_last_min")
        gross_limit = self.risk_gross_limit if self.risk_gross_limit is not None else (
            lim.max_gross_exposure if lim is not None else None)
        limits = {"gross_exposure_pct": _pct(ex.gross if ex else None, gross_limit),
                  "daily_loss_pct": _pct(loss, lim.daily_loss_limit if lim else None),
                  "drawdown_pct": _pct(dd, lim.max_drawdown if lim else None),
                  "rejects_pct": _pct(rejects, lim.max_rejects_per_min if lim else None)}
        v = self.risk_version
        return {"age_s": age(self.risk_heard_ns), "version": v[0] if v else None,
                "execution_view_age_ms": exec_age,
                "gross": ex.gross if ex else None, "net": ex.net if ex else None,
                "limits": limits, "products": rows,
                "release_blockers": self.risk_extra.get("release_blockers") or None}
