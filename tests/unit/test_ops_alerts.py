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

def warn(key="k", **kw):
    return Alert(key, "feed", "warning", "title", "text", **kw)


def test_dedupe_sends_once_while_firing_and_resolves_once():
    d = Deduper(cooldown_s=60)
    assert d.offer(fire(), 0) is not None
    assert d.offer(fire(), 1 * S) is None                 # same key, still firing: deduped
    assert d.offer(fire(), 120 * S) is None               # even after the cooldown: still the same firing
    r = d.offer(fire(resolved=True), 121 * S)
    assert r is not None and r.resolved
    assert d.offer(fire(resolved=True), 122 * S) is None  # nothing firing: nothing to resolve
    assert d.counts == {"sent": 2, "deduped": 2, "held": 0, "dropped": 0}


def test_a_critical_state_change_pages_at_once_however_soon_it_repeats():
    """The kill switch engaged, released and engaged again within seconds: three pages, none held
    (it used to hold the re-engage for the 300 s cooldown, or lose it)."""
    d = Deduper(cooldown_s=300)
    assert d.offer(fire("killswitch"), 0).text == "text"
    assert d.offer(fire("killswitch", resolved=True), 1 * S).resolved
    again = d.offer(fire("killswitch"), 2 * S)
    assert again is not None and not again.resolved and again.text == "text"
    assert d.offer(fire("killswitch"), 3 * S) is None     # a repeat of the same state: deduped
    assert d.due(10_000 * S) == []
    assert d.counts == {"sent": 3, "deduped": 1, "held": 0, "dropped": 0}


def test_a_flapping_warning_is_held_then_sent_once_with_its_flap_count():
    d = Deduper(cooldown_s=60)
    assert d.offer(warn(), 0) is not None
    assert d.offer(warn(resolved=True), 10 * S) is not None
    assert d.offer(warn(), 20 * S) is None                # flapping: held
    assert d.offer(warn(resolved=True), 21 * S) is None   # its firing was never announced: no resolve
    assert d.offer(warn(), 22 * S) is None                # held again
    assert d.due(30 * S) == []                            # cooldown not over
    [a] = d.due(61 * S)
    assert a.key == "k" and "fired 1 more time(s) since the last message" in a.text
    assert d.due(200 * S) == []                           # sent once
    assert d.offer(warn(resolved=True), 300 * S).resolved
    assert d.counts == {"sent": 4, "deduped": 0, "held": 2, "dropped": 1}
    assert d.offer(warn(), 400 * S).text == "text"        # the count was spent on that message


def test_held_warning_that_resolves_is_dropped_silently():
    d = Deduper(cooldown_s=60)
    d.offer(warn(), 0)
    d.offer(warn(resolved=True), 1 * S)
    assert d.offer(warn(), 2 * S) is None
    assert d.offer(warn(resolved=True), 3 * S) is None    # its firing was never announced
    assert d.due(100 * S) == []
    assert d.counts["dropped"] == 1


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


def fs(product, healthy, state, reason="", age=0.1):
    return env(proto.FeedStatus(product, healthy, state, reason, age))


def offered(rules, dedupe, events):
    """Feed ``(ns, env or None)`` steps through rules and dedupe as the node does (None: a timer
    tick, ``check``); the alerts that would be paged."""
    out = []
    for now, e in events:
        acts = rules.check(now) if e is None else rules.on_event(e, now)
        out += [a for a in (dedupe.offer(x, now) for x in acts) if a is not None]
        out += dedupe.due(now)
    return out


def test_a_small_feed_gap_is_one_message_and_one_resolve(rules):
    """A gap on the connection, the per-product GAP statuses, both products healthy again a few
    hundred ms later, and every-second statuses: one page and one resolve (it used to be five)."""
    d = Deduper(rules.conf.cooldown_s)
    healthy = [(0, fs("BTC-USD", True, "OK")), (0, fs("ETH-USD", True, "OK"))]
    gap = [(10 * S, env(proto.FeedGap("ws", 10, 13, ["BTC-USD", "ETH-USD"]))),
           (10 * S + 1, fs("BTC-USD", False, "GAP", "sequence gap on ws")),
           (10 * S + 2, fs("ETH-USD", False, "GAP", "sequence gap on ws")),
           (10 * S + 3, fs("BTC-USD", False, "GAP", "sequence gap on ws")),      # its every-second status
           (int(10.3 * S), fs("BTC-USD", True, "OK")),
           (int(10.4 * S), fs("ETH-USD", True, "OK")),
           (11 * S, None), (int(11.5 * S), fs("BTC-USD", True, "OK")),
           (int(12.3 * S), None), (int(12.5 * S), None), (20 * S, None)]
    sent = offered(rules, d, healthy + gap)
    assert [(a.key, a.resolved) for a in sent] == [("feed", False), ("feed", True)]
    fired, resolved = sent
    assert fired.title == "Feed gap on ws" and "from 10 to 13" in fired.text and "BTC-USD, ETH-USD" in fired.text
    assert "healthy again after 0.4 s" in resolved.text and "BTC-USD, ETH-USD" in resolved.text
    assert rules.counts == {"feed_incidents": 1, "feed_events_grouped": 0}   # the GAP statuses were the gap itself


