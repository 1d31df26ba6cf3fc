"""The alert node on a real bus, sending to a local HTTP server that speaks Slack's and Teams' answers."""
import logging
import time

import pytest

import proto
from nodes.alerts import AlertsNode
from nodes.alerts.config import AlertsConfig
from nodes.client import RequestClient
from nodes.config import Secret
from nodes.runtime import Node, NodeStartError
from proto import topics
from tests.conftest import make_mesh, wait_until
from tests.integration.ops_sink import Sink


class Source(Node):
    def __init__(self, mesh, name, **kw):
        self.name = name
        super().__init__(mesh, **kw)

    def send(self, topic, msg):
        self.call_soon(self.publish, topic, msg)


def restart_source(mesh, name, ctx):
    """Start a new incarnation on the endpoint a stopped one held (libzmq frees it asynchronously)."""
    made = []

    def attempt():
        try:
            made.append(Source(mesh, name, context=ctx).start())
        except NodeStartError:
            return False
        return True
    wait_until(attempt, 5, interval=0.05, what=f"{name} re-binding its endpoint")
    return made[0]


def conf(**kw):
    kw.setdefault("mode", "local")          # only the local sink can be paged, whatever the secrets say
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("http_timeout_s", 2.0)
    return AlertsConfig(**kw)


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.close()


@pytest.fixture
def tcp_mesh(short_tmp):
    return make_mesh("tcp", short_tmp)


def started(mesh, ctx, cfg, secrets, *sources):
    node = AlertsNode(mesh, cfg, secrets=secrets, context=ctx).start()
    srcs = [Source(mesh, n, context=ctx).start() for n in sources]
    # the alert node has heard each source's heartbeat: its subscription is live
    wait_until(lambda: all(n in node.rules._last_seen for n in sources), 5, what="alerts hearing the sources")
    return node, srcs


def alert_bus(collector, mesh):
    """A collector on the alert node's alert.* events, returned once its subscription is live: it has
    heard the node's heartbeat (a PUB drops what it publishes before a SUB's subscription arrives)."""
    bus = collector(mesh, ["alerts"], ["alert.", topics.heartbeat("alerts")])
    bus.wait_for(lambda e: e.topic == topics.heartbeat("alerts"))
    return bus


def stop_all(*nodes):
    for n in nodes:
        n.stop()


def ks(engaged, reason="ops test"):
    return proto.KillSwitch(engaged, reason, "manual", time.time_ns())


def test_killswitch_to_slack_and_teams_with_dedupe_resolve_and_cooldown(tcp_mesh, ctx, sink, collector):
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/T0/B0/x"),
               "TEAMS_WEBHOOK_URL": Secret(sink.url + "/teams/webhookb2/y")}
    node, (risk,) = started(tcp_mesh, ctx, conf(cooldown_s=30), secrets, "risk")
    bus = alert_bus(collector, tcp_mesh)
    try:
        risk.send(topics.RISK_KILLSWITCH, ks(True, "manual halt by test"))
        risk.send(topics.RISK_KILLSWITCH, ks(True, "manual halt by test"))       # duplicate: deduped
        ev = bus.wait_for(lambda e: e.topic == "alert.killswitch" and not e.msg.resolved)
        assert ev.msg.key == "killswitch" and ev.msg.severity == "critical"
        assert sorted(ev.msg.channels) == ["slack", "teams"]
        slack, teams = sink.on("/slack/")[0].json, sink.on("/teams/")[0].json
        assert slack["text"].startswith("[tickmesh] CRITICAL: Kill switch ENGAGED")
        assert [b["type"] for b in slack["blocks"]] == ["header", "section", "context"]
        assert "manual halt by test" in slack["blocks"][1]["text"]["text"]
        assert teams["@type"] == "MessageCard" and teams["themeColor"] == "E81123"
        assert teams["title"] == "tickmesh CRITICAL: Kill switch ENGAGED"
        assert "manual halt by test" in teams["text"]

        risk.send(topics.RISK_KILLSWITCH, ks(False, "all clear"))
        res = bus.wait_for(lambda e: e.topic == "alert.killswitch" and e.msg.resolved)
        assert sorted(res.msg.channels) == ["slack", "teams"]
        assert sink.on("/slack/")[1].json["text"].startswith("[tickmesh] RESOLVED: Kill switch released")
        assert sink.on("/teams/")[1].json["themeColor"] == "107C10"

        # engaged again seconds later, well inside the cooldown: a state change, paged at once
        risk.send(topics.RISK_KILLSWITCH, ks(True, "again"))
        again = bus.wait_for(lambda e: e.topic == "alert.killswitch" and not e.msg.resolved and e is not ev)
        assert sorted(again.msg.channels) == ["slack", "teams"] and "again" in again.msg.text
        assert len(sink.on("/slack/")) == 3 and len(sink.on("/teams/")) == 3
        assert sink.on("/slack/")[2].json["text"].startswith("[tickmesh] CRITICAL: Kill switch ENGAGED")
        with RequestClient.for_node(tcp_mesh, "alerts", context=ctx, timeout_ms=1000) as c:
            info = c.call(proto.Query("alerts"))
        assert info["firing"] == ["killswitch"] and info["dedupe"]["held"] == 0
        assert info["mode"] == "local"
    finally:
        stop_all(risk, node)


