"""Alert rules, dedupe/cooldown and payloads, without sockets or HTTP."""
import dataclasses
from decimal import Decimal

import pytest

import proto
from nodes.alerts.config import AlertsConfig
from nodes.alerts.rules import Alert, AlertRules, Deduper
from nodes.alerts.senders import SendError, _check_http, slack_payload, teams_card
from nodes.config import ConfigError

S = 1_000_000_000


def env(msg, topic="t"):
    return proto.Envelope(topic, 1, "test", 1, 0, 0, msg)


def fire(key="k", **kw):
    return Alert(key, "node", "critical", "title", "text", **kw)


# --- dedupe -----------------------------------------------------------------------------------------------

def test_dedupe_sends_once_while_firing_and_resolves_once():
    d = Deduper(cooldown_s=60)
    assert d.offer(fire(), 0) is not None
    assert d.offer(fire(), 1 * S) is None                 # same key, still firing: deduped
    assert d.offer(fire(), 120 * S) is None               # even after the cooldown: still the same firing
    r = d.offer(fire(resolved=True), 121 * S)
    assert r is not None and r.resolved
    assert d.offer(fire(resolved=True), 122 * S) is None  # nothing firing: nothing to resolve
    assert d.counts == {"sent": 2, "deduped": 2, "held": 0, "dropped": 0}


def test_refire_inside_cooldown_is_held_then_sent_if_still_firing():
    d = Deduper(cooldown_s=60)
    assert d.offer(fire(), 0) is not None
    assert d.offer(fire(resolved=True), 10 * S) is not None
    assert d.offer(fire(), 20 * S) is None                # flapping: held
    assert d.due(30 * S) == []                            # cooldown not over
    due = d.due(61 * S)
    assert [a.key for a in due] == ["k"]
    assert d.due(200 * S) == []                           # sent once
    assert d.offer(fire(resolved=True), 300 * S).resolved


def test_held_alert_that_resolves_is_dropped_silently():
    d = Deduper(cooldown_s=60)
    d.offer(fire(), 0)
    d.offer(fire(resolved=True), 1 * S)
    assert d.offer(fire(), 2 * S) is None
    assert d.offer(fire(resolved=True), 3 * S) is None    # its firing was never announced
    assert d.due(100 * S) == []
    assert d.counts["dropped"] == 1


def test_oneshot_alerts_are_deduped_by_cooldown_only():
    d = Deduper(cooldown_s=10)
    a = fire("feed.gap.x", oneshot=True)
    assert d.offer(a, 0) is not None
    assert d.offer(a, 5 * S) is None
    assert d.offer(a, 11 * S) is not None
    assert d.firing() == []


def test_keys_are_independent():
    d = Deduper(cooldown_s=60)
    assert d.offer(fire("a"), 0) and d.offer(fire("b"), 0)
    assert d.firing() == ["a", "b"]


# --- rules ------------------------------------------------------------------------------------------------

@pytest.fixture
def rules():
    return AlertRules(AlertsConfig(daily_loss_threshold=Decimal("100"), drawdown_fraction=Decimal("0.1"),
                                   node_timeout_s=3.0))


def ks(engaged, reason="manual halt"):
    return env(proto.KillSwitch(engaged, reason, "manual", 1))


def pnl(daily, equity):
    d, e = Decimal(daily), Decimal(equity)
    return env(proto.PnL(Decimal(0), Decimal(0), d, e, Decimal(0), "2026-01-01"))


def hb(node, state="RUNNING"):
    return env(proto.Heartbeat(node, 42, state, 1, 1.0, {}, "host"))


def test_killswitch_engaged_and_released_only_on_change(rules):
    [a] = rules.on_event(ks(True), 0)
    assert a.key == "killswitch" and not a.resolved and a.severity == "critical"
    assert "manual halt" in a.text
    assert rules.on_event(ks(True), 1) == []
    [r] = rules.on_event(ks(False, "ok now"), 2)
    assert r.resolved and r.key == "killswitch"
    assert rules.on_event(ks(False), 3) == []


def test_released_switch_at_start_is_not_an_alert(rules):
    assert rules.on_event(ks(False), 0) == []


def test_daily_loss_threshold_fires_and_resolves(rules):
    acts = {a.key: a for a in rules.on_event(pnl("-100", "10000"), 0)}
    assert acts["pnl.daily_loss"].resolved            # exactly -threshold is not below it
    acts = {a.key: a for a in rules.on_event(pnl("-100.01", "10000"), 0)}
    assert not acts["pnl.daily_loss"].resolved and "-100.01" in acts["pnl.daily_loss"].text
    acts = {a.key: a for a in rules.on_event(pnl("-5", "10000"), 0)}
    assert acts["pnl.daily_loss"].resolved


def test_drawdown_from_peak_equity(rules):
    rules.on_event(pnl("0", "10000"), 0)
    rules.on_event(pnl("0", "12000"), 0)               # new peak
    acts = {a.key: a for a in rules.on_event(pnl("0", "10800"), 0)}
    assert acts["pnl.drawdown"].resolved               # exactly 10 % down: not below the floor
    acts = {a.key: a for a in rules.on_event(pnl("0", "10799.99"), 0)}
    assert not acts["pnl.drawdown"].resolved and "12000" in acts["pnl.drawdown"].text


def test_node_down_after_timeout_and_up_again(rules):
    rules.on_event(hb("risk"), 0)
    assert rules.check(2 * S) == []
    [down] = rules.check(4 * S)
    assert down.key == "node.down.risk" and not down.resolved
    assert rules.check(10 * S) == []                   # reported once
    [up] = rules.on_event(hb("risk"), 11 * S)
    assert up.key == "node.down.risk" and up.resolved