def test_feed_incident_waits_for_every_product_and_the_settle_time(rules):
    d = Deduper(0)
    sent = offered(rules, d, [(0, fs("BTC-USD", True, "OK")), (0, fs("ETH-USD", True, "OK")),
                              (1 * S, fs("BTC-USD", False, "STALE", "no frame for 5 s", 5.0)),
                              (2 * S, fs("ETH-USD", False, "STALE", "no frame for 5 s", 5.0)),
                              (3 * S, fs("BTC-USD", True, "OK")),
                              (10 * S, None),                               # ETH-USD still stale
                              (11 * S, fs("ETH-USD", True, "OK")),
                              (12 * S, None)])                              # 1 s < feed_settle_s
    assert [(a.key, a.resolved) for a in sent] == [("feed", False)]
    assert sent[0].title == "Feed BTC-USD STALE" and "last message 5.0 s ago" in sent[0].text
    [r] = offered(rules, d, [(int(13.1 * S), None)])
    assert r.resolved and "BTC-USD, ETH-USD healthy again after 10.0 s" in r.text
    assert "1 later event(s) of the same incident" in r.text


def test_feed_rules_grace_and_no_placeholder_age(rules):
    g0 = int(rules.conf.feed_grace_s * 1e9)
    # never healthy since start: quiet during the grace period, then alerted
    assert rules.on_event(fs("BTC-USD", False, "DISCONNECTED", "starting", -1.0), 0) == []
    [a] = rules.on_event(fs("BTC-USD", False, "DISCONNECTED", "connecting", -1.0), g0)
    assert a.key == "feed" and not a.resolved and a.title == "Feed BTC-USD DISCONNECTED"
    assert "connecting; no message yet." in a.text and "-1" not in a.text
    # a stale connection folds into the open incident
    assert rules.on_event(env(proto.FeedStale("ws", 12.0, ["BTC-USD", "ETH-USD"])), g0 + 1) == []
    quiet = AlertRules(dataclasses.replace(rules.conf, feed_alerts=False))
    assert quiet.on_event(env(proto.FeedGap("ws", 1, 3, [])), 0) == []
    [s] = AlertRules(rules.conf).on_event(env(proto.FeedStale("ws", 12.0, [])), 0)
    assert s.title == "Feed stale on ws" and "No message for 12.0 s on ws (products no product listed)" in s.text


def test_process_rules(rules):
    def pe(state, expected=False, pid=99):
        return env(proto.ProcessEvent("execution", "tickmesh", state, pid, expected, "x"))
    [a] = rules.on_event(pe("EXITED"), 0)
    assert a.key == "process.exited.execution" and a.kind == "process"
    assert "saw execution (pid 99) exit: x." in a.text
    [a0] = AlertRules(rules.conf).on_event(pe("EXITED", pid=0), 0)
    assert "saw execution exit: x." in a0.text                       # no "pid 0"
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


def test_mode_chooses_the_channels_that_are_paged():
    import requests
    from nodes.alerts.senders import SlackBot, SlackWebhook, TeamsWebhook, channels_for_mode
    sess = requests.Session()
    real = SlackWebhook("https://hooks.slack.com/services/T0/B0/x", sess, 1.0)
    teams = TeamsWebhook("https://example.webhook.office.com/webhookb2/y", 1.0)
    fake = [SlackWebhook("http://127.0.0.1:8999/slack/x", sess, 1.0),
            SlackBot("http://localhost:8999/api", "t", "#c", sess, 1.0),
            TeamsWebhook("http://[::1]:8999/teams/y", 1.0)]
    assert channels_for_mode([real, teams], "live") == ([real, teams], [])
    keep, refused = channels_for_mode([real, teams] + fake, "local")
    assert keep == fake
    assert [(ch, why) for ch, why in refused] == [(real, "hooks.slack.com is not this machine"),
                                                  (teams, "example.webhook.office.com is not this machine")]
    keep, refused = channels_for_mode([real] + fake, "log")
    assert keep == [] and len(refused) == 4


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"alerts.mode: expected one of live, local, log, got 'page'"):
        AlertsConfig(mode="page")
    assert AlertsConfig().mode == "live"              # what supervisord runs: production pages
    with pytest.raises(ConfigError, match="alerts.drawdown_fraction"):
        AlertsConfig(drawdown_fraction=Decimal("1.5"))
    with pytest.raises(ConfigError, match="alerts.slack_api_url"):
        AlertsConfig(slack_api_url="ftp://x")
    with pytest.raises(ConfigError, match="alerts.max_attempts"):
        AlertsConfig(max_attempts=0)
