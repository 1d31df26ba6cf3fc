"""Metrics from events, without sockets: MeshMetrics over a private registry."""
import time
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import proto
from nodes.config import ConfigError
from nodes.metrics.node import MetricsNode
from nodes.metrics.collect import MeshMetrics
from nodes.metrics.config import MetricsConfig

D = Decimal
S = 1_000_000_000


def env(msg, topic="t", ts_event=0, source="execution"):
    return proto.Envelope(topic, 1, source, 1, ts_event, ts_event, msg)


def order(cid, status, *, filled="0", created=1 * S, updated=2 * S, origin=0, product="BTC-USD"):
    return proto.Order(cid, "v-" + cid, product, "BUY", "LIMIT", "GTC", D("1"), None, D("100"), False, False,
                       status, D(filled), D("100"), D("0"), D(filled), D("100"), "OK", "", "s", "paper",
                       created, updated, origin)


@pytest.fixture
def m():
    return MeshMetrics(CollectorRegistry(), node_timeout_s=3.0)


def val(m, name, **labels):
    return m.registry.get_sample_value(name, labels)


def test_market_data_counters(m):
    """Ticks and trades are counted by the market-data node (its heartbeat), not received here:
    the metrics node does not subscribe to the busiest topics. The last price is risk's band's."""
    m.handle(env(proto.Heartbeat("marketdata", 7, "RUNNING", 1, 1.0,
                                 {"ticks.BTC-USD": 3, "trades.BTC-USD": 1, "ticks.ETH-USD": 0}, "h"),
                 source="marketdata"))
    m.handle(env(proto.RiskBand("BTC-USD", D("65000.5"), D("65000.5"), 0.0, 0.0, 0.0, D(0), D(0), "stddev"),
                 source="risk"))
    m.handle(env(proto.FeedGap("ws", 1, 5, ["BTC-USD", "ETH-USD"])))
    m.handle(env(proto.FeedStale("ws", 9.0, ["ETH-USD"])))
    assert val(m, "tickmesh_ticks_total", product="BTC-USD") == 3
    assert val(m, "tickmesh_ticks_total", product="ETH-USD") == 0
    assert val(m, "tickmesh_last_price_quote", product="BTC-USD") == 65000.5
    assert val(m, "tickmesh_trades_total", product="BTC-USD") == 1
    assert "md.tick." not in MetricsNode.subscriptions and "md.trade." not in MetricsNode.subscriptions
    assert val(m, "tickmesh_feed_gaps_total", product="ETH-USD") == 1
    assert val(m, "tickmesh_feed_stale_total", product="ETH-USD") == 1


def test_feed_reconnect_is_disconnected_then_ok(m):
    fs = lambda state, ok: env(proto.FeedStatus("BTC-USD", ok, state, "", 0.5))  # noqa: E731
    m.handle(fs("OK", True))
    assert val(m, "tickmesh_feed_last_message_age_seconds", product="BTC-USD") == 0.5
    m.handle(env(proto.FeedStatus("BTC-USD", False, "DISCONNECTED", "restarted", -1.0)))
    assert val(m, "tickmesh_feed_last_message_age_seconds", product="BTC-USD") is None   # -1 is no age
    assert val(m, "tickmesh_feed_healthy", product="BTC-USD") == 0
    m.handle(fs("DISCONNECTED", False))
    m.handle(fs("OK", True))
    assert val(m, "tickmesh_feed_reconnects_total", product="BTC-USD") == 1
    assert val(m, "tickmesh_feed_healthy", product="BTC-USD") == 1


