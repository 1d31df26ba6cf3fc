"""The event-listener protocol, tap formatting/statistics and ctl argument handling, without sockets."""
import io
import json
import logging
from decimal import Decimal

import pytest

import proto
from nodes.supervisor import listener
from tools import ctl, tap

log = logging.getLogger("test")


# --- supervisord event listener ------------------------------------------------------------------------

def frame(eventname, payload: str, serial=1):
    body = payload.encode()
    return (f"ver:3.0 server:supervisor serial:{serial} pool:supervisor poolserial:{serial} "
            f"eventname:{eventname} len:{len(body)}\n").encode() + body


def test_listener_converts_process_events_and_answers_the_protocol():
    stdin = io.BytesIO(
        frame("PROCESS_STATE_EXITED", "processname:execution groupname:tickmesh from_state:RUNNING expected:0 pid:4242", 1)
        + frame("PROCESS_STATE_FATAL", "processname:risk groupname:tickmesh from_state:BACKOFF", 2)
        + frame("PROCESS_STATE_RUNNING", "processname:execution groupname:tickmesh from_state:STARTING pid:4300", 3)
        + frame("TICK_5", "when:1700000000", 4))
    stdout = io.BytesIO()
    got = []
    n = listener.serve(stdin, stdout, got.append, log)
    assert n == 3
    assert stdout.getvalue() == (b"READY\n" + b"RESULT 2\nOK") * 4 + b"READY\n"
    ex, fatal, run = got
    assert ex == proto.ProcessEvent("execution", "tickmesh", "EXITED", 4242, False, "from RUNNING, unexpected exit")
    assert fatal.state == "FATAL" and fatal.program == "risk" and fatal.pid == 0 and not fatal.expected
    assert run.state == "RUNNING" and run.pid == 4300 and run.expected


def test_listener_fails_a_bad_header_and_keeps_going():
    stdin = io.BytesIO(b"garbage-without-colons\n" + frame("PROCESS_STATE_EXITED",
                       "processname:a groupname:g from_state:RUNNING expected:1 pid:1"))
    stdout = io.BytesIO()
    got = []
    assert listener.serve(stdin, stdout, got.append, log) == 1
    assert stdout.getvalue().startswith(b"READY\nRESULT 4\nFAIL")
    assert got[0].expected


def test_listener_survives_a_handler_exception():
    stdin = io.BytesIO(frame("PROCESS_STATE_EXITED", "processname:a groupname:g from_state:RUNNING expected:0 pid:1"))
    stdout = io.BytesIO()

    def boom(ev):
        raise RuntimeError("x")
    listener.serve(stdin, stdout, boom, log)
    assert stdout.getvalue() == b"READY\nRESULT 2\nOKREADY\n"


# --- tap -----------------------------------------------------------------------------------------------------

def tick_env(seq, topic="md.tick.BTC-USD", source="marketdata", ts=1_700_000_000_123_456_789):
    return proto.Envelope(topic, 9, source, seq, ts, ts,
                          proto.Tick("BTC-USD", Decimal("65000.01"), Decimal("65000"), Decimal("1.5"),
                                     Decimal("65000.02"), Decimal("2"), Decimal("1234.5")))


def test_human_line_is_aligned_and_exact():
    line = tap.format_line(tick_env(17), now_ns=1_700_000_000_125_456_789)
    assert line.startswith("22:13:20.123456  md.tick.BTC-USD ")
    assert " marketdata      17  Tick " in line
    assert "price=65000.01" in line and "bid_size=1.5" in line
    assert line.endswith("lag=2.000ms")
    other = tap.format_line(tick_env(1, topic="md.tick.ETH-USD"))
    assert line.index("marketdata") == other.index("marketdata")


def test_json_line_is_the_store_shape_with_money_as_strings():
    d = json.loads(tap.format_json(tick_env(3)))
    assert d["topic"] == "md.tick.BTC-USD" and d["type"] == "Tick" and d["source"] == "marketdata"
    assert d["seq"] == 3 and d["ts_event"] == 1_700_000_000_123_456_789
    assert d["body"]["price"] == "65000.01"
    assert proto.jsonl.loads(tap.format_json(tick_env(3))) == tick_env(3)


