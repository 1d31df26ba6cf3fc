"""The metrics node on a real bus: scraped over HTTP and parsed with prometheus_client's parser, and
scraped by a real Prometheus server queried through its HTTP API."""
import json
import shutil
import subprocess
import time
import urllib.request
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

import proto
from nodes.metrics import MetricsNode
from nodes.metrics.config import MetricsConfig
from nodes.runtime import Node
from proto import topics
from tests.conftest import ROOT, free_port, make_mesh, wait_until
from tests.unit.test_ops_rules import require_binary

D = Decimal


class Source(Node):
    """A bare publisher standing in a node slot; the test hands it events to publish."""

    def __init__(self, mesh, name, **kw):
        self.name = name
        super().__init__(mesh, **kw)

    def send(self, topic, msg, ts_event=0):
        self.call_soon(self.publish, topic, msg, ts_event)


def scrape(port) -> dict:
    """{(name, frozenset(labels)): value} of every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(port, name, **labels):
    return scrape(port).get((name, frozenset(labels.items())))


def wait_sample(port, name, value, timeout=5.0, **labels):
    wait_until(lambda: sample(port, name, **labels) == value, timeout, interval=0.02,
               what=f"{name}{labels} == {value}")


def order(cid, status, filled="0", origin=0):
    now = time.time_ns()
    return proto.Order(cid, "v", "BTC-USD", "BUY", "MARKET", "IOC", D("0.01"), None, None, False, False, status,
                       D(filled), D("65000"), D("0.39"), D(filled), D("65000"), "OK", "", "ctl", "paper",
                       now - 2_000_000, now, origin)


def test_scrape_and_parse(mesh, ctx):
    m = MetricsNode(mesh, MetricsConfig(port=0), context=ctx).start()
    ex = Source(mesh, "execution", context=ctx).start()
    risk = Source(mesh, "risk", context=ctx).start()
    try:
        # the node sees our heartbeats: the bus is joined, so events from now on arrive
        wait_sample(m.port, "tickmesh_node_up", 1.0, node="execution")
        wait_sample(m.port, "tickmesh_node_up", 1.0, node="risk")
        origin = time.time_ns() - 3_000_000
        ex.send(topics.ORDER_NEW, order("c1", "NEW", origin=origin))
        ex.send(topics.ORDER_FILLED, order("c1", "FILLED", "0.01", origin=origin))
        ex.send(topics.fill("BTC-USD"), proto.Fill("f1", "c1", "BTC-USD", "BUY", D("65000"), D("0.01"), D("0.39"),
                                                   "TAKER", "paper"))
        ex.send(topics.position("BTC-USD"), proto.Position("BTC-USD", D("0.01"), D("65000"), D("-0.39"), D("0"),
                                                           D("650"), D("65000"), D("0.39")))
        ex.send(topics.PNL, proto.PnL(D("-0.39"), D("0"), D("-0.39"), D("99999.61"), D("0.39"), "2026-01-01"))
        risk.send(topics.RISK_DECISION, proto.RiskDecision("c2", "BTC-USD", False, "MAX_NOTIONAL", "too big", 900))
        risk.send(topics.RISK_KILLSWITCH, proto.KillSwitch(True, "test", "manual", time.time_ns()))
        # the last event of each publisher: events of one publisher arrive in order, but the two
        # publishers' streams interleave in any order (waiting on risk's alone raced the PnL)
        wait_sample(m.port, "tickmesh_killswitch_engaged", 1.0)
        wait_sample(m.port, "tickmesh_equity_quote", 99999.61)
        s = scrape(m.port)
        get = lambda name, **lb: s.get((name, frozenset(lb.items())))  # noqa: E731
        assert get("tickmesh_orders_total", status="FILLED", product="BTC-USD") == 1
        assert get("tickmesh_open_orders", product="BTC-USD") == 0
        assert get("tickmesh_order_roundtrip_seconds_count", status="FILLED") == 1
        assert get("tickmesh_tick_to_trade_seconds_count") == 1
        assert get("tickmesh_tick_to_trade_seconds_sum") >= 0.003
        assert get("tickmesh_position_base", product="BTC-USD") == 0.01
        assert get("tickmesh_exposure_quote", product="BTC-USD") == 650
        assert get("tickmesh_equity_quote") == 99999.61
        assert get("tickmesh_pnl_daily_quote") == -0.39
        assert get("tickmesh_fills_total", product="BTC-USD", side="BUY", liquidity="TAKER") == 1
        assert get("tickmesh_risk_denials_total", code="MAX_NOTIONAL") == 1
        assert get("tickmesh_node_up", node="metrics") == 1          # itself, from its own counters
        # node down once its heartbeats stop (here a clean STOPPED heartbeat)
        risk.stop()
        wait_sample(m.port, "tickmesh_node_up", 0.0, node="risk")
    finally:
        risk.stop()
        ex.stop()
        m.stop()
    assert not m.alive and m._server is None


class Execution(Source):
    """Execution's heartbeat counters as the execution node reports them: its risk state's age."""
    age_ms = None

    def extra_counters(self):
        return {} if self.age_ms is None else {"risk_state_age_ms": self.age_ms}


def test_bands_risk_state_age_and_process_metrics(mesh, ctx):
    m = MetricsNode(mesh, MetricsConfig(port=0), context=ctx).start()
    ex = Execution(mesh, "execution", context=ctx).start()
    risk = Source(mesh, "risk", context=ctx).start()
    try:
        wait_sample(m.port, "tickmesh_node_up", 1.0, node="execution")
        wait_sample(m.port, "tickmesh_node_up", 1.0, node="risk")
        assert sample(m.port, "tickmesh_risk_state_age_seconds", node="execution") is None   # not reported yet
        ex.age_ms = 750                                # the next heartbeat carries it
        wait_sample(m.port, "tickmesh_risk_state_age_seconds", 0.75, node="execution")
        risk.send(topics.band("BTC-USD"), proto.RiskBand("BTC-USD", D("65010"), D("65000"), 0.0012, 0.0015, 42.5,
                                                         D("64870"), D("65130"), "atr"))
        risk.send(topics.RISK_SNAPSHOT, proto.RiskSnapshot(1, 1, 2000, "REDUCING", "test", True, "manual", "t", 1,
                                                           False, D("100000"), 10, {}))
        wait_sample(m.port, "tickmesh_trading_state", 1.0, state="REDUCING")
        s = scrape(m.port)
        get = lambda name, **lb: s.get((name, frozenset(lb.items())))  # noqa: E731
        assert get("tickmesh_risk_band_quote", product="BTC-USD", kind="low") == 64870
        assert get("tickmesh_risk_band_quote", product="BTC-USD", kind="mid") == 65000
        assert get("tickmesh_risk_band_quote", product="BTC-USD", kind="high") == 65130
        assert get("tickmesh_risk_atr_quote", product="BTC-USD") == 42.5
        assert get("tickmesh_killswitch_engaged") == 1
        assert get("tickmesh_build_info", version="0.1.0", **{k: v for k, v in _build_labels().items()
                                                               if k != "version"}) == 1
        assert get("process_resident_memory_bytes") > 1e6 and get("process_open_fds") > 0
        assert not [k for k in s if k[0].endswith("_created")]
        assert not [k for k in s if k[0] == "tickmesh_metrics_unknown_events_total"]
    finally:
        risk.stop()
        ex.stop()
        m.stop()


def _build_labels():
    from nodes.metrics.collect import build_labels
    return build_labels()


def test_two_metrics_nodes_in_one_process(short_tmp, ctx):
    a = MetricsNode(make_mesh("tcp", short_tmp / "a"), MetricsConfig(port=0), context=ctx).start()
    b = MetricsNode(make_mesh("tcp", short_tmp / "b"), MetricsConfig(port=0), context=ctx).start()
    try:
        assert a.port != b.port
        assert sample(a.port, "tickmesh_node_up", node="metrics") == 1
        assert sample(b.port, "tickmesh_node_up", node="metrics") == 1
    finally:
        a.stop()
        b.stop()


def test_port_in_use_fails_the_start_naming_the_key(short_tmp, ctx):
    a = MetricsNode(make_mesh("tcp", short_tmp / "a"), MetricsConfig(port=0), context=ctx).start()
    try:
        b = MetricsNode(make_mesh("tcp", short_tmp / "b"), MetricsConfig(port=a.port), context=ctx)
        with pytest.raises(Exception, match="metrics.port"):
            b.start()
    finally:
        a.stop()


def _get_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def test_real_prometheus_scrapes_and_answers_a_query(short_tmp, ctx):
    exe = require_binary("prometheus")             # a skip on a laptop without it, a failure in CI
    mesh = make_mesh("tcp", short_tmp)
    m = MetricsNode(mesh, MetricsConfig(port=0), context=ctx).start()
    risk = Source(mesh, "risk", context=ctx).start()
    web = free_port()
    # the shipped conf/prometheus.yml, pointed at this endpoint and scraping every second
    shipped = (ROOT / "conf" / "prometheus.yml").read_text()
    assert "127.0.0.1:9464" in shipped and "scrape_interval: 5s" in shipped
    cfg = short_tmp / "prometheus.yml"
    cfg.write_text(shipped.replace("127.0.0.1:9464", f"127.0.0.1:{m.port}").replace("evaluation_interval: 5s",
                   "evaluation_interval: 1s").replace("scrape_interval: 5s", "scrape_interval: 1s")
                   .replace("scrape_timeout: 4s", "scrape_timeout: 1s"))
    shutil.copy(ROOT / "conf" / "prometheus-rules.yml", short_tmp / "prometheus-rules.yml")   # its rule_files
    proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={short_tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_sample(m.port, "tickmesh_node_up", 1.0, node="risk")
        risk.send(topics.RISK_KILLSWITCH, proto.KillSwitch(True, "prometheus test", "manual", time.time_ns()))
        wait_sample(m.port, "tickmesh_killswitch_engaged", 1.0)

        def engaged_in_prometheus():
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                r = _get_json(f"http://127.0.0.1:{web}/api/v1/query?query=tickmesh_killswitch_engaged")
            except OSError:
                return False                   # not listening yet
            res = r["data"]["result"]
            return r["status"] == "success" and res and res[0]["value"][1] == "1"
        wait_until(engaged_in_prometheus, 30, interval=0.25, what="Prometheus to scrape tickmesh_killswitch_engaged=1")
        r = _get_json(f"http://127.0.0.1:{web}/api/v1/query?query=tickmesh_killswitch_engaged")
        labels = r["data"]["result"][0]["metric"]
        assert labels["job"] == "tickmesh" and labels["instance"] == "tickmesh-local"
        up = _get_json(f"http://127.0.0.1:{web}/api/v1/query?query=up")
        assert up["data"]["result"][0]["value"][1] == "1"
        # the shipped rules are loaded and evaluated: the kill switch alert fires (no `for`)

        def firing():
            alerts = _get_json(f"http://127.0.0.1:{web}/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "TickmeshKillSwitchEngaged"
                    and a["state"] == "firing"]
        wait_until(firing, 30, interval=0.25, what="TickmeshKillSwitchEngaged firing in Prometheus")
        [alert] = firing()
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == "Kill switch engaged: trading halted"
        groups = _get_json(f"http://127.0.0.1:{web}/api/v1/rules")["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {"TickmeshNodeDown", "TickmeshScrapeFailing"}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        risk.stop()
        m.stop()
