"""Trading states, the kill-switch latch, its state file and every automatic trigger (no sockets)."""
import json
import os
from decimal import Decimal as D

import pytest

from proto import Code, Envelope, FeedStatus, Heartbeat, KillSwitchCmd, Order, PnL, Position, ProcessEvent
from nodes.config import MeshConfig
from nodes.risk import state as S
from nodes.risk.config import RiskConfig
from nodes.risk.engine import RiskEngine

P = "BTC-USD"


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def env(msg):
    return Envelope("t", 1, "test", 1, 1, 1, msg)


def engine(tmp_path, **conf):
    clock = Clock()
    events = []
    e = RiskEngine(RiskConfig(**conf), MeshConfig(state_dir=str(tmp_path)),
                   emit=lambda t, m: events.append((t, m)), clock=clock)
    e.restore()
    e.events, e.test_clock = events, clock
    return e


def topics_of(e, topic):
    return [m for t, m in e.events if t == topic]


def pnl(e, daily, equity):
    e.on_pnl(env(PnL(D(0), D(daily), D(daily), D(equity), D(0), "2026-11-28")))


def hb(e, state="RUNNING", node="execution"):
    e.on_heartbeat(env(Heartbeat(node, 42, state, 1, 1.0, {}, "h")))


def healthy(e):
    for p in e.markets:
        e.on_status(env(FeedStatus(p, True, "OK", "", 0.1)))


# --- the state machine and the latch --------------------------------------------------------------

def test_transition_table():
    m = S.TradingStateMachine()
    assert m.state == S.ACTIVE
    assert m.transition(S.ACTIVE, "same") is None
    ev = m.transition(S.REDUCING, "loss")
    assert (ev.state, ev.previous, ev.reason) == (S.REDUCING, S.ACTIVE, "loss")
    assert m.transition(S.HALTED, "kill").previous == S.REDUCING
    assert m.transition(S.ACTIVE, "released").previous == S.HALTED
    for src, dsts in S.TRANSITIONS.items():
        assert src not in dsts
    with pytest.raises(S.IllegalTransition, match="ACTIVE -> PAUSED"):
        m.transition("PAUSED", "?")
    with pytest.raises(ValueError):
        S.TradingStateMachine("PAUSED")


def test_latch_keeps_the_first_cause_until_released():
    k = S.KillSwitchLatch()
    assert k.engage("loss", S.AUTO_DAILY_LOSS, 5)
    assert not k.engage("manual too", S.MANUAL, 6)
    assert k.record() == (True, "loss", S.AUTO_DAILY_LOSS, 5)
    assert k.release("ok", 7) and not k.engaged
    assert not k.release("again", 8)


# --- the state file -------------------------------------------------------------------------------

def test_state_file_atomic_round_trip(tmp_path):
    f = S.StateFile(tmp_path / "risk" / "state.json")
    assert f.load() is None
    f.save({"killswitch": {"engaged": True, "reason": "r", "source": "manual", "since_ns": 3}})
    d = f.load()
    assert d["version"] == S.STATE_FILE_VERSION and d["killswitch"]["engaged"] is True
    assert os.listdir(tmp_path / "risk") == ["state.json"]        # no temp file left behind
    assert (os.stat(tmp_path / "risk" / "state.json").st_mode & 0o777) == 0o600


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 99}',
                                     b'{"version": 1, "killswitch": {"engaged": "yes"}}',
                                     b'{"version": 1, "killswitch": {"engaged": false}, "peak_equity": "abc"}'])
def test_unreadable_state_file_engages_the_switch(tmp_path, content):
    path = tmp_path / "risk" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    e = engine(tmp_path)
    assert e.latch.engaged and e.latch.source == S.AUTO_STATE_FILE
    assert e.machine.state == S.HALTED


def test_engaged_switch_survives_a_restart(tmp_path):
    e = engine(tmp_path)
    e.command(KillSwitchCmd("engage", "operator says stop"))
    e2 = engine(tmp_path)                       # a new engine on the same state dir
    assert e2.latch.engaged and e2.latch.reason == "operator says stop" and e2.latch.source == S.MANUAL
    assert e2.machine.state == S.HALTED
    r = e2.command(KillSwitchCmd("release", "ok"))
    assert r.ok and not r.data.engaged
    e3 = engine(tmp_path)
    assert not e3.latch.engaged and e3.machine.state == S.ACTIVE


def test_manual_reducing_and_peak_equity_survive_a_restart(tmp_path):
    e = engine(tmp_path)
    e.command(KillSwitchCmd("reduce"))
    pnl(e, "0", "10500")
    e.persist()
    e2 = engine(tmp_path)
    assert e2.machine.state == S.REDUCING and e2.peak_equity == D("10500")