def test_stats_gaps_restarts_and_rates():
    st = tap.Stats()
    ts = tick_env(1).ts_event
    assert st.add(tick_env(1), ts + 1_000_000) == 0
    assert st.add(tick_env(2), ts + 3_000_000) == 0
    assert st.add(tick_env(5), ts) == 2                     # 3 and 4 missing
    assert st.add(tick_env(1), ts) == 0                     # publisher restart
    assert st.add(tick_env(1, topic="order.new", source="execution"), ts) == 0
    t = st.topics["md.tick.BTC-USD"]
    assert (t.count, t.gaps, t.restarts) == (4, 2, 1)
    assert t.lag_max == 3_000_000
    st.roll()
    assert t.last_lag == pytest.approx(1.0)                 # mean of 1, 3, 0, 0 ms
    out = st.render()
    assert "md.tick.BTC-USD" in out and "order.new" in out and "5 events" in out and "2 missing" in out


def test_tap_rejects_bad_arguments(capsys):
    assert tap.main(["--count", "-1", "--endpoint", "tcp://127.0.0.1:1"]) == 2
    assert tap.main(["--node", "nosuch"]) == 2
    assert "unknown node" in capsys.readouterr().err


# --- ctl -------------------------------------------------------------------------------------------------------

def intent(*argv):
    args = ctl.build_parser().parse_args(["order", *argv])
    return ctl.build_intent(args)


def test_order_arguments_become_an_intent():
    i = intent("buy", "btc-usd", "0.01", "--limit", "65000.5", "--tif", "IOC", "--id", "my-1")
    assert i.product == "BTC-USD" and i.side == "BUY" and i.order_type == "LIMIT"
    assert i.size == Decimal("0.01") and i.limit_price == Decimal("65000.5") and i.tif == "IOC"
    assert i.client_order_id == "my-1" and i.strategy == "ctl" and i.quote_size is None
    m = intent("sell", "ETH-USD", "100", "--quote")
    assert m.order_type == "MARKET" and m.quote_size == Decimal("100") and m.size is None
    assert m.client_order_id.startswith("ctl-")
    assert intent("buy", "BTC-USD", "1", "--limit", "1", "--post-only").post_only


@pytest.mark.parametrize("argv, msg", [
    (("buy", "BTC-USD", "abc"), "SIZE must be a decimal"),
    (("buy", "BTC-USD", "-1"), "positive"),
    (("buy", "BTC-USD", "NaN"), "positive finite"),
    (("buy", "BTC-USD", "1", "--limit", "0"), "--limit"),
    (("buy", "BTC-USD", "1", "--limit", "5", "--quote"), "market orders only"),
    (("buy", "BTC-USD", "1", "--post-only"), "--post-only needs --limit"),
    (("buy", "BTCUSD", "1"), "BASE-QUOTE"),
])
def test_bad_order_arguments(argv, msg):
    with pytest.raises(ctl.UsageError, match=msg):
        intent(*argv)


def test_ctl_usage_errors_exit_2(capsys):
    assert ctl.main([]) == 2
    assert ctl.main(["order", "buy"]) == 2
    assert ctl.main(["killswitch", "explode"]) == 2
    assert ctl.main(["order", "buy", "BTC-USD", "zero"]) == 2
    assert "SIZE must be" in capsys.readouterr().err


def test_render_tables_and_records():
    pos = proto.Position("BTC-USD", Decimal("0.5"), Decimal("100"), Decimal("0"), Decimal("1"), Decimal("50"),
                         Decimal("102"), Decimal("0"))
    out = ctl.render([pos, pos._replace(product="ETH-USD")])
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["PRODUCT", "QTY", "AVG_COST"]
    assert lines[1].split()[:2] == ["BTC-USD", "0.5"] and len(lines) == 3
    assert "equity" in ctl.render(proto.PnL(Decimal(1), Decimal(2), Decimal(3), Decimal(4), Decimal(0), "d"))
    assert ctl.render({"BTC-USD": {"qty": Decimal("1")}}).splitlines()[1].split() == ["BTC-USD", "1"]
    assert ctl.render([]) == "(none)"