def test_open_orders_roundtrip_and_tick_to_trade(m):
    m.handle(env(order("a", "NEW"), "order.new"))
    m.handle(env(order("a", "ACCEPTED"), "order.accepted"))
    m.handle(env(order("b", "NEW", product="ETH-USD"), "order.new"))
    assert val(m, "tickmesh_open_orders", product="BTC-USD") == 1
    assert val(m, "tickmesh_open_orders", product="ETH-USD") == 1
    # first fill at ts_event 1.25 s for an order caused by a tick received at 1.0 s
    m.handle(env(order("a", "PARTIALLY_FILLED", filled="0.5", origin=1 * S), "order.partially_filled",
                 ts_event=int(1.25 * S)))
    m.handle(env(order("a", "FILLED", filled="1", origin=1 * S, updated=int(1.5 * S)), "order.filled",
                 ts_event=int(1.5 * S)))
    assert val(m, "tickmesh_open_orders", product="BTC-USD") == 0
    assert val(m, "tickmesh_tick_to_trade_seconds_count") == 1          # first fill only
    assert val(m, "tickmesh_tick_to_trade_seconds_sum") == pytest.approx(0.25)
    assert val(m, "tickmesh_order_roundtrip_seconds_count", status="FILLED") == 1
    assert val(m, "tickmesh_order_roundtrip_seconds_sum", status="FILLED") == pytest.approx(0.5)
    # a repeated terminal event is counted by status but not observed twice
    m.handle(env(order("a", "FILLED", filled="1", origin=1 * S), "order.filled", ts_event=2 * S))
    assert val(m, "tickmesh_orders_total", status="FILLED", product="BTC-USD") == 2
    assert val(m, "tickmesh_order_roundtrip_seconds_count", status="FILLED") == 1
    m.handle(env(order("b", "REJECTED", product="ETH-USD"), "order.rejected"))
    assert val(m, "tickmesh_open_orders", product="ETH-USD") == 0
    assert val(m, "tickmesh_order_roundtrip_seconds_count", status="REJECTED") == 1
    assert m.open_order_ids() == set()


def test_positions_pnl_and_risk(m):
    m.handle(env(proto.Position("BTC-USD", D("-0.5"), D("100"), D("1.5"), D("-2"), D("50.5"), D("101"), D("0.1"))))
    assert val(m, "tickmesh_position_base", product="BTC-USD") == -0.5
    assert val(m, "tickmesh_exposure_quote", product="BTC-USD") == 50.5
    assert val(m, "tickmesh_position_unrealized_pnl_quote", product="BTC-USD") == -2
    m.handle(env(proto.PnL(D("10"), D("-3"), D("7"), D("10007"), D("0.5"), "2026-01-01")))
    assert val(m, "tickmesh_pnl_daily_quote") == 7 and val(m, "tickmesh_equity_quote") == 10007
    m.handle(env(proto.RiskDecision("x", "BTC-USD", False, "VOL_BAND", "outside band", 2000)))
    m.handle(env(proto.RiskDecision("y", "BTC-USD", True, "OK", "", 1000)))
    assert val(m, "tickmesh_risk_denials_total", code="VOL_BAND") == 1
    assert val(m, "tickmesh_risk_decisions_total", result="approved") == 1
    m.handle(env(proto.KillSwitch(True, "r", "manual", 1)))
    assert val(m, "tickmesh_killswitch_engaged") == 1
    m.handle(env(proto.RiskState("HALTED", "ACTIVE", "kill switch")))
    assert val(m, "tickmesh_trading_state", state="HALTED") == 1
    assert val(m, "tickmesh_trading_state", state="ACTIVE") == 0
    m.handle(env(proto.RiskExposure(D("60"), D("-60"), {"ETH-USD": D("2")}, {"ETH-USD": D("60")}, "ACTIVE", False)))
    assert val(m, "tickmesh_killswitch_engaged") == 0
    assert val(m, "tickmesh_exposure_gross_quote") == 60
    assert val(m, "tickmesh_position_base", product="ETH-USD") == 2