# --- commands ---------------------------------------------------------------------------------------

def test_commands(tmp_path):
    e = engine(tmp_path)
    r = e.command(KillSwitchCmd("status"))
    assert r.ok and r.data.engaged is False and "ACTIVE" in r.reason
    r = e.command(KillSwitchCmd("engage", "why"))
    assert r.ok and r.data.engaged and r.data.source == S.MANUAL
    assert topics_of(e, "risk.killswitch")[-1].engaged
    assert topics_of(e, "risk.state")[-1] == (S.HALTED, S.ACTIVE, "kill switch (manual): why")
    r = e.command(KillSwitchCmd("engage", "again"))
    assert r.ok and "already engaged" in r.reason and r.data.reason == "why"
    assert len(topics_of(e, "risk.killswitch")) == 1          # published on change only
    r = e.command(KillSwitchCmd("frobnicate"))
    assert not r.ok and r.code == Code.BAD_REQUEST


# --- automatic triggers -----------------------------------------------------------------------------

def test_daily_loss_reduces_then_engages_and_blocks_release(tmp_path):
    e = engine(tmp_path, daily_loss_limit=D("1000"), reduce_at_loss_fraction=0.5, max_drawdown=D("1e9"))
    pnl(e, "-400", "9600")
    assert e.machine.state == S.ACTIVE
    pnl(e, "-600", "9400")
    assert e.machine.state == S.REDUCING and not e.latch.engaged
    pnl(e, "-100", "9900")
    assert e.machine.state == S.ACTIVE                         # reducing is not latched
    pnl(e, "-1000", "9000")
    assert e.latch.engaged and e.latch.source == S.AUTO_DAILY_LOSS and e.machine.state == S.HALTED
    pnl(e, "-200", "9800")
    assert e.latch.engaged                                     # latched
    pnl(e, "-1200", "8800")
    r = e.command(KillSwitchCmd("release", "try"))
    assert not r.ok and r.code == Code.KILL_SWITCH and "daily PnL" in r.reason and e.latch.engaged
    pnl(e, "-10", "9990")                                      # e.g. the day rolled over
    r = e.command(KillSwitchCmd("release", "new day"))
    assert r.ok and not e.latch.engaged and e.machine.state == S.ACTIVE


def test_drawdown_from_peak_engages_and_release_rebaselines(tmp_path):
    e = engine(tmp_path, max_drawdown=D("500"), daily_loss_limit=D("1e9"))
    pnl(e, "0", "10000")
    pnl(e, "300", "10300")
    pnl(e, "0", "9900")                                        # 400 below the peak
    assert not e.latch.engaged
    pnl(e, "-200", "9800")                                     # 500 below the peak
    assert e.latch.engaged and e.latch.source == S.AUTO_DRAWDOWN
    assert e.command(KillSwitchCmd("release", "ack")).ok
    assert e.peak_equity == D("9800")
    pnl(e, "-250", "9750")
    assert not e.latch.engaged


def test_venue_error_rate(tmp_path):
    e = engine(tmp_path, max_rejects_per_min=3)

    def reject(code):
        e.on_order(env(Order("c", "", P, "BUY", "LIMIT", "GTC", D("1"), None, D("1"), False, False, "REJECTED",
                             D(0), D(0), D(0), D(0), D(0), code, "INSUFFICIENT_FUND", "", "coinbase", 0, 0)))
    for _ in range(10):
        reject(Code.RISK_UNAVAILABLE)                          # not a venue reject
    for _ in range(3):
        reject(Code.VENUE_REJECT)
    assert not e.latch.engaged
    e.test_clock.t += 61                                       # they age out of the minute
    for _ in range(3):
        reject(Code.VENUE_REJECT)
    assert not e.latch.engaged
    reject(Code.VENUE_REJECT)
    assert e.latch.engaged and e.latch.source == S.AUTO_ERROR_RATE and "4 venue rejects" in e.latch.reason
    assert e.command(KillSwitchCmd("release", "ack")).ok and len(e.rejects) == 0


def test_stale_feed_engages_after_the_grace_period(tmp_path):
    e = engine(tmp_path, stale_halt_after_s=5.0, feed_status_timeout_s=3.0)
    healthy(e)
    e.on_status(env(FeedStatus(P, False, "STALE", "silent", 4.0)))
    e.test_clock.t += 4.9
    healthy_other = FeedStatus("ETH-USD", True, "OK", "", 0.1)
    e.on_status(env(healthy_other))
    e.on_status(env(FeedStatus(P, False, "STALE", "silent", 8.9)))   # still stale: the clock runs on
    e.on_timer()
    assert not e.latch.engaged
    e.test_clock.t += 0.2
    e.on_status(env(healthy_other))
    e.on_timer()
    assert e.latch.engaged and e.latch.source == S.AUTO_STALE_FEED and P in e.latch.reason
    r = e.command(KillSwitchCmd("release", "x"))
    assert not r.ok and "feed" in r.reason
    healthy(e)
    assert e.command(KillSwitchCmd("release", "feed back")).ok


