"""``tickmesh ctl`` output for people: money to the product's increments, ISO-8601 UTC times, lines
that fit a terminal, the trading summary, ``--json`` after the command, and a closed pipe."""
import os
import subprocess
import sys
from decimal import Decimal

import proto
from nodes.config import MeshConfig, ProductSpec
from tests.conftest import ROOT, free_base_port
from tools import ctl

MESH = MeshConfig(product_specs={"BTC-USD": ProductSpec(),
                                 "SOL-USD": ProductSpec(base_increment=Decimal("0.001"), quote_increment=Decimal("0.001")),
                                 "DOGE-USD": ProductSpec(base_increment=Decimal("1"), quote_increment=Decimal("0.00001"))})


def test_money_to_the_products_increments_from_the_product_specs():
    m = ctl.Money(MESH)
    pos = proto.Position("BTC-USD", Decimal("0.0100000000"), Decimal("65012.537812345"), Decimal("-3.9007"),
                         Decimal("-0.0849999"), Decimal("650.0451"), Decimal("65004.5"), Decimal("3.90075"))
    r = m.record(pos)
    assert (r.qty, r.avg_cost, r.mark) == (Decimal("0.01"), Decimal("65012.54"), Decimal("65004.50"))
    assert (r.realized_pnl, r.unrealized_pnl, r.exposure, r.fees) == (Decimal("-3.90"), Decimal("-0.08"),
                                                                      Decimal("650.05"), Decimal("3.90"))
    sol = m.record(pos._replace(product="SOL-USD", qty=Decimal("2.50049"), avg_cost=Decimal("142.123456")))
    assert (str(sol.qty), str(sol.avg_cost)) == ("2.5", "142.123")        # base 0.001, quote 0.001
    doge = m.record(pos._replace(product="DOGE-USD", qty=Decimal("1500"), avg_cost=Decimal("0.0812345678")))
    assert (str(doge.qty), str(doge.avg_cost)) == ("1500", "0.08123")
    pnl = m.record(proto.PnL(Decimal("1.005"), Decimal("-2.0049"), Decimal("0"), Decimal("100000.1"), Decimal("0.1"), "d"))
    assert [str(x) for x in pnl[:5]] == ["1.00", "-2.00", "0.00", "100000.10", "0.10"]
    # a product without a spec still prints (to the cent), never crashes the view
    assert m.price("XRP-EUR", Decimal("0.123456")) == Decimal("0.12")


def test_times_are_iso_utc_and_wide_tables_fold_into_blocks():
    assert ctl.iso(1_764_876_166_017_000_000) == "2025-12-04T19:22:46.017Z"
    out = ctl.render(proto.KillSwitch(True, "demo", "manual", 1_764_876_166_017_000_000))
    assert "since    2025-12-04T19:22:46.017Z" in out and "since_ns" not in out
    rows = [{"a_long_column_name": "x" * 30, "another_long_one": "y" * 30, "third": "z" * 30}]
    folded = ctl.table(rows, width=80)
    assert all(len(l) <= 80 for l in folded.splitlines()) and folded.splitlines()[0].startswith("a_long_column_name  x")
    assert ctl.table(rows, width=200).splitlines()[0].startswith("A_LONG_COLUMN_NAME")


def test_status_lines_fit_and_say_trading_state_kill_switch_and_feeds():
    rows = {n: {"node": n, "up": True, "state": "RUNNING", "pid": 4194303, "uptime_s": 90061.0, "host": "h",
                "counters": {"published": 12_345_678_901, "handler_errors": 0, "bus_gaps.risk": 12345},
                "heard": ["heartbeat", "query"]} for n in ctl.EXPECTED}
    out = ctl.status_table(rows, width=80)
    assert all(len(l) <= 80 for l in out.splitlines()), out
    assert "1d01h" in out and "hb+query" in out
    t = {"state": "HALTED", "state_reason": "kill switch (manual): demo", "halted": True,
         "killswitch": {"engaged": True, "reason": "demo", "source": "manual", "since_ns": 1_764_876_166_017_000_000},
         "feeds": {"BTC-USD": {"marketdata": "OK", "healthy": True, "age_s": 0.25, "risk": "OK"},
                   "ETH-USD": {"marketdata": "STALE", "healthy": False, "reason": "no message for 6 s",
                               "age_s": 6.0, "risk": "FEED_STALE"},
                   "SOL-USD": {"risk": "FEED_STALE"}}}
    lines = ctl.trading_lines(t)
    assert lines == ["trading      HALTED (kill switch (manual): demo)",
                     "kill switch  ENGAGED since 2025-12-04T19:22:46.017Z by manual: demo",
                     "feed BTC-USD  ok, last message 0.2 s ago",
                     "feed ETH-USD  STALE: no message for 6 s, last message 6.0 s ago; risk refuses: FEED_STALE",
                     "feed SOL-USD  unknown (marketdata did not answer); risk refuses: FEED_STALE"]