def test_clean_stop_is_not_down(rules):
    rules.on_event(hb("store"), 0)
    assert rules.on_event(hb("store", "STOPPED"), 1 * S) == []
    assert rules.check(60 * S) == []
    loud = AlertRules(dataclasses.replace(rules.conf, alert_on_clean_stop=True))
    loud.on_event(hb("store"), 0)
    [a] = loud.on_event(hb("store", "STOPPED"), 1 * S)
    assert a.key == "node.stopped.store" and a.severity == "warning"
    [b] = loud.on_event(hb("store"), 2 * S)
    assert b.resolved


def test_feed_rules(rules):
    g0 = int(rules.conf.feed_grace_s * 1e9)
    # never healthy since start: quiet during the grace period, then alerted
    assert rules.on_event(env(proto.FeedStatus("BTC-USD", False, "DISCONNECTED", "starting", -1.0)), 0) == []
    [a] = rules.on_event(env(proto.FeedStatus("BTC-USD", False, "STALE", "no data", 7.5)), g0)
    assert a.key == "feed.BTC-USD" and "7.5" in a.text and not a.resolved
    [b] = rules.on_event(env(proto.FeedStatus("BTC-USD", True, "OK", "", 0.1)), g0 + 1)
    assert b.resolved
    # once it has been healthy, losing it alerts at once
    [c] = rules.on_event(env(proto.FeedStatus("BTC-USD", False, "GAP", "seq gap", 0.2)), g0 + 2)
    assert c.key == "feed.BTC-USD" and not c.resolved
    [g] = rules.on_event(env(proto.FeedGap("ws", 10, 13, ["BTC-USD"])), 0)
    assert g.oneshot and g.key == "feed.gap.ws" and "10" in g.text and "13" in g.text
    [s] = rules.on_event(env(proto.FeedStale("ws", 12.0, ["ETH-USD"])), 0)
    assert s.oneshot and "ETH-USD" in s.text
    quiet = AlertRules(dataclasses.replace(rules.conf, feed_alerts=False))
    assert quiet.on_event(env(proto.FeedGap("ws", 1, 3, [])), 0) == []


def test_process_rules(rules):
    pe = lambda state, expected=False: env(proto.ProcessEvent("execution", "tickmesh", state, 99, expected, "x"))  # noqa: E731
    [a] = rules.on_event(pe("EXITED"), 0)
    assert a.key == "process.exited.execution" and a.kind == "process"
    assert rules.on_event(pe("EXITED", expected=True), 0) == []
    [f] = rules.on_event(pe("FATAL"), 0)
    assert f.key == "process.fatal.execution" and "supervisorctl start tickmesh:execution" in f.text
    res = rules.on_event(pe("RUNNING", True), 0)
    assert {r.key for r in res} == {"process.exited.execution", "process.fatal.execution"}
    assert all(r.resolved for r in res)
    assert rules.on_event(pe("BACKOFF"), 0) == []


def test_rules_ignore_other_types(rules):
    assert rules.on_event(env(proto.Query("x")), 0) == []


# --- payloads -----------------------------------------------------------------------------------------------

def test_slack_payload_has_text_and_blocks():
    p = slack_payload(Alert("killswitch", "killswitch", "critical", "Kill switch ENGAGED", "by ops"), 0, "h1")
    assert p["text"].startswith("[tickmesh] CRITICAL: Kill switch ENGAGED")
    types = [b["type"] for b in p["blocks"]]
    assert types == ["header", "section", "context"]
    assert p["blocks"][0]["text"]["type"] == "plain_text"
    assert "by ops" in p["blocks"][1]["text"]["text"]
    assert "`killswitch`" in p["blocks"][2]["elements"][0]["text"] and "h1" in p["blocks"][2]["elements"][0]["text"]
    r = slack_payload(Alert("killswitch", "killswitch", "critical", "released", "ok", resolved=True), 0)
    assert r["text"].startswith("[tickmesh] RESOLVED: released") and ":white_check_mark:" in r["blocks"][1]["text"]["text"]


def test_teams_card_is_a_message_card():
    card = teams_card(Alert("node.down.risk", "node", "critical", "Node risk is down", "no heartbeat"),
                      "http://127.0.0.1:1/hook", 0, "h1")
    p = card.payload
    assert p["@type"] == "MessageCard" and p["@context"] == "https://schema.org/extensions"
    assert p["title"] == "tickmesh CRITICAL: Node risk is down" and p["text"] == "no heartbeat"
    assert p["themeColor"] == "E81123"
    facts = {f["name"]: f["value"] for f in p["sections"][0]["facts"]}
    assert facts["key"] == "node.down.risk" and facts["host"] == "h1"


class _Resp:
    def __init__(self, code, headers=None, text=""):
        self.status_code, self.headers, self.text = code, headers or {}, text


def test_http_status_classification():
    _check_http(_Resp(200), "x")
    with pytest.raises(SendError) as e:
        _check_http(_Resp(429, {"Retry-After": "3"}), "x")
    assert e.value.retry and e.value.after == 3.0
    with pytest.raises(SendError) as e:
        _check_http(_Resp(503), "x")
    assert e.value.retry
    with pytest.raises(SendError) as e:
        _check_http(_Resp(404, text="no_service"), "x")
    assert not e.value.retry


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="alerts.drawdown_fraction"):
        AlertsConfig(drawdown_fraction=Decimal("1.5"))
    with pytest.raises(ConfigError, match="alerts.slack_api_url"):
        AlertsConfig(slack_api_url="ftp://x")
    with pytest.raises(ConfigError, match="alerts.max_attempts"):
        AlertsConfig(max_attempts=0)