def test_short_stale_blip_and_gaps_do_not_engage(tmp_path):
    e = engine(tmp_path, stale_halt_after_s=5.0)
    healthy(e)
    e.on_status(env(FeedStatus(P, False, "STALE", "blip", 1.0)))
    e.test_clock.t += 2
    healthy(e)
    e.on_status(env(FeedStatus(P, False, "GAP", "resync", 0.0)))
    e.test_clock.t += 2.5
    healthy(e)
    e.test_clock.t += 2.5
    healthy(e)
    e.on_timer()
    assert not e.latch.engaged


def test_missing_status_counts_as_stale(tmp_path):
    e = engine(tmp_path, stale_halt_after_s=2.0, feed_status_timeout_s=3.0)
    healthy(e)
    e.test_clock.t += 4.9                                       # status 4.9 s old: stale for 1.9 s
    e.on_timer()
    assert not e.latch.engaged
    e.test_clock.t += 0.2
    e.on_timer()
    assert e.latch.engaged and e.latch.source == S.AUTO_STALE_FEED


def test_stale_halts_off(tmp_path):
    e = engine(tmp_path, stale_halts=False)
    healthy(e)
    e.on_status(env(FeedStatus(P, False, "DISCONNECTED", "ws closed", 100.0)))
    e.test_clock.t += 100
    e.on_timer()
    assert not e.latch.engaged


def test_execution_heartbeat_lost(tmp_path):
    e = engine(tmp_path, execution_heartbeat_timeout_s=3.0, stale_halts=False)
    e.test_clock.t += 100
    e.on_timer()
    assert not e.latch.engaged                                 # never seen: nothing to lose
    hb(e)
    hb(e, node="store")                                        # other nodes do not count
    e.test_clock.t += 2.9
    e.on_timer()
    assert not e.latch.engaged
    e.test_clock.t += 0.2
    e.on_timer()
    assert e.latch.engaged and e.latch.source == S.AUTO_EXECUTION_DOWN
    r = e.command(KillSwitchCmd("release", "x"))
    assert not r.ok and "execution is down" in r.reason
    n = len(topics_of(e, "risk.killswitch"))
    hb(e)                                                      # back: it hears the switch again
    assert len(topics_of(e, "risk.killswitch")) == n + 1 and topics_of(e, "risk.killswitch")[-1].engaged
    assert e.command(KillSwitchCmd("release", "back")).ok


def test_clean_execution_stop_is_not_a_loss_but_failed_is(tmp_path):
    e = engine(tmp_path, execution_heartbeat_timeout_s=1.0, stale_halts=False)
    hb(e)
    hb(e, state="STOPPED")
    e.test_clock.t += 10
    e.on_timer()
    assert not e.latch.engaged
    hb(e, state="FAILED")
    assert e.latch.engaged and "FAILED" in e.latch.reason


@pytest.mark.parametrize("program, state, engaged", [
    ("execution", "EXITED", True), ("execution", "FATAL", True), ("execution", "RUNNING", False),
    ("execution", "STOPPED", False), ("store", "FATAL", False)])
def test_supervisord_process_events(tmp_path, program, state, engaged):
    e = engine(tmp_path, stale_halts=False)
    e.on_process(env(ProcessEvent(program, "tickmesh", state, 77, False, "exit status 1")))
    assert e.latch.engaged is engaged
    if engaged:
        assert e.latch.source == S.AUTO_EXECUTION_DOWN and state in e.latch.reason


def test_state_file_write_failure_keeps_the_switch_engaged_in_memory(tmp_path):
    e = engine(tmp_path)
    (tmp_path / "risk").write_text("a file where the directory should be")
    r = e.command(KillSwitchCmd("engage", "disk"))
    assert r.ok and e.latch.engaged and e.counters["state_write_errors"] >= 1
    # and a restart that cannot read the state fails closed
    e2 = engine(tmp_path)
    assert e2.latch.engaged and e2.latch.source == S.AUTO_STATE_FILE


def test_state_file_content_is_plain_json(tmp_path):
    e = engine(tmp_path)
    e.command(KillSwitchCmd("engage", "look"))
    d = json.loads((tmp_path / "risk" / "state.json").read_text())
    assert d["killswitch"]["engaged"] is True and d["trading_state"] == S.HALTED
