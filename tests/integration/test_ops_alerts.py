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


def stop_all(*nodes):
    for n in nodes:
        n.stop()


def ks(engaged, reason="ops test"):
    return proto.KillSwitch(engaged, reason, "manual", time.time_ns())


def test_killswitch_to_slack_and_teams_with_dedupe_resolve_and_cooldown(tcp_mesh, ctx, sink, collector):
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/T0/B0/x"),
               "TEAMS_WEBHOOK_URL": Secret(sink.url + "/teams/webhookb2/y")}
    node, (risk,) = started(tcp_mesh, ctx, conf(cooldown_s=30), secrets, "risk")
    bus = collector(tcp_mesh, ["alerts"], ["alert."])
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

        # flapping inside the cooldown: the re-engage is held, not sent
        risk.send(topics.RISK_KILLSWITCH, ks(True, "again"))
        with RequestClient.for_node(tcp_mesh, "alerts", context=ctx, timeout_ms=1000) as c:
            wait_until(lambda: c.call(proto.Query("alerts"))["dedupe"]["held"] == 1, 5, interval=0.02,
                       what="held re-fire")
            info = c.call(proto.Query("alerts"))
        assert info["firing"] == ["killswitch"]
        assert len(sink.on("/slack/")) == 2 and len(sink.on("/teams/")) == 2
    finally:
        stop_all(risk, node)


def test_retries_429_and_5xx_not_4xx(tcp_mesh, ctx, sink, collector):
    sink.script("/slack/hook", [(429, {"Retry-After": "0"}, "rate_limited"), (503, {}, "busy")])
    sink.script("/teams/hook", [(400, {}, "Bad payload")])
    secrets = {"SLACK_WEBHOOK_URL": Secret(sink.url + "/slack/hook"),
               "TEAMS_WEBHOOK_URL": Secret(sink.url + "/teams/hook")}
    node, (sup,) = started(tcp_mesh, ctx, conf(), secrets, "supervisor")
    bus = collector(tcp_mesh, ["alerts"], ["alert."])
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
    bus = collector(tcp_mesh, ["alerts"], ["alert."])
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
    bus = collector(tcp_mesh, ["alerts"], ["alert."])
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
    bus = collector(tcp_mesh, ["alerts"], ["alert.", "node.heartbeat.alerts"])
    bus.wait_for(lambda e: e.topic == "node.heartbeat.alerts")      # subscribed (slow joiner)
    try:
        risk.send(topics.PNL, proto.PnL(proto.Decimal("-1500"), proto.Decimal("0"), proto.Decimal("-1500"),
                                        proto.Decimal("98500"), proto.Decimal("1"), "2026-01-01"))
        ev = bus.wait_for(lambda e: e.topic == "alert.pnl")
        assert ev.msg.channels == ["log"] and ev.msg.key == "pnl.daily_loss"
        assert any("ALERT pnl.daily_loss" in r.getMessage() for r in caplog.records)
        # the same condition reported again is deduped (one alert per firing)
        for _ in range(2):
            risk.send(topics.md_status("BTC-USD"), proto.FeedStatus("BTC-USD", False, "STALE", "silent", 6.0))
        ev = bus.wait_for(lambda e: e.topic == "alert.feed")
        assert ev.msg.key == "feed.BTC-USD"
        with RequestClient.for_node(tcp_mesh, "alerts", context=ctx, timeout_ms=1000) as c:
            wait_until(lambda: c.call(proto.Query("alerts"))["dedupe"]["deduped"] == 1, 5, interval=0.02,
                       what="the second FeedStatus deduped")
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
