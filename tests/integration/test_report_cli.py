"""``tickmesh report`` as a user runs it (a subprocess through the console script's dispatcher) on
store files: the page, its PNG copies and report.json; several runs compared; errors."""
import io
import json
import subprocess
import sys
from decimal import Decimal as D

import pytest
from PIL import Image, ImageStat

from proto import KillSwitch, RiskBand, RiskState
from tests.conftest import ROOT
from tests.unit.test_report_figures import NS, Store, s
from tools.report import figures as F
from tools.report import html as H


def tickmesh(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tools.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_dir(tmp_path, name="run-a", drift="1", gap=False, closed=True):
    """A run's state dir with a store file: two strategies, two products, fills, bands, a kill-switch
    episode and a REDUCING spell."""
    st = Store()
    st.pnl(s(0))
    for k in range(0, 120):
        btc = D(65000) + D(drift) * k + (D(k % 7) - 3) * 2
        eth = D(3200) - D(k % 5)
        st.tick(s(k), "BTC-USD", str(btc))
        st.tick(s(k), "ETH-USD", str(eth))
        if k >= 10:
            st.add("risk.band.BTC-USD", RiskBand("BTC-USD", btc, btc, 4e-5, 5e-5, 12.5, btc - 60, btc + 60, "stddev"), s(k))
        if k in (5, 40, 80):
            st.fill(s(k), f"sma-1-{k}", "BTC-USD", "BUY", str(btc), "0.01", "0.39", strategy="sma")
        if k in (30, 60, 100):
            st.fill(s(k), f"sma-1-{k + 1}", "BTC-USD", "SELL", str(btc), "0.01", "0.39", strategy="sma")
        if k == 20:
            st.fill(s(k), "mom-1-1", "ETH-USD", "BUY", str(eth), "0.5", "0.96", strategy="mom")
        if k == 50:
            st.add("risk.state", RiskState("REDUCING", "ACTIVE", "daily loss"), s(k))
            st.add("risk.killswitch", KillSwitch(True, "drawdown", "auto:drawdown", 0), s(k))
        if k == 70:
            st.add("risk.killswitch", KillSwitch(False, "", "manual", 0), s(k))
            st.add("risk.state", RiskState("ACTIVE", "REDUCING", "released"), s(k))
    d = tmp_path / name / "store"
    d.mkdir(parents=True)
    if gap:
        st.lines.insert(50, json.dumps({"type": "_gap", "source": "marketdata", "topic": "md.tick.BTC-USD",
                                        "missing": 3, "ts": s(20)}, separators=(",", ":")))
    path = st.write(d / "events-20270115-0000.jsonl")
    if not closed:
        path.write_text("".join(path.read_text().splitlines(True)[:-1]))
    return tmp_path / name


def test_report_of_a_run_dir(tmp_path):
    rd = run_dir(tmp_path)
    out = tmp_path / "out"
    r = tickmesh("report", rd, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"report: {out / 'report.html'}\n")
    assert "Sharpe" in r.stdout and "365-day year" in r.stdout
    stems = {"equity", "price-BTC-USD", "price-ETH-USD", "positions", "states", "strategies"}
    assert {p.name for p in out.glob("report-*.png")} == {f"report-{x}.png" for x in stems}
    for p in out.glob("report-*.png"):
        img = Image.open(io.BytesIO(p.read_bytes())).convert("L")
        assert ImageStat.Stat(img).stddev[0] > 10, p.name
    # report.json: the same figures as computing them here, money as exact strings
    got = json.loads((out / "report.json").read_text())
    run = F.compute(rd)
    want = json.loads(H.dumps(run.figures()))
    assert got["total"] == want["total"] and got["strategies"] == want["strategies"]
    assert set(got["strategies"]) == {"sma", "mom"} and got["total"]["trades"] == 3
    assert got["return_interval"] == run.interval_name == "1 second"      # 120 s: 2 minutes are too few
    assert got["killswitch_s"] == pytest.approx(20.0)
    page = (out / "report.html").read_text()
    assert H.CSP in page and "<script" not in page and "http://" not in page and "https://" not in page
    for _key, label, _kind, _help in H.ROWS:
        assert f"<td>{H.esc(label)}</td>" in page, label
    assert H.esc(run.equity_source) in page and "365-day" in page and run.interval_name in page
    assert page.count('<figure id="chart-') == len(stems)
    # the store's only pnl event is from before the fills: the cross-check says they differ
    assert "<b>they differ</b>" in page
    assert "strategy mom" in page and "auto:drawdown: drawdown" in page


def test_default_out_is_the_run_dir_and_store_files_work_too(tmp_path):
    rd = run_dir(tmp_path)
    r = tickmesh("report", rd)
    assert r.returncode == 0, r.stderr
    assert (rd / "report.html").exists()
    f = next((rd / "store").glob("*.jsonl"))
    r = tickmesh("report", f, "--starting-equity", "5000", "--interval", "1s")
    assert r.returncode == 0, r.stderr
    fig = json.loads((rd / "store" / "report.json").read_text())
    assert fig["total"]["starting_equity"] == "5000" and fig["return_interval"] == "1 second"


def test_data_problems_are_reported(tmp_path):
    rd = run_dir(tmp_path, gap=True, closed=False)
    r = tickmesh("report", rd, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "o" / "report.html").read_text()
    assert "1 bus gap(s)</b> seen by the store (3 events missing)" in page
    assert "without a closing line" in page


def test_several_runs_are_compared_side_by_side(tmp_path):
    a, b = run_dir(tmp_path, "run-a", drift="1"), run_dir(tmp_path, "run-b", drift="-1")
    out = tmp_path / "cmp"
    r = tickmesh("report", a, b, "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"report: {out / 'report.html'} (2 runs compared)" in r.stdout
    got = json.loads((out / "report.json").read_text())
    assert set(got) == {"run-a", "run-b"}
    assert got["run-a"]["total"]["net_pnl"] != got["run-b"]["total"]["net_pnl"]
    assert got["run-a"]["return_interval"] == got["run-b"]["return_interval"]
    page = (out / "report.html").read_text()
    assert "Runs compared" in page and "<th>run-a</th><th>run-b</th>" in page
    assert 'id=chart-compare' in page and (out / "report-compare.png").stat().st_size > 10_000


def test_errors(tmp_path):
    r = tickmesh("report", tmp_path / "absent")
    assert r.returncode == 1 and "no such file or directory" in r.stderr
    (tmp_path / "empty").mkdir()
    r = tickmesh("report", tmp_path / "empty")
    assert r.returncode == 1 and "no store files" in r.stderr
    r = tickmesh("report", tmp_path / "empty", "--starting-equity", "lots")
    assert r.returncode == 2 and "--starting-equity" in r.stderr
    r = tickmesh("--help")
    assert "  report " in r.stdout


def test_long_runs_are_downsampled_for_drawing_never_for_the_figures(tmp_path):
    """100k marks with one deep one-tick dip: the drawn series is short and still shows the dip;
    the drawdown figure is the dip's, to the cent."""
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(0), "a-1", "BTC-USD", "BUY", "100", "1", "0")
    lines = []
    from proto import Tick, jsonl
    from proto.codec import Envelope
    for k in range(1, 100_000):
        px = D("100") + D(k % 10) / 100 if k != 61_234 else D("80.17")
        t = s(0) + k * NS // 100
        lines.append(jsonl.dumps(Envelope("md.tick.BTC-USD", k, "marketdata", k, t, t,
                                          Tick("BTC-USD", px, px - D("0.5"), D(1), px + D("0.5"), D(1), D(0)))))
    st.lines += lines
    run = F.compute(st.write(tmp_path / "e.jsonl"))
    f = run.figures()["total"]
    assert f["max_drawdown"] == D("100.09") - D("80.17")
    from tools.report import charts as C
    t, y = C.equity_series(run, run.total)
    ts, ys = C.downsample(t, y)
    assert len(t) > 99_000 and len(ts) <= 3 * C.BUCKETS + 1
    assert ys.min() == y.min() == pytest.approx(10000 - 100 + 80.17) and ys.max() == y.max()