def test_a_small_feed_gap_is_one_message_per_channel_and_one_resolve(tcp_mesh, ctx, sink, collector):
    """What marketdata publishes for a gap that resyncs at once: md.gap, a GAP status per product,
    then OK statuses. Slack and Teams each get one message and one resolve (it used to be five each)."""
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/T0/B0/gap"),
               "TEAMS_WEBHOOK_URL": Secret(sink.url + "/teams/webhookb2/gap")}
    node, (md,) = started(tcp_mesh, ctx, conf(feed_settle_s=0.5), secrets, "marketdata")
    bus = alert_bus(collector, tcp_mesh)
    products = ["BTC-USD", "ETH-USD"]
    try:
        for p in products:
            md.send(topics.md_status(p), proto.FeedStatus(p, True, "OK", "", 0.1))
        md.send(topics.MD_GAP, proto.FeedGap("ws", 10, 13, products))
        for p in products:
            md.send(topics.md_status(p), proto.FeedStatus(p, False, "GAP", "sequence gap on ws", 0.1))
        for p in products:
            md.send(topics.md_status(p), proto.FeedStatus(p, True, "OK", "", 0.1))
        res = bus.wait_for(lambda e: e.topic == "alert.feed" and e.msg.resolved, timeout=5)
        assert sorted(res.msg.channels) == ["slack", "teams"]
        for p in products:                  # every-second statuses after the resolve: nothing more
            md.send(topics.md_status(p), proto.FeedStatus(p, True, "OK", "", 0.1))
        # a last event from the same publisher (a product still in its start-up grace: no alert);
        # once the node has seen it, it has seen every status before it
        md.send(topics.md_status("SOL-USD"), proto.FeedStatus("SOL-USD", False, "DISCONNECTED", "starting", -1.0))
        wait_until(lambda: "SOL-USD" in node.rules._feed_bad_since, 5, what="the alert node seeing the last status")
        slack = [r.json["text"] for r in sink.on("/slack/")]
        teams = [r.json["title"] for r in sink.on("/teams/")]
        assert len(slack) == 2 and slack[0].startswith("[tickmesh] WARNING: Feed gap on ws")
        assert slack[1].startswith("[tickmesh] RESOLVED: Feed healthy again") and "BTC-USD, ETH-USD" in slack[1]
        assert teams == ["tickmesh WARNING: Feed gap on ws", "tickmesh RESOLVED: Feed healthy again"]
    finally:
        stop_all(md, node)


