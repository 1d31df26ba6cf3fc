"""tickmesh top without a terminal or a socket: the screen model built from hand-made events and
replies, its snapshot, the text it renders to, and the keys."""
import json
import re
from decimal import Decimal

import pytest

import proto
from proto import (AlertEvent, FeedGap, FeedStatus, Heartbeat, KillSwitch, KillSwitchCmd, Order, PnL, Position,
                   ProcessEvent, Reply, RiskBand, RiskDecision, RiskExposure, RiskState, topics)
from tools.top import view
from tools.top.app import apply_result
from tools.top.keys import Keys, split_keys
from tools.top.model import EXPECTED, NS, REFRESH_S, ScreenModel

T0 = 1_800_000_000 * NS


class Bus:
    """Envelopes as a subscriber gets them: encoded by a publisher's Encoder, decoded by proto."""

    def __init__(self):
        self.enc = {}

    def env(self, source, topic, msg):
        e = self.enc.setdefault(source, proto.Encoder(source))
        return proto.decode(e.encode(topic, msg, T0, T0))


def beat(bus, node, pid=100, state="RUNNING", uptime=5.0, **counters):
    return bus.env(node, topics.heartbeat(node),
                   Heartbeat(node, pid, state, T0 - int(uptime * NS), uptime, counters, "host"))


def order(coid, status, filled="0", avg="0", code="OK", reason="", product="BTC-USD"):
    return Order(coid, "v-" + coid, product, "BUY", "MARKET", "GTC", Decimal("0.01"), None, None, False, False,
                 status, Decimal(filled), Decimal(avg), Decimal(0), Decimal(filled), Decimal(avg), code, reason,
                 "ctl", "paper", T0, T0)


def all_up(model, bus, at=T0):
    for n in EXPECTED:
        model.apply(beat(bus, n), at)


@pytest.fixture
def risk_conf():
    from nodes.risk.config import RiskConfig
    return RiskConfig(max_position=Decimal("0.5"), max_exposure=Decimal("10000"),
                      max_gross_exposure=Decimal("20000"), daily_loss_limit=Decimal("1000"),
                      max_drawdown=Decimal("1000"))


