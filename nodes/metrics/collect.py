"""Bus events -> Prometheus metrics, without sockets.

``MeshMetrics(registry)`` owns every metric of the mesh in a private ``CollectorRegistry`` (so
several instances can live in one process: tests, offline mode). ``handle(env)`` updates them from
one decoded event; ``refresh(now_ns)`` recomputes the time-derived gauges (node up/down). The node
(``nodes.metrics.node``) only binds this to the bus and to an HTTP server.

Naming follows the Prometheus conventions: a ``tickmesh_`` prefix, ``_total`` for counters,
``_seconds`` for durations, money in the quote currency (``_quote``), sizes in base units. The
process metrics of prometheus_client's own collectors keep their standard names (``process_*``,
``python_gc_*``, ``python_info``) for the metrics process itself; the other nodes of this host get
the same process metrics as ``tickmesh_node_process_*{node}``, read from /proc by the pid of their
heartbeat. No ``_created`` series (``disable_created_metrics``): they double the series count and
no dashboard or rule reads them.
"""
import os
import platform
import socket
import threading
import time
from collections import OrderedDict
from decimal import Decimal

import prometheus_client
import zmq
from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info, PlatformCollector,
                               ProcessCollector)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import proto
from proto import topics

prometheus_client.disable_created_metrics()

OPEN_STATUSES = frozenset({"NEW", "ACCEPTED", "PARTIALLY_FILLED"})
TERMINAL_STATUSES = frozenset({"FILLED", "CANCELLED", "REJECTED"})
TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")

# Heartbeat counters re-exported per node as counters (name in the heartbeat -> metric suffix).
_HB_COUNTERS = {
    "published": ("events_published_total", "Events the node published on its PUB socket since it started"),
    "received": ("events_received_total", "Events the node received and decoded on its SUB socket since it started"),
    "malformed": ("malformed_frames_total", "Frames the node dropped as undecodable (bus and requests)"),
    "handler_errors": ("handler_errors_total", "Exceptions the node's event and request handlers raised (caught)"),
    "requests": ("requests_total", "Requests the node answered, errors included"),
    "request_errors": ("request_errors_total", "Requests the node answered with an error reply"),
    "restarts_seen": ("publisher_restarts_seen_total", "Times the node saw a publisher restart (its sequence reset)"),
}
# A heartbeat counter that is a gauge: execution's view of the age of the latest risk state it holds,
# in integer ms (-1 or absent: no state received yet, and then no sample is exported).
RISK_STATE_AGE_KEY = "risk_state_age_ms"