def test_heartbeats_give_node_up_and_bus_gaps(m):
    hb = proto.Heartbeat("risk", 7, "RUNNING", 1, 12.5, {"published": 10, "malformed": 2,
                                                        "bus_gaps.marketdata": 4}, "h")
    m.handle(env(hb, "node.heartbeat.risk", source="risk"))
    assert val(m, "tickmesh_node_up", node="risk") == 1
    assert val(m, "tickmesh_bus_gaps_total", node="risk", publisher="marketdata") == 4
    assert val(m, "tickmesh_node_events_published_total", node="risk") == 10
    assert val(m, "tickmesh_node_malformed_frames_total", node="risk") == 2
    assert val(m, "tickmesh_node_uptime_seconds", node="risk") == 12.5
    # an old heartbeat means down
    m._beats["risk"] = (time.time_ns() - 4 * S, hb)
    assert val(m, "tickmesh_node_up", node="risk") == 0
    assert m.nodes_up() == {"risk": False}
    m.handle(env(hb._replace(state="STOPPED"), "node.heartbeat.risk", source="risk"))
    assert val(m, "tickmesh_node_up", node="risk") == 0


def test_own_counters_appear_for_the_host_node():
    m = MeshMetrics(CollectorRegistry(), own_counters=lambda: ("metrics", 3.0, {"received": 5}, {"risk": 2}))
    assert val(m, "tickmesh_node_up", node="metrics") == 1
    assert val(m, "tickmesh_bus_gaps_total", node="metrics", publisher="risk") == 2
    assert val(m, "tickmesh_node_events_received_total", node="metrics") == 5


def test_process_alert_and_unknown_events(m):
    m.handle(env(proto.ProcessEvent("execution", "tickmesh", "EXITED", 5, False, "x")))
    m.handle(env(proto.AlertEvent("killswitch", "critical", "t", "x", False, ["slack"]), "alert.killswitch"))
    assert not m.handle(env(proto.Query("x")))
    assert val(m, "tickmesh_process_events_total", program="execution", state="EXITED") == 1
    assert val(m, "tickmesh_alerts_total", kind="killswitch", severity="critical", resolved="false") == 1
    assert val(m, "tickmesh_metrics_unknown_events_total", type="Query") == 1


STANDARD = ("process_", "python_gc_", "python_info")     # prometheus_client's own collectors, standard names


def test_names_follow_prometheus_conventions(m):
    m.handle(env(proto.Heartbeat("risk", 7, "RUNNING", 1, 1.0, {"bus_gaps.x": 1, "published": 1}, "h")))
    text = generate_latest(m.registry).decode()
    fams = list(text_string_to_metric_families(text))
    assert len(fams) > 30
    for f in fams:
        assert f.name.startswith(("tickmesh_",) + STANDARD), f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f.name
        assert f.documentation, f.name
    assert "_created" not in text                           # disable_created_metrics()


def test_process_gc_platform_and_build_info(m):
    import os
    import platform
    text = generate_latest(m.registry).decode()
    s = {x.name: x for f in text_string_to_metric_families(text) for x in f.samples}
    assert s["process_resident_memory_bytes"].value > 1e6
    assert s["process_open_fds"].value >= 3 and s["process_cpu_seconds_total"].value > 0
    assert any(n.startswith("python_gc_collections_total") for n in s)
    assert s["python_info"].labels["version"] == platform.python_version()
    b = s["tickmesh_build_info"]
    assert b.value == 1 and b.labels["version"] == "0.1.0" and b.labels["python"] == platform.python_version()
    assert set(b.labels) == {"version", "python", "pyzmq", "libzmq", "codec"}
    quiet = MeshMetrics(CollectorRegistry(), process_metrics=False)
    assert quiet.registry.get_sample_value("process_open_fds") is None
    assert os.getpid() > 0