def test_mode_log_and_local_never_reach_a_channel_off_this_machine(tcp_mesh, ctx, sink, collector, caplog):
    """alerts.mode = log (offline and replay runs): the configured channels are not paged, the log
    says so. mode = local (the test suite): a channel off this machine is refused before any send."""
    caplog.set_level(logging.INFO, logger="tickmesh.alerts")
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/T0/B0/log"),
               "TEAMS_WEBHOOK_URL": Secret("https://tickmesh-test.invalid/webhookb2/never")}
    node, (risk,) = started(tcp_mesh, ctx, conf(mode="log"), secrets, "risk")
    bus = alert_bus(collector, tcp_mesh)
    try:
        assert node.channels == []
        risk.send(topics.RISK_KILLSWITCH, ks(True, "offline halt"))
        ev = bus.wait_for(lambda e: e.topic == "alert.killswitch")
        assert ev.msg.channels == ["log"]
        logged = [r.getMessage() for r in caplog.records]
        assert "alerts.mode = log: not paging slack (alerts go to the log only)" in logged
        assert any(m.startswith("ALERT killswitch [critical] Kill switch ENGAGED") for m in logged)
    finally:
        stop_all(risk, node)
    local = AlertsNode(tcp_mesh, conf(), secrets=secrets, context=ctx).start()
    try:
        assert [c.name for c in local.channels] == ["slack"]
        assert "alerts.mode = local: not paging teams (tickmesh-test.invalid is not this machine)" in \
            [r.getMessage() for r in caplog.records]
    finally:
        local.stop()
    assert sink.requests == [] and local.sender.counts["failed"] == 0


def test_retries_429_and_5xx_not_4xx(tcp_mesh, ctx, sink, collector):
    sink.script("/slack/hook", [(429, {"Retry-After": "0"}, "rate_limited"), (503, {}, "busy")])
    sink.script("/teams/hook", [(400, {}, "Bad payload")])
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/hook"),
               "TEAMS_WEBHOOK_URL": Secret(sink.url + "/teams/hook")}
    node, (sup,) = started(tcp_mesh, ctx, conf(), secrets, "supervisor")
    bus = alert_bus(collector, tcp_mesh)
    try:
        sup.send(topics.NODE_PROCESS, proto.ProcessEvent("execution", "tickmesh", "FATAL", 0, False, "from BACKOFF"))
        ev = bus.wait_for(lambda e: e.topic == "alert.process")
        assert ev.msg.key == "process.fatal.execution" and ev.msg.channels == ["slack"]
        assert [r.status for r in sink.on("/slack/")] == [429, 503, 200]
        assert [r.status for r in sink.on("/teams/")] == [400]          # a 4xx is final
        assert node.sender.counts["retries"] == 2 and node.sender.counts["failed"] == 1
    finally:
        stop_all(sup, node)