def test_nodes_up_silent_stopped_exited_and_restarted():
    bus, m = Bus(), ScreenModel(heartbeat_s=1.0)
    all_up(m, bus)
    snap = m.snapshot(T0 + NS // 2)
    assert [n["node"] for n in snap["nodes"]] == list(EXPECTED)
    assert all(n["up"] for n in snap["nodes"]) and snap["nodes"][0]["uptime_s"] == 5.5
    assert snap["nodes"][0]["restarts"] == 0

    later = T0 + 5 * NS                       # nothing for 5 heartbeats: down
    for n in EXPECTED:
        if n != "store":
            m.apply(beat(bus, n, uptime=10.0), later)
    m.apply(beat(bus, "strategy", state="STOPPED"), later)
    m.apply(bus.env("supervisor", topics.NODE_PROCESS,
                    ProcessEvent("execution", "tickmesh", "EXITED", 100, False, "killed")), later + 1)
    m.apply(beat(bus, "risk", pid=200, uptime=0.5), later + 2)    # a new risk process
    rows = {n["node"]: n for n in m.snapshot(later + NS // 10)["nodes"]}
    assert rows["store"]["up"] is False and rows["store"]["why"] == "silent 5s" and rows["store"]["uptime_s"] is None
    assert rows["strategy"]["up"] is False and rows["strategy"]["why"] == "stopped"
    assert rows["execution"]["up"] is False and rows["execution"]["why"] == "supervisord: EXITED"
    assert rows["execution"]["process"]["detail"] == "killed"
    assert rows["risk"]["up"] and rows["risk"]["restarts"] == 1 and rows["risk"]["pid"] == 200
    assert rows["marketdata"]["up"] and rows["marketdata"]["heartbeat_age_s"] == 0.1

    text = view.render_text(m.snapshot(later + NS // 10), 160)
    assert re.search(r"^store\s+DOWN \(silent 5s\)", text, re.M), text
    assert re.search(r"^execution\s+DOWN \(supervisord: EXITED\)", text, re.M), text
    assert re.search(r"^marketdata\s+up\s+RUNNING", text, re.M), text


def test_node_counters_that_matter_and_bus_gaps():
    bus, m = Bus(), ScreenModel()
    m.apply(beat(bus, "marketdata", feed_gaps=2, feed_reconnects=1, published=900, **{"bus_gaps.risk": 3}), T0)
    m.apply(beat(bus, "execution", **{"exec.working_orders": 2, "exec.risk_state_age_ms": 420}), T0)
    rows = {n["node"]: n for n in m.snapshot(T0)["nodes"]}
    assert rows["marketdata"]["counters"] == {"feed_gaps": 2, "feed_reconnects": 1, "bus_gaps": 3}
    assert rows["execution"]["counters"]["exec.working_orders"] == 2
    assert m.snapshot(T0)["risk"]["execution_view_age_ms"] == 420
    assert re.search(r"^marketdata .*feed_gaps=2 feed_reconnects=1 bus_gaps=3", view.render_text(m.snapshot(T0), 160),
                     re.M)


def test_kill_switch_is_the_first_thing_on_screen():
    bus, m = Bus(), ScreenModel()
    all_up(m, bus)
    since = T0 - 125 * NS
    m.apply(bus.env("risk", topics.RISK_KILLSWITCH, KillSwitch(True, "fat finger on desk 3", "manual", since)), T0)
    m.apply(bus.env("risk", topics.RISK_STATE, RiskState("HALTED", "ACTIVE", "kill switch (manual)")), T0)
    snap = m.snapshot(T0)
    assert snap["killswitch"] == {"engaged": True, "reason": "fat finger on desk 3", "source": "manual",
                                  "since_ns": since, "since_s": 125.0}
    lines = view.render_text(snap, 100).splitlines()
    assert "KILL SWITCH ENGAGED · trading HALTED" in lines[1]
    assert "manual: fat finger on desk 3" in lines[2]
    assert "since 07:57:55Z (2m05s ago)" in lines[3]

    m.apply(bus.env("risk", topics.RISK_KILLSWITCH, KillSwitch(False, "checked", "manual", T0)), T0 + 1)
    m.apply(bus.env("risk", topics.RISK_STATE, RiskState("ACTIVE", "HALTED", "kill switch released")), T0 + 1)
    assert "TRADING ACTIVE · kill switch released" in view.render_text(m.snapshot(T0 + 1), 100).splitlines()[1]

    # risk silent: what we knew is marked as such, and orders fail closed
    later = T0 + 10 * NS
    for n in EXPECTED:
        if n != "risk":
            m.apply(beat(bus, n), later)
    top = view.render_text(m.snapshot(later), 100).splitlines()[1]
    assert top.strip("┃ ").startswith("RISK DOWN · orders fail closed · last known: TRADING ACTIVE"), top


def test_nothing_heard_shows_dashes_not_numbers():
    m = ScreenModel(products=("BTC-USD",))
    snap = m.snapshot(T0)
    assert snap["pnl"] is None and snap["killswitch"] is None and snap["trading"] is None
    assert snap["feeds"] == [{"product": "BTC-USD", "state": None, "healthy": None, "reason": None,
                              "last_msg_age_s": None, "gaps": 0, "reconnects": 0, "stale": 0}]
    text = view.render_text(snap, 120)
    assert "TRADING STATE UNKNOWN" in text.splitlines()[1]
    assert "PnL: realized — · unrealized — · daily — · equity —" in text
    assert re.search(r"^marketdata\s+DOWN \(never heard\)\s+—\s+—\s+—\s+—\s+—", text, re.M), text
    assert "limits used: gross — · daily loss — · drawdown — · rejects —" in text
    assert "0.00" not in text


def test_orders_fills_positions_pnl_and_refusals(risk_conf):
    bus, m = Bus(), ScreenModel(limits=risk_conf)
    all_up(m, bus)
    ex = "execution"
    m.apply(bus.env(ex, topics.ORDER_NEW, order("o-1", "NEW")), T0)
    m.apply(bus.env(ex, topics.ORDER_NEW, order("o-2", "ACCEPTED")), T0)
    assert [o["id"] for o in m.snapshot(T0)["orders"]] == ["o-1", "o-2"]
    m.apply(bus.env(ex, topics.ORDER_FILLED, order("o-1", "FILLED", "0.01", "65000.5")), T0 + 1)
    m.apply(bus.env(ex, topics.position("BTC-USD"),
                    Position("BTC-USD", Decimal("0.01"), Decimal("65000.5"), Decimal("-0.26"), Decimal("0.12"),
                             Decimal("650.02"), Decimal("65012.5"), Decimal("0.26"))), T0 + 2)
    m.apply(bus.env(ex, topics.PNL, PnL(Decimal("-0.26"), Decimal("0.12"), Decimal("-0.14"), Decimal("99999.86"),
                                        Decimal("0.26"), "2027-01-15")), T0 + 3)
    m.apply(bus.env("risk", topics.RISK_DECISION,
                    RiskDecision("o-3", "BTC-USD", False, "MAX_POSITION", "position 0.6 > 0.5", 900)), T0 + 4)
    m.apply(bus.env("risk", topics.RISK_DECISION, RiskDecision("o-4", "BTC-USD", True, "OK", "", 900)), T0 + 4)
    m.apply(bus.env(ex, topics.ORDER_REJECTED, order("o-3", "REJECTED", code="MAX_POSITION",
                                                     reason="position 0.6 > 0.5")), T0 + 5)
    snap = m.snapshot(T0 + 6)
    assert [o["id"] for o in snap["orders"]] == ["o-2"]
    assert [(r["id"], r["kind"], r["code"]) for r in snap["recent"]] == [
        ("o-1", "NEW", None), ("o-2", "ACCEPTED", None), ("o-1", "FILLED", None),
        ("o-3", "refusal", "MAX_POSITION"), ("o-3", "REJECTED", "MAX_POSITION")]
    assert (snap["recent"][2]["filled"], snap["recent"][2]["avg_price"]) == ("0.01", "65000.5")
    assert view.what(snap["recent"][2]) == "BUY 0.01 filled 0.01 @ 65000.5"
    assert view.what(snap["recent"][3]) == "refused by risk"
    assert snap["positions"][0]["size"] == "0.01" and snap["positions"][0]["mark"] == "65012.5"
    assert snap["pnl"]["equity"] == "99999.86" and snap["pnl"]["daily"] == "-0.14"
    assert snap["risk"]["products"][0]["position_pct"] == "2.0"           # 0.01 of 0.5
    assert snap["risk"]["products"][0]["exposure_pct"] == "6.5"           # 650.02 of 10000
    assert snap["risk"]["limits"]["daily_loss_pct"] == "0.0"              # 0.14 of 1000, one decimal

    text = view.render_text(snap, 160)
    assert re.search(r"BTC-USD\s+0\.01\s+65000\.50\s+65012\.50\s+0\.12", text), text
    assert "PnL: realized -0.26 · unrealized 0.12 · daily -0.14 · equity 99999.86" in text
    assert re.search(r"o-3\s+refusal\s+BTC-USD\s+refused by risk\s+MAX_POSITION\s+position 0\.6 > 0\.5", text), text
    assert re.search(r"o-1\s+FILLED\s+BTC-USD\s+BUY 0\.01 filled 0\.01 @ 65000\.5", text), text
    assert re.search(r"\so-2\s+BTC-USD\s+BUY\s+0\.01\s+MARKET\s+—\s+0\s+ACCEPTED$", text, re.M), text  # working


def test_feed_health_gaps_reconnects_and_age():
    bus, m = Bus(), ScreenModel(products=("BTC-USD", "ETH-USD"))
    md = "marketdata"
    m.apply(bus.env(md, topics.md_status("BTC-USD"), FeedStatus("BTC-USD", False, "DISCONNECTED", "socket closed", 2.0)), T0)
    m.apply(bus.env(md, topics.MD_GAP, FeedGap("coinbase#1", 10, 13, ["BTC-USD", "ETH-USD"])), T0)
    m.apply(bus.env(md, topics.md_status("BTC-USD"), FeedStatus("BTC-USD", True, "OK", "", 0.1)), T0 + NS)
    snap = m.snapshot(T0 + 3 * NS)
    btc, eth = snap["feeds"]
    assert (btc["state"], btc["healthy"], btc["reconnects"], btc["gaps"]) == ("OK", True, 1, 1)
    assert btc["last_msg_age_s"] == 2.1                 # 0.1 s at the event, heard 2 s ago
    assert (eth["state"], eth["gaps"], eth["reconnects"]) == (None, 1, 0)
    assert re.search(r"^BTC-USD\s+OK\s+2\.1s\s+1\s+1\s+0", view.render_text(snap, 120), re.M)


def test_risk_reply_bands_limits_and_age(risk_conf):
    m = ScreenModel(limits=risk_conf)
    band = RiskBand("BTC-USD", Decimal("65000"), Decimal("65000.5"), 1e-4, 1e-4, 0.0, Decimal("64900.1"),
                    Decimal("65100.9"), "stddev")
    data = {"state": "REDUCING", "state_reason": "daily loss at 80% of the limit",
            "killswitch": KillSwitch(False, "", "", 0),
            "exposure": RiskExposure(Decimal("13000"), Decimal("13000"), {"BTC-USD": Decimal("0.2")},
                                     {"BTC-USD": Decimal("13000")}, "REDUCING", False),
            "bands": {"BTC-USD": band,
                      # a newer risk answers bands as plain maps: read the same
                      "ETH-USD": {"last": "3200", "mid": "3200.5", "stddev": 1e-4, "ewma": 1e-4, "atr": 0.0,
                                  "band_low": "3190.1", "band_high": "3210.9", "method": "ewma", "width": "10.4"}},
            "peak_equity": Decimal("100900"), "rejects_last_min": 5, "release_blockers": [],
            "pnl": None}
    assert m.apply_reply("risk", "risk", data, T0)
    m.pnl = (PnL(Decimal(0), Decimal(0), Decimal("-800"), Decimal("100000"), Decimal(0), "2027-01-15"), T0)
    snap = m.snapshot(T0 + 2 * NS)
    r = snap["risk"]
    assert r["age_s"] == 2.0
    btc, eth = r["products"]
    assert (btc["band_low"], btc["band_high"], btc["position_pct"], btc["exposure_pct"]) == \
        ("64900.1", "65100.9", "40.0", "130.0")
    assert (eth["band_low"], eth["method"], eth["position"]) == ("3190.1", "ewma", None)
    assert r["limits"] == {"gross_exposure_pct": "65.0", "daily_loss_pct": "80.0", "drawdown_pct": "90.0",
                           "rejects_pct": "50.0"}
    text = view.render_text(snap, 160)
    assert "TRADING REDUCING" in text.splitlines()[1] and "state reason: daily loss at 80% of the limit" in text
    assert "limits used: gross 65.0% · daily loss 80.0% · drawdown 90.0% · rejects 50.0%" in text
    assert re.search(r"RISK · state age 2\.0s", text)


def test_risk_snapshot_event_when_the_protocol_has_it(risk_conf):
    cls = proto.REGISTRY.get("RiskSnapshot")
    if cls is None:
        pytest.skip("proto has no RiskSnapshot message yet")
    fields = {"version": 7, "epoch_ns": T0, "max_age_ms": 1500, "state": "HALTED", "state_reason": "kill switch",
              "killswitch": True, "ks_source": "manual", "ks_reason": "drill", "ks_since_ns": T0,
              "flatten_on_halt": False, "max_gross_exposure": Decimal("40000"), "max_orders_per_s": 20,
              "products": {"BTC-USD": {"max_position": "0.04", "max_exposure": "5000"}}}
    msg = cls(**{f: fields[f] for f in cls._fields if f in fields})
    bus, m = Bus(), ScreenModel(limits=risk_conf)
    m.apply(bus.env("risk", "risk.snapshot", msg), T0)
    m.apply(bus.env("execution", topics.position("BTC-USD"),
                    Position("BTC-USD", Decimal("0.01"), Decimal("65000"), Decimal(0), Decimal(0),
                             Decimal("650"), Decimal("65000"), Decimal(0))), T0)
    snap = m.snapshot(T0 + NS)
    assert snap["killswitch"]["engaged"] and snap["killswitch"]["reason"] == "drill"
    assert snap["trading"]["state"] == "HALTED" and snap["risk"]["version"] == 7
    assert snap["risk"]["products"][0]["position_pct"] == "25.0"       # risk's own limit, not the config's


def test_filter_by_product():
    bus, m = Bus(), ScreenModel(products=("BTC-USD", "ETH-USD"))
    for p in ("BTC-USD", "ETH-USD"):
        m.apply(bus.env("marketdata", topics.md_status(p), FeedStatus(p, True, "OK", "", 0.1)), T0)
        m.apply(bus.env("execution", topics.ORDER_NEW, order("o-" + p, "NEW", product=p)), T0)
    snap = m.snapshot(T0, "ETH-USD")
    assert [f["product"] for f in snap["feeds"]] == ["ETH-USD"]
    assert [o["id"] for o in snap["orders"]] == ["o-ETH-USD"]
    assert [r["id"] for r in snap["recent"]] == ["o-ETH-USD"]
    text = view.render_text(snap, 120)
    assert "BTC-USD" not in text and "filter: ETH-USD" in text


@pytest.mark.parametrize("width", [30, 60, 80, 100, 149, 150, 200])
def test_every_width_fits_and_keeps_the_essentials(width):
    bus, m = Bus(), ScreenModel(products=("BTC-USD",))
    all_up(m, bus)
    m.apply(bus.env("risk", topics.RISK_KILLSWITCH, KillSwitch(True, "a long reason " * 8, "manual", T0)), T0)
    m.apply(bus.env("execution", topics.ORDER_NEW, order("ctl-0123456789abcdef0123", "NEW")), T0)
    m.apply(beat(bus, "store", **{"events_stored": 10**9, "events_dropped": 0, "store_write_errors": 0}), T0)
    text = view.render_text(m.snapshot(T0), width)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width
    assert "KILL SWITCH ENGAGED" in lines[1]
    if width < 60:
        return                   # too narrow for the columns: cut, but nothing spills over
    for head in ("NODES", "FEEDS", "RISK", "POSITIONS", "WORKING ORDERS", "ORDER EVENTS AND REFUSALS", "ALERTS"):
        assert any(ln.startswith(head) or f"  {head}" in ln for ln in lines), (head, text)
    for col in ("UP", "UPTIME", "HB AGE", "MARK", "UNREAL", "CODE"):
        assert col in text, (col, text)


def test_json_snapshot_is_plain_with_exact_money():
    bus, m = Bus(), ScreenModel()
    m.apply(bus.env("execution", topics.PNL, PnL(Decimal("0.10"), Decimal("-1E-8"), Decimal("0.1"),
                                                 Decimal("100000.100000000001"), Decimal(0), "2027-01-15")), T0)
    m.apply(bus.env("alerts", topics.alert("killswitch"),
                    AlertEvent("killswitch", "critical", "Kill switch ENGAGED", "manual: drill", False, ["log"])), T0)
    out = json.loads(json.dumps(m.snapshot(T0)))
    assert out["pnl"]["equity"] == "100000.100000000001" and out["pnl"]["unrealized"] == "-1E-8"
    assert out["alerts"][0]["title"] == "Kill switch ENGAGED" and out["alerts"][0]["channels"] == ["log"]
    assert "ALERTS" in view.render_text(out, 120) and "Kill switch ENGAGED" in view.render_text(out, 120)


def test_queries_at_start_on_return_and_at_a_modest_interval():
    bus, m = Bus(), ScreenModel(heartbeat_s=1.0)
    first = m.due_queries(T0)
    assert ("risk", "risk") in first and ("execution", "positions") in first and ("store", "status") in first
    assert m.due_queries(T0 + NS) == []                       # nothing again without a reason
    all_up(m, bus, T0 + NS)
    assert m.due_queries(T0 + 2 * NS) == []
    # a new execution process: its state is asked at once
    m.apply(beat(bus, "execution", pid=999), T0 + 2 * NS)
    assert {w for n, w in m.due_queries(T0 + 2 * NS)} == {"status", "positions", "orders", "pnl"}
    # store goes silent: not asked while down; asked when its heartbeats come back
    for n in EXPECTED:
        if n != "store":
            m.apply(beat(bus, n, pid=999 if n == "execution" else 100), T0 + 6 * NS)
    m.note_down(T0 + 6 * NS)
    assert all(n != "store" for n, _ in m.due_queries(T0 + 6 * NS))
    m.apply(beat(bus, "store"), T0 + 7 * NS)
    assert m.due_queries(T0 + 7 * NS) == [("store", "status")]
    # every REFRESH_S, the nodes that are up
    later = T0 + int((REFRESH_S + 8) * NS)
    for n in EXPECTED:
        m.apply(beat(bus, n, pid=999 if n == "execution" else 100), later)
    assert {n for n, _ in m.due_queries(later)} == set(EXPECTED)


def test_replies_fill_the_model():
    m = ScreenModel()
    pos = Position("ETH-USD", Decimal("-1.5"), Decimal("3200"), Decimal(0), Decimal("3"), Decimal("4797"),
                   Decimal("3198"), Decimal(0))
    assert m.apply_reply("execution", "positions", [pos], T0)
    assert m.apply_reply("execution", "orders", [order("w-1", "ACCEPTED"), order("x", "FILLED", "0.01", "1")], T0)
    assert m.apply_reply("execution", "pnl", PnL(Decimal(1), Decimal(2), Decimal(3), Decimal(4), Decimal(0), "d"), T0)
    assert m.apply_reply("store", "status", {"node": "store", "state": "RUNNING", "pid": 7, "uptime_s": 12.0,
                                             "counters": {"events_stored": 5}, "bus_gaps": {"marketdata": 2}}, T0)
    assert m.apply_reply("alerts", "alerts", {"firing": ["killswitch"], "dedupe": {}}, T0)
    assert m.apply_reply("marketdata", "feed", {"products": {"BTC-USD": {"state": "OK", "healthy": True, "reason": "OK",
                                                                         "age_s": 0.2}},
                                                "counters": {"feed_gaps": 4}}, T0)
    assert not m.apply_reply("store", "store", {"anything": 1}, T0)
    snap = m.snapshot(T0 + NS)
    assert snap["positions"][0]["size"] == "-1.5" and [o["id"] for o in snap["orders"]] == ["w-1"]
    store = next(n for n in snap["nodes"] if n["node"] == "store")
    assert store["up"] and store["uptime_s"] == 13.0 and store["counters"] == {"events_stored": 5, "bus_gaps": 2}
    assert snap["alerts_firing"] == ["killswitch"] and snap["feed_totals"] == {"feed_gaps": 4}
    assert snap["feeds"][0]["last_msg_age_s"] == 1.2


def test_kill_switch_command_outcome_is_said_in_words():
    from nodes.client import RequestTimeout
    m = ScreenModel()
    cmd = KillSwitchCmd("engage", "drill (tickmesh top)")
    ks = KillSwitch(True, "drill (tickmesh top)", "manual", T0)
    apply_result(m, ("killswitch", "risk", cmd, Reply(True, "OK", "kill switch engaged", ks)), T0)
    assert m.message == "kill switch engage done: kill switch engaged" and m.killswitch == (ks, T0)
    apply_result(m, ("killswitch", "risk", KillSwitchCmd("release", "x"),
                     Reply(False, "KILL_SWITCH", "cannot release: execution is down", None)), T0)
    assert m.message == "kill switch release REFUSED (KILL_SWITCH): cannot release: execution is down"
    apply_result(m, ("killswitch", "risk", cmd, RequestTimeout("tcp://127.0.0.1:7103", 1000)), T0)
    assert m.message.startswith("kill switch engage: risk did not answer (TIMEOUT")
    assert "kill switch engage: risk did not answer" in view.render_text(m.snapshot(T0), 120)


def test_keys_only_k_and_r_change_state_and_only_after_reason_and_yes():
    k = Keys()
    # every other key does nothing at all
    for ch in "abcdefghijlmnopstuvwxyzABCDEFGHIJKLMNOPRSTUVWXYZ0123456789!@#$%^&*()-_=+[]{};:'\",.<>?\\| ":
        assert k.feed(ch) is None and k.mode is None, ch
    for key in ("enter", "esc", "backspace"):
        assert k.feed(key) is None and k.mode is None
    assert k.feed("q") == ("quit",)

    assert k.feed("k") is None and "reason" in k.prompt
    assert k.feed("enter") is None and k.note == "a reason is required" and k.mode == "engage"
    for ch in "fat fingerX":
        k.feed(ch)
    k.feed("backspace")
    assert k.feed("enter") is None and k.prompt == "ENGAGE the kill switch with reason 'fat finger'? [y/N]"
    assert k.feed("y") == ("engage", "fat finger") and k.mode is None

    k.feed("k"), k.feed("x"), k.feed("enter")
    assert k.feed("n") is None and k.note == "engage cancelled (not confirmed)"
    k.feed("r"), k.feed("x")
    assert k.feed("esc") is None and k.mode is None and k.note == "cancelled"
    k.feed("r"), k.feed("o"), k.feed("k"), k.feed("enter")
    assert k.feed("Y") == ("release", "ok")

    k.feed("/")
    for ch in "eth-usd":
        k.feed(ch)
    assert k.feed("enter") == ("filter", "ETH-USD")
    k.feed("/")
    assert k.feed("enter") == ("filter", "")


def test_terminal_input_to_keys():
    assert split_keys("k\x1b[Aab\r\x7f\x1bq") == ["k", "a", "b", "enter", "backspace", "esc", "q"]
    assert split_keys("\x1bOP\x1b[15~x") == ["x"]


def test_short_terminal_keeps_the_banner_on_top_and_the_prompt_at_the_bottom():
    import io
    from rich.console import Console
    bus, m = Bus(), ScreenModel(products=("BTC-USD", "ETH-USD"))
    all_up(m, bus)
    m.apply(bus.env("risk", topics.RISK_KILLSWITCH, KillSwitch(True, "drill", "manual", T0)), T0)
    keys = Keys()
    keys.feed("k")
    for ch in "why":
        keys.feed(ch)
    buf = io.StringIO()
    con = Console(file=buf, width=80, height=20, color_system=None, force_terminal=False, legacy_windows=False)
    con.print(view.render_screen(m.snapshot(T0), con, keys.prompt, keys.note))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 20
    assert "KILL SWITCH ENGAGED" in lines[1]
    assert lines[-2].startswith("ENGAGE the kill switch: reason (Enter to continue, Esc to cancel): why_")
    assert lines[-1].startswith("k kill switch · r release · / filter · q quit · filter: all")