def test_other_node_processes_of_this_host_by_their_heartbeat_pid(m):
    import os
    import socket
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"         # its interpreter is up: a real RSS
        host = socket.gethostname()
        m.handle(env(proto.Heartbeat("execution", child.pid, "RUNNING", 1, 1.0, {}, host)))
        m.handle(env(proto.Heartbeat("risk", 4242, "RUNNING", 1, 1.0, {}, "another-host")))
        m.handle(env(proto.Heartbeat("strategy", os.getpid(), "RUNNING", 1, 1.0, {}, host)))   # in-process
        rss = val(m, "tickmesh_node_process_resident_memory_bytes", node="execution")
        assert rss > 1e6 and rss != val(m, "process_resident_memory_bytes")
        assert val(m, "tickmesh_node_process_open_fds", node="execution") >= 3
        assert val(m, "tickmesh_node_process_cpu_seconds_total", node="execution") >= 0
        assert val(m, "tickmesh_node_process_resident_memory_bytes", node="risk") is None
        assert val(m, "tickmesh_node_process_resident_memory_bytes", node="strategy") is None
    finally:
        child.kill()
        child.wait(5)
        child.stdout.close()
    assert val(m, "tickmesh_node_process_resident_memory_bytes", node="execution") is None    # gone


def test_risk_state_age_from_executions_heartbeat_only_when_known(m):
    beat = lambda counters: env(proto.Heartbeat("execution", 7, "RUNNING", 1, 1.0, counters, "h"))  # noqa: E731
    m.handle(beat({"published": 3}))                                   # key absent: no sample
    assert val(m, "tickmesh_risk_state_age_seconds", node="execution") is None
    m.handle(beat({"risk_state_age_ms": -1}))                          # no state received yet
    assert val(m, "tickmesh_risk_state_age_seconds", node="execution") is None
    m.handle(beat({"risk_state_age_ms": 1250}))
    assert val(m, "tickmesh_risk_state_age_seconds", node="execution") == 1.25
    m.handle(beat({}))                                                  # gone again: nothing invented
    assert val(m, "tickmesh_risk_state_age_seconds", node="execution") is None


def test_volatility_bands_per_product_and_kind(m):
    def band(product, low, mid, high, sd=0.001, ew=0.002, atr=12.5):
        return env(proto.RiskBand(product, D(mid), D(mid), sd, ew, atr, D(low), D(high), "atr"),
                   "risk.band." + product, source="risk")
    m.handle(band("BTC-USD", "0", "65000", "0", sd=0.0, ew=0.0, atr=0.0))      # not ready: zeros
    assert val(m, "tickmesh_risk_band_quote", product="BTC-USD", kind="low") is None
    m.handle(band("BTC-USD", "64900.5", "65000", "65099.5"))
    m.handle(band("ETH-USD", "3180", "3191", "3202", atr=3.0))
    assert val(m, "tickmesh_risk_band_quote", product="BTC-USD", kind="low") == 64900.5
    assert val(m, "tickmesh_risk_band_quote", product="BTC-USD", kind="mid") == 65000
    assert val(m, "tickmesh_risk_band_quote", product="BTC-USD", kind="high") == 65099.5
    assert val(m, "tickmesh_risk_band_quote", product="ETH-USD", kind="high") == 3202
    assert val(m, "tickmesh_risk_volatility_ratio", product="BTC-USD", kind="ewma") == 0.002
    assert val(m, "tickmesh_risk_atr_quote", product="ETH-USD") == 3.0
    assert val(m, "tickmesh_metrics_unknown_events_total", type="RiskBand") is None
    m.handle(band("BTC-USD", "0", "65000", "0"))                               # not ready again (restart)
    assert val(m, "tickmesh_risk_band_quote", product="BTC-USD", kind="high") is None


def test_help_says_what_is_counted(m):
    helps = {f.name: f.documentation for f in m.registry.collect()}
    assert helps["tickmesh_alerts"].startswith("Alerts the alert node raised")
    assert "whether or not a channel took them" in helps["tickmesh_alerts"]
    m.handle(env(proto.AlertEvent("feed", "warning", "t", "x", False, ["log"]), "alert.feed"))
    m.handle(env(proto.AlertEvent("killswitch", "critical", "t", "x", False, ["slack", "teams"]), "alert.killswitch"))
    assert val(m, "tickmesh_alert_deliveries_total", channel="log") == 1
    assert val(m, "tickmesh_alert_deliveries_total", channel="teams") == 1
    assert val(m, "tickmesh_alerts_total", kind="feed", severity="warning", resolved="false") == 1