def test_retries_give_up_after_max_attempts(tcp_mesh, ctx, sink, collector):
    sink.script("/slack/hook", [(500, {}, "x")] * 3)
    node, (sup,) = started(tcp_mesh, ctx, conf(max_attempts=3), {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/hook")},
                           "supervisor")
    bus = alert_bus(collector, tcp_mesh)
    try:
        sup.send(topics.NODE_PROCESS, proto.ProcessEvent("risk", "tickmesh", "EXITED", 9, False, "x"))
        ev = bus.wait_for(lambda e: e.topic == "alert.process")
        assert ev.msg.channels == ["log"]                                  # delivered nowhere but the log
        assert [r.status for r in sink.on("/slack/")] == [500, 500, 500]
    finally:
        stop_all(sup, node)


def test_slack_bot_token_mode_uses_chat_post_message(tcp_mesh, ctx, sink, collector):
    sink.script("/api/chat.postMessage", [(429, {"Retry-After": "0"}, {"ok": False, "error": "ratelimited"})])
    secrets = {"SLACK_BOT_TOKEN": Secret("xoxb-test-token"), "SLACK_CHANNEL": Secret("#ops")}
    node, (ex,) = started(tcp_mesh, ctx, conf(slack_api_url=sink.url + "/api", node_timeout_s=0.6), secrets,
                          "execution")
    bus = alert_bus(collector, tcp_mesh)
    try:
        # a crash: the node vanishes without its final STOPPED heartbeat (a clean stop is not alerted)
        ex._publish_heartbeat = lambda state: None
        ex.stop()
        down = bus.wait_for(lambda e: e.topic == "alert.node" and not e.msg.resolved, timeout=5)
        assert down.msg.key == "node.down.execution" and down.msg.channels == ["slack"]
        reqs = sink.on("/api/chat.postMessage")
        assert [r.status for r in reqs] == [429, 200]
        body = reqs[-1].json
        assert body["channel"] == "#ops" and "Node execution is down" in body["text"]
        assert reqs[-1].headers["Authorization"] == "Bearer xoxb-test-token"
        ex3 = restart_source(tcp_mesh, "execution", ctx)
        try:
            up = bus.wait_for(lambda e: e.topic == "alert.node" and e.msg.resolved, timeout=5)
            assert up.msg.key == "node.down.execution"
        finally:
            ex3.stop()
    finally:
        node.stop()


def test_without_channels_alerts_go_to_the_log(tcp_mesh, ctx, collector, caplog):
    caplog.set_level(logging.WARNING, logger="tickmesh.alerts")
    node, (risk,) = started(tcp_mesh, ctx, conf(feed_grace_s=0.0), {}, "risk")
    bus = alert_bus(collector, tcp_mesh)
    try:
        risk.send(topics.PNL, proto.PnL(proto.Decimal("-1500"), proto.Decimal("0"), proto.Decimal("-1500"),
                                        proto.Decimal("98500"), proto.Decimal("1"), "2026-01-01"))
        ev = bus.wait_for(lambda e: e.topic == "alert.pnl")
        assert ev.msg.channels == ["log"] and ev.msg.key == "pnl.daily_loss"
        assert any("ALERT pnl.daily_loss" in r.getMessage() for r in caplog.records)
        # the same condition reported again is deduped (one alert per firing)
        risk.send(topics.PNL, proto.PnL(proto.Decimal("-1600"), proto.Decimal("0"), proto.Decimal("-1600"),
                                        proto.Decimal("98400"), proto.Decimal("1"), "2026-01-01"))
        with RequestClient.for_node(tcp_mesh, "alerts", context=ctx, timeout_ms=1000) as c:
            wait_until(lambda: c.call(proto.Query("alerts"))["dedupe"]["deduped"] == 1, 5, interval=0.02,
                       what="the second breach deduped")
        for _ in range(2):
            risk.send(topics.md_status("BTC-USD"), proto.FeedStatus("BTC-USD", False, "STALE", "silent", -1.0))
        ev = bus.wait_for(lambda e: e.topic == "alert.feed")
        assert ev.msg.key == "feed" and ev.msg.title == "Feed BTC-USD STALE"
        assert "silent; no message yet." in ev.msg.text
    finally:
        stop_all(risk, node)


def test_bus_loop_never_blocks_on_a_slow_channel(tcp_mesh, ctx, sink):
    """The sink holds every answer for 1 s; the node still answers requests at once."""
    import http.server
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (http.server.BaseHTTPRequestHandler,), {
        "do_POST": lambda self: (time.sleep(1.0), self.send_response(200), self.end_headers()),
        "log_message": lambda self, *a: None}))
    import threading
    t = threading.Thread(target=slow.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{slow.server_address[1]}/slack/slow"
    node, (sup,) = started(tcp_mesh, ctx, conf(), {"SLACK_WEBHOOK_URL": Secret(url)}, "supervisor")
    try:
        for i in range(3):
            sup.send(topics.NODE_PROCESS, proto.ProcessEvent(f"p{i}", "tickmesh", "FATAL", 0, False, "x"))
        with RequestClient.for_node(tcp_mesh, "alerts", context=ctx, timeout_ms=1000) as c:
            wait_until(lambda: c.call(proto.Query("alerts"))["dedupe"]["sent"] == 3, 5, interval=0.02,
                       what="three alerts offered")
            t0 = time.monotonic()
            c.call(proto.Query("status"))
            assert time.monotonic() - t0 < 0.2
            assert node.sender.pending() >= 1              # still sending in the worker
    finally:
        stop_all(sup, node)
        slow.shutdown()
        slow.server_close()


def test_its_own_unclean_death_is_alerted_by_the_next_run(tcp_mesh, ctx, sink):
    """supervisord's EXITED event for the alert node arrives while it is dead: the next run reports
    it at start (the previous run's marker is still there); supervisord's RUNNING event resolves it.
    A clean stop removes the marker: nothing to report at the next start."""
    import json
    import os
    import socket
    import subprocess
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/T0/B0/own")}
    dead = subprocess.Popen(["true"])
    dead.wait()                                     # a pid that is surely not running any more
    node = AlertsNode(tcp_mesh, conf(cooldown_s=0), secrets=secrets, context=ctx)
    marker = node.marker_path()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                  "started_ns": time.time_ns() - 60 * 10**9}))
    node.start()
    sup = Source(tcp_mesh, "supervisor", context=ctx).start()
    try:
        reqs = sink.wait_for(lambda rs: any("Process alerts exited unexpectedly" in (r.json or {}).get("text", "")
                                            for r in rs), 5, "the alert for the previous run's death")
        text = [r.json["text"] for r in reqs if "exited unexpectedly" in r.json["text"]][0]
        assert f"pid {dead.pid}" in text and "without a clean stop" in text
        assert json.loads(marker.read_text())["pid"] == os.getpid()      # this run's marker
        wait_until(lambda: "supervisor" in node.rules._last_seen, 5, what="alerts hearing supervisor")
        sup.send(topics.NODE_PROCESS, proto.ProcessEvent("alerts", "tickmesh", "RUNNING", 1, True, "from STARTING"))
        sink.wait_for(lambda rs: any("Process alerts running again" in (r.json or {}).get("text", "") for r in rs),
                      5, "resolved by supervisord's RUNNING event")
    finally:
        stop_all(sup, node)
    assert not marker.exists()
    again = AlertsNode(tcp_mesh, conf(cooldown_s=0), secrets=secrets, context=ctx).start()
    try:
        n = len(sink.requests)
        wait_until(lambda: again.marker_path().exists(), 5, what="the new run's marker")
        assert again.dedupe.counts["sent"] == 0 and len(sink.requests) == n
    finally:
        again.stop()