def test_json_is_accepted_after_the_command():
    p = ctl.build_parser()
    assert p.parse_args(["status", "--json"]).json is True
    assert p.parse_args(["--json", "status"]).json is True
    assert p.parse_args(["status"]).json is False
    assert p.parse_args(["positions", "--json"]).json is True


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    conf = tmp_path / "mesh.toml"
    conf.write_text(f"[mesh]\nbase_port = {free_base_port()}\nheartbeat_s = 0.1\nrequest_timeout_ms = 100\n")
    r, w = os.pipe()
    os.close(r)                      # what `| head` does once it has its lines
    try:
        p = subprocess.run([sys.executable, "-m", "tools.ctl", "--conf", str(conf), "status"], stdout=w,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    finally:
        os.close(w)
    assert "BrokenPipeError" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 1)


def test_tap_folds_heartbeats_into_one_line_per_node():
    import io

    from proto import Envelope, topics
    from tools.tap import Tap

    def hb(node, seq, state="RUNNING", pid=100):
        msg = proto.Heartbeat(node, pid, state, 1, 2.5, {}, "h")
        return Envelope(topics.heartbeat(node), seq, node, seq, 1_764_876_166_017_000_000, 0, msg)
    frames = [hb("risk", 1), hb("execution", 1), hb("risk", 2), hb("risk", 3), hb("execution", 2),
              hb("risk", 1, pid=101), hb("risk", 2, pid=101), hb("risk", 3, "STOPPING", 101)]
    out = io.StringIO()
    tap = Tap([], [""], out=out)
    for e in frames:
        tap._show(e, 0)
    tap._finish()
    lines = out.getvalue().splitlines()
    shown = [l for l in lines if "heartbeats folded" in l]
    assert [l.split()[4:7] for l in shown] == [["risk", "RUNNING", "pid"], ["execution", "RUNNING", "pid"],
                                               ["risk", "RUNNING", "pid"], ["risk", "STOPPING", "pid"]]
    assert lines[-2:] == ["-- heartbeats: execution       2 seen, last RUNNING pid 100",
                          "-- heartbeats: risk            6 seen, last STOPPING pid 101"]
    everything = io.StringIO()
    tap = Tap([], ["node.heartbeat."], out=everything)       # asked for by topic: each one shown
    for e in frames:
        tap._show(e, 0)
    assert len(everything.getvalue().splitlines()) == len(frames)


def test_tickmesh_help_describes_every_command_in_one_line():
    from tools import cli
    text = cli.usage()
    lines = text.splitlines()
    assert all(len(l) <= 80 for l in lines), [l for l in lines if len(l) > 80]
    described = {l.split()[0]: l.split(None, 1)[1] for l in lines if l.startswith("  ") and len(l.split()) > 1}
    for name in ["node", "offline", *cli._tools(), *cli._nodes()]:
        assert name in described and described[name] != "(no description)", name
    assert "netutil" in cli._tools() and "cli" not in cli._tools()
    r = subprocess.run([sys.executable, "-m", "tools.cli", "netutil", "free-base-port"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and int(r.stdout) >= 1024 and r.stderr == ""
    r = subprocess.run([sys.executable, "-m", "tools.cli", "protodoc", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: tickmesh protodoc" in r.stdout and "wrote" not in r.stdout