def test_two_instances_coexist():
    a, b = MeshMetrics(CollectorRegistry()), MeshMetrics(CollectorRegistry())
    a.handle(env(proto.FeedGap("ws", 1, 5, ["BTC-USD"])))
    assert a.registry.get_sample_value("tickmesh_feed_gaps_total", {"product": "BTC-USD"}) == 1
    assert b.registry.get_sample_value("tickmesh_feed_gaps_total", {"product": "BTC-USD"}) is None


def test_config_validation():
    with pytest.raises(ConfigError, match="metrics.port"):
        MetricsConfig(port=70000)
    with pytest.raises(ConfigError, match="metrics.roundtrip_buckets"):
        MetricsConfig(roundtrip_buckets=[0.5, 0.1])


def test_metrics_port_inside_the_mesh_tcp_ports_is_refused_naming_the_key():
    from nodes.config import MeshConfig
    from nodes.metrics import MetricsNode
    mesh = MeshConfig(transport="tcp", base_port=7100)
    with pytest.raises(ConfigError, match=r"metrics\.port: 7105 is one of the mesh's own tcp ports \(7100-7119"):
        MetricsNode(mesh, MetricsConfig(port=7105))
    MetricsNode(mesh, MetricsConfig(port=7120))                         # just past the range
    MetricsNode(MeshConfig(transport="ipc"), MetricsConfig(port=7105))  # no tcp ports on ipc


def _exposed_names(m) -> set:
    import socket
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:      # a node process of this host, for the tickmesh_node_process_* families
        m.handle(env(proto.Heartbeat("execution", child.pid, "RUNNING", 1, 1.0, {"risk_state_age_ms": 5},
                                     socket.gethostname())))
        m.handle(env(proto.RiskBand("BTC-USD", D("1"), D("1"), 0.1, 0.1, 0.1, D("0.9"), D("1.1"), "atr")))
        fams = list(m.registry.collect())
    finally:
        child.kill()
        child.wait(5)
    names = set()
    for fam in fams:
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
        elif fam.type == "info":
            names.add(fam.name + "_info")
        else:
            names.add(fam.name)
    return names


def test_dashboard_and_prometheus_conf_use_only_exposed_metrics(m):
    import json
    import re
    from tests.conftest import ROOT
    exposed = _exposed_names(m)
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = {n for e in exprs for n in re.findall(r"tickmesh_[a-z_]+", e)}
    for f in ("prometheus.yml", "prometheus-rules.yml"):
        used |= set(re.findall(r"tickmesh_[a-z_]+", (ROOT / "conf" / f).read_text()))
    assert used and used <= exposed, sorted(used - exposed)
    assert {p["gridPos"]["y"] for p in dash["panels"]}            # laid out
    # the product variable drives the per-product panels; the bands have their own repeated panel
    [var] = dash["templating"]["list"]
    assert var["name"] == "product" and var["multi"] and var["includeAll"]
    assert re.search(r"label_values\(tickmesh_[a-z_]+, product\)", var["query"]["query"])
    per_product = [e for e in exprs if re.search(r"tickmesh_(last_price|position|exposure|ticks|feed_healthy)"
                                                 r"(_quote|_base|_total)?\b(?!_)", e)]
    assert per_product and all('product=~"$product"' in e for e in per_product), per_product
    bands = [p for p in dash["panels"] if any("tickmesh_risk_band_quote" in t["expr"] for t in p.get("targets", []))]
    assert any(p.get("repeat") == "product" for p in bands)
    kinds = {k for p in bands for t in p["targets"] for k in re.findall(r'kind="(\w+)"', t["expr"])}
    assert kinds == {"low", "mid", "high"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dash["panels"]]
    assert len(boxes) == len(set(boxes))                          # no two panels on the same spot