def _offline_with_a_crashed_alerts_run(tmp, sink, *flags):
    """``python -m nodes.offline`` on conf/mesh.toml (alerts.mode = "live" there), with a Slack webhook
    at the local sink and the marker of an alert node that died uncleanly in its state dir: the alert
    node raises "Process alerts exited unexpectedly" as it starts, whatever else the run does."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from nodes.config import MeshConfig
    from tests.conftest import ROOT
    state = tmp / "state"
    marker = MeshConfig(state_dir=str(state)).state_path("alerts", "alerts.running")
    marker.parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    marker.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started_ns": time.time_ns()}))
    env = dict(os.environ, SLACK_WEBHOOK_URL=sink.url + "/slack/T0/B0/offline")
    p = subprocess.run([sys.executable, "-m", "nodes.offline", "--duration", "2", "--quiet", "--state-dir", str(state),
                        *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "ALERT process.exited.alerts [critical] Process alerts exited unexpectedly" in p.stdout, p.stdout[-2000:]
    return p.stdout


def test_offline_runs_page_no_channel_unless_told(tmp_path, sink):
    out = _offline_with_a_crashed_alerts_run(tmp_path / "default", sink)
    assert "offline: alerts.mode = log: alerts go to the log, no channel is paged (--alerts live to page)" in out
    assert sink.requests == []
    # told: (local rather than live, so that nothing in a developer's .env can be paged from here)
    out = _offline_with_a_crashed_alerts_run(tmp_path / "told", sink, "--alerts", "local")
    assert "offline: alerts.mode = local" in out
    texts = [r.json["text"] for r in sink.on("/slack/T0/B0/offline")]
    assert any(t.startswith("[tickmesh] CRITICAL: Process alerts exited unexpectedly") for t in texts), texts