def build_labels() -> dict:
    """Labels of tickmesh_build_info: what runs, for a dashboard or an incident note."""
    try:
        from importlib.metadata import version
        ver = version("tickmesh")
    except Exception:  # noqa: BLE001 - a checkout run without `pip install -e .`
        ver = "unknown (not installed)"
    from proto import codec
    return {"version": ver, "python": platform.python_version(), "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "codec": "c" if codec.SPEEDUPS else "python"}


def _f(d: Decimal) -> float:
    """Money -> float only at the very edge (Prometheus samples are float64)."""
    return float(d)


class _HeartbeatCollector:
    """Custom collector over the last heartbeat of every node (read at scrape time)."""

    def __init__(self, owner: "MeshMetrics"):
        self._o = owner

    def collect(self):
        o = self._o
        with o._lock:
            beats = dict(o._beats)
            own = o._own_counters() if o._own_counters else None
            timeout_ns = o.node_timeout_ns
        now = time.time_ns()
        up = GaugeMetricFamily("tickmesh_node_up", "1 if the node's heartbeat is fresh and RUNNING",
                               labels=["node"])
        age = GaugeMetricFamily("tickmesh_node_heartbeat_age_seconds", "Seconds since the last heartbeat",
                                labels=["node"])
        uptime = GaugeMetricFamily("tickmesh_node_uptime_seconds", "Node uptime from its heartbeat",
                                   labels=["node"])
        gaps = CounterMetricFamily("tickmesh_bus_gaps", "Events a node missed from a publisher (sequence gaps)",
                                   labels=["node", "publisher"])
        risk_age = GaugeMetricFamily("tickmesh_risk_state_age_seconds",
                                     "Age of the latest risk state the node holds, as of its last heartbeat "
                                     "(no sample until it has received one)", labels=["node"])
        fams = {k: CounterMetricFamily("tickmesh_node_" + v[0][:-len("_total")], v[1], labels=["node"])
                for k, v in _HB_COUNTERS.items()}
        md = {k: CounterMetricFamily("tickmesh_" + k, help_, labels=["product"]) for k, help_ in (
            ("ticks", "Ticks (md.tick.*) the market-data node published, from its heartbeat"),
            ("trades", "Market trades (md.trade.*) the market-data node published, from its heartbeat"))}
        for node, (seen_ns, hb) in sorted(beats.items()):
            fresh = now - seen_ns <= timeout_ns
            up.add_metric([node], 1.0 if fresh and hb.state == "RUNNING" else 0.0)
            age.add_metric([node], max(0.0, (now - seen_ns) / 1e9))
            uptime.add_metric([node], hb.uptime_s)
            for k, v in hb.counters.items():
                if k.startswith("bus_gaps."):
                    gaps.add_metric([node, k[len("bus_gaps."):]], float(v))
                elif k in fams:
                    fams[k].add_metric([node], float(v))
                elif node == "marketdata" and k.startswith(("ticks.", "trades.")):
                    kind, _, product = k.partition(".")
                    md[kind].add_metric([product], float(v))
            age_ms = hb.counters.get(RISK_STATE_AGE_KEY)
            if type(age_ms) in (int, float) and age_ms >= 0:
                risk_age.add_metric([node], age_ms / 1000)
        if own is not None:             # the hosting node does not hear its own heartbeats
            node, uptime_s, counters, bus_gaps = own
            if node not in beats:
                up.add_metric([node], 1.0)
                uptime.add_metric([node], uptime_s)
                for src, n in bus_gaps.items():
                    gaps.add_metric([node, src], float(n))
                for k, v in counters.items():
                    if k in fams:
                        fams[k].add_metric([node], float(v))
        yield up
        yield age
        yield uptime
        yield gaps
        yield risk_age
        yield from fams.values()
        yield from md.values()


class _NodeProcessCollector:
    """prometheus_client's ProcessCollector for every other node process of this host (the pid and
    host of its last heartbeat), relabelled ``tickmesh_node_process_*{node}``. Nodes running in the
    metrics process itself (offline mode, tests) are its own ``process_*`` metrics."""

    def __init__(self, owner: "MeshMetrics"):
        self._o = owner
        self._host = socket.gethostname()

    def collect(self):
        with self._o._lock:
            beats = {n: hb for n, (_, hb) in self._o._beats.items()}
        fams = {}
        me = os.getpid()
        for node, hb in sorted(beats.items()):
            if hb.host != self._host or hb.pid <= 0 or hb.pid == me or hb.state == "STOPPED":
                continue
            for fam in ProcessCollector(pid=lambda pid=hb.pid: pid, registry=None).collect():
                out = fams.get(fam.name)
                if out is None:
                    cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
                    name = "tickmesh_node_" + fam.name
                    out = fams[fam.name] = cls(name, fam.documentation + " (of the node's process)",
                                               labels=["node"])
                for smp in fam.samples:
                    out.add_metric([node], smp.value)
        yield from fams.values()


class MeshMetrics:
    def __init__(self, registry: CollectorRegistry = None, *, node_timeout_s: float = 3.0,
                 roundtrip_buckets=None, tick_to_trade_buckets=None, own_counters=None, process_metrics=True):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.node_timeout_ns = int(node_timeout_s * 1e9)
        self._own_counters = own_counters   # () -> (node, uptime_s, counters, bus_gaps) of the host node
        self._lock = threading.Lock()
        self._beats: dict = {}              # node -> (seen_ns, Heartbeat)
        self._open: dict = {}               # client_order_id -> [product, filled_seen]
        self._done: OrderedDict = OrderedDict()   # recently terminal ids (no double observation)
        self._feed_state: dict = {}         # product -> last FeedStatus.state
        self.counts = {"events": 0}
        r = self.registry
        p = "tickmesh_"
        # the metrics process itself and the build
        if process_metrics:
            ProcessCollector(registry=r)
            GCCollector(registry=r)
            PlatformCollector(registry=r)
            r.register(_NodeProcessCollector(self))
        self.build = Info(p + "build", "The tickmesh build serving these metrics (value always 1)", registry=r)
        self.build.info(build_labels())
        # positions and exposure
        self.position = Gauge(p + "position_base", "Signed position in base units", ["product"], registry=r)
        self.exposure = Gauge(p + "exposure_quote", "Absolute exposure |qty| * mark in quote currency",
                              ["product"], registry=r)
        self.mark = Gauge(p + "mark_price_quote", "Mark price used for the position", ["product"], registry=r)
        self.avg_cost = Gauge(p + "position_avg_cost_quote", "Average cost of the position", ["product"],
                              registry=r)
        self.pos_realized = Gauge(p + "position_realized_pnl_quote", "Realised PnL per product (fees included)",
                                  ["product"], registry=r)
        self.pos_unrealized = Gauge(p + "position_unrealized_pnl_quote", "Unrealised PnL per product",
                                    ["product"], registry=r)
        self.gross = Gauge(p + "exposure_gross_quote", "Gross exposure seen by risk", registry=r)
        self.net = Gauge(p + "exposure_net_quote", "Net exposure seen by risk", registry=r)
        # orders
        self.open_orders = Gauge(p + "open_orders", "Working orders (NEW, ACCEPTED, PARTIALLY_FILLED)",
                                 ["product"], registry=r)
        self.orders = Counter(p + "orders", "Order events (order.*) by status: every update, not distinct orders",
                              ["status", "product"], registry=r)
        self.fills = Counter(p + "fills", "Fills execution published (fill.*)", ["product", "side", "liquidity"],
                             registry=r)
        self.filled_base = Counter(p + "filled_base", "Size filled, base units, summed over fills", ["product", "side"],
                                   registry=r)
        self.roundtrip = Histogram(p + "order_roundtrip_seconds", "Order created -> terminal state",
                                   ["status"], buckets=roundtrip_buckets or Histogram.DEFAULT_BUCKETS,
                                   registry=r)
        self.t2t = Histogram(p + "tick_to_trade_seconds", "Market event that caused an order -> its first fill",
                             buckets=tick_to_trade_buckets or Histogram.DEFAULT_BUCKETS, registry=r)
        # risk
        self.killswitch = Gauge(p + "killswitch_engaged", "1 while the kill switch is engaged", registry=r)
        self.trading_state = Gauge(p + "trading_state", "1 for the current trading state", ["state"], registry=r)
        for s in TRADING_STATES:
            self.trading_state.labels(s).set(0)
        self.decisions = Counter(p + "risk_decisions", "Pre-trade risk decisions published (approved or denied)",
                                 ["result"], registry=r)
        self.denials = Counter(p + "risk_denials", "Pre-trade risk denials by reason code", ["code"], registry=r)
        self.risk_compute = Histogram(p + "risk_decision_seconds", "Risk check compute time",
                                      buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2),
                                      registry=r)
        self.band = Gauge(p + "risk_band_quote", "Risk's volatility band per product: kind low/high are its "
                          "bounds, mid the mid price they are around (no sample until the band is ready)",
                          ["product", "kind"], registry=r)
        self.volatility = Gauge(p + "risk_volatility_ratio", "Risk's volatility of log returns per product: "
                                "kind stddev (rolling) or ewma (sqrt of the EWMA variance)", ["product", "kind"],
                                registry=r)
        self.atr = Gauge(p + "risk_atr_quote", "Risk's Wilder average true range per product, price units",
                         ["product"], registry=r)
        # pnl
        self.realized = Gauge(p + "pnl_realized_quote", "Realised PnL (fees included)", registry=r)
        self.unrealized = Gauge(p + "pnl_unrealized_quote", "Unrealised PnL marked to mid", registry=r)
        self.daily = Gauge(p + "pnl_daily_quote", "PnL since 00:00 UTC", registry=r)
        self.equity = Gauge(p + "equity_quote", "Starting equity + realised + unrealised", registry=r)
        self.fees = Gauge(p + "fees_quote", "Fees paid", registry=r)
        # market data
        self.last_price = Gauge(p + "last_price_quote", "Last price (risk.band.<P>'s last tick)", ["product"],
                                registry=r)
        self.feed_healthy = Gauge(p + "feed_healthy", "1 while the product's feed is healthy", ["product"],
                                  registry=r)
        self.feed_age = Gauge(p + "feed_last_message_age_seconds", "Age of the product's last feed message at its "
                              "last md.status (no sample before the first message)", ["product"], registry=r)
        self.feed_gaps = Counter(p + "feed_gaps", "Exchange sequence gaps (md.gap) touching the product", ["product"],
                                 registry=r)
        self.feed_stale = Counter(p + "feed_stale", "Stale-connection events (md.stale) touching the product",
                                  ["product"], registry=r)
        self.feed_reconnects = Counter(p + "feed_reconnects", "Times the product's feed left DISCONNECTED "
                                       "(reconnections)", ["product"], registry=r)
        # operations
        self.process_events = Counter(p + "process_events", "supervisord process state changes (node.process) "
                                      "by program and new state", ["program", "state"], registry=r)
        self.alerts = Counter(p + "alerts", "Alerts the alert node raised (firing or resolved, after dedupe), "
                              "whether or not a channel took them: see tickmesh_alert_deliveries_total",
                              ["kind", "severity", "resolved"], registry=r)
        self.deliveries = Counter(p + "alert_deliveries", "Alerts delivered, by channel (slack, teams; log: "
                                  "no channel took it)", ["channel"], registry=r)
        self.malformed = Counter(p + "metrics_unknown_events", "Events the metrics node received but has no "
                                 "metric for, by type", ["type"], registry=r)
        r.register(_HeartbeatCollector(self))
        self._handlers = {
            proto.FeedStatus: self._feed_status,
            proto.FeedGap: self._feed_gap, proto.FeedStale: self._feed_stale_ev,
            proto.Order: self._order, proto.Fill: self._fill, proto.Position: self._position,
            proto.PnL: self._pnl, proto.RiskDecision: self._decision, proto.RiskState: self._risk_state,
            proto.RiskBand: self._band, proto.RiskSnapshot: self._snapshot,
            proto.KillSwitch: self._killswitch, proto.RiskExposure: self._exposure,
            proto.Heartbeat: self._heartbeat, proto.ProcessEvent: self._process,
            proto.AlertEvent: self._alert,
        }

    # --- dispatch -----------------------------------------------------------------------------------
    def handle(self, env) -> bool:
        """Update metrics from one event; False when the type is not mapped (counted)."""
        self.counts["events"] += 1
        h = self._handlers.get(type(env.msg))
        if h is None:
            self.malformed.labels(env.msg.TAG).inc()
            return False
        h(env)
        return True

    def handlers(self) -> dict:
        return dict(self._handlers)

    # --- market data ----------------------------------------------------------------------------------
    def _feed_status(self, env):
        m = env.msg
        prev = self._feed_state.get(m.product)
        self._feed_state[m.product] = m.state
        self.feed_healthy.labels(m.product).set(1 if m.healthy else 0)
        if m.last_msg_age_s >= 0:
            self.feed_age.labels(m.product).set(m.last_msg_age_s)
        else:                           # marketdata's -1: no message yet, not an age
            try:
                self.feed_age.remove(m.product)
            except KeyError:
                pass
        if prev == "DISCONNECTED" and m.state != "DISCONNECTED":
            self.feed_reconnects.labels(m.product).inc()

    def _feed_gap(self, env):
        for p in env.msg.products or ["unknown"]:
            self.feed_gaps.labels(str(p)).inc()

    def _feed_stale_ev(self, env):
        for p in env.msg.products or ["unknown"]:
            self.feed_stale.labels(str(p)).inc()

    # --- orders -----------------------------------------------------------------------------------------
    def _order(self, env):
        o = env.msg
        cid = o.client_order_id
        self.orders.labels(o.status, o.product).inc()
        if cid in self._done:
            return
        first_fill = o.filled_size > 0
        if o.status in OPEN_STATUSES:
            entry = self._open.get(cid)
            if entry is None:
                entry = self._open[cid] = [o.product, False]
                self.open_orders.labels(o.product).inc()
            if first_fill and not entry[1]:
                entry[1] = True
                self._observe_t2t(o, env)
            return
        if o.status in TERMINAL_STATUSES:
            entry = self._open.pop(cid, None)
            if entry is not None:
                self.open_orders.labels(entry[0]).dec()
            if first_fill and not (entry and entry[1]):
                self._observe_t2t(o, env)
            end = o.updated_ns or env.ts_event
            if o.created_ns and end >= o.created_ns:
                self.roundtrip.labels(o.status).observe((end - o.created_ns) / 1e9)
            self._done[cid] = True
            if len(self._done) > 20000:
                self._done.popitem(last=False)

    def _observe_t2t(self, o, env):
        if o.origin_ns > 0 and env.ts_event >= o.origin_ns:
            self.t2t.observe((env.ts_event - o.origin_ns) / 1e9)

    def _fill(self, env):
        f = env.msg
        self.fills.labels(f.product, f.side, f.liquidity).inc()
        self.filled_base.labels(f.product, f.side).inc(_f(f.size))

    def _position(self, env):
        p = env.msg
        self.position.labels(p.product).set(_f(p.qty))
        self.exposure.labels(p.product).set(_f(p.exposure))
        self.mark.labels(p.product).set(_f(p.mark))
        self.avg_cost.labels(p.product).set(_f(p.avg_cost))
        self.pos_realized.labels(p.product).set(_f(p.realized_pnl))
        self.pos_unrealized.labels(p.product).set(_f(p.unrealized_pnl))

    def _pnl(self, env):
        p = env.msg
        self.realized.set(_f(p.realized))
        self.unrealized.set(_f(p.unrealized))
        self.daily.set(_f(p.daily))
        self.equity.set(_f(p.equity))
        self.fees.set(_f(p.fees))

    # --- risk ---------------------------------------------------------------------------------------------
    def _decision(self, env):
        d = env.msg
        self.decisions.labels("approved" if d.approved else "denied").inc()
        if not d.approved:
            self.denials.labels(d.code).inc()
        if d.compute_ns > 0:
            self.risk_compute.observe(d.compute_ns / 1e9)

    def _risk_state(self, env):
        self._set_trading_state(env.msg.state)

    def _set_trading_state(self, s):
        for st in set(TRADING_STATES) | {s}:
            self.trading_state.labels(st).set(1 if st == s else 0)

    def _snapshot(self, env):
        """risk.snapshot, every publish interval: the state and kill switch are known again soon
        after a metrics restart, without waiting for their next change."""
        snap = env.msg
        self._set_trading_state(snap.state)
        self.killswitch.set(1 if snap.killswitch else 0)

    def _band(self, env):
        b = env.msg
        if b.last > 0:
            self.last_price.labels(b.product).set(_f(b.last))
        ready = b.band_high > 0 and b.band_low > 0      # risk sends zeros while the band is not ready
        for kind, v in (("low", b.band_low), ("mid", b.mid), ("high", b.band_high)):
            if ready:
                self.band.labels(b.product, kind).set(_f(v))
            else:
                try:
                    self.band.remove(b.product, kind)
                except KeyError:
                    pass
        self.volatility.labels(b.product, "stddev").set(b.stddev)
        self.volatility.labels(b.product, "ewma").set(b.ewma)
        self.atr.labels(b.product).set(b.atr)

    def _killswitch(self, env):
        self.killswitch.set(1 if env.msg.engaged else 0)

    def _exposure(self, env):
        e = env.msg
        self.gross.set(_f(e.gross))
        self.net.set(_f(e.net))
        self.killswitch.set(1 if e.killswitch else 0)
        for product, x in e.exposures.items():
            self.exposure.labels(product).set(_f(x))
        for product, q in e.positions.items():
            self.position.labels(product).set(_f(q))

    # --- operations -------------------------------------------------------------------------------------
    def _heartbeat(self, env):
        hb = env.msg
        with self._lock:
            self._beats[hb.node] = (time.time_ns(), hb)

    def _process(self, env):
        self.process_events.labels(env.msg.program, env.msg.state).inc()

    def _alert(self, env):
        a = env.msg
        kind = env.topic[len(topics.ALERT):] if env.topic.startswith(topics.ALERT) else "other"
        self.alerts.labels(kind, a.severity, "true" if a.resolved else "false").inc()
        for ch in a.channels or ["log"]:
            self.deliveries.labels(str(ch)).inc()

    # --- views ------------------------------------------------------------------------------------------
    def nodes_up(self, now_ns: int = None) -> dict:
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            return {n: (now - t <= self.node_timeout_ns and hb.state == "RUNNING")
                    for n, (t, hb) in self._beats.items()}

    def open_order_ids(self) -> set:
        return set(self._open)
