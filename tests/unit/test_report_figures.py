"""tools.report.figures against an independent calculation on hand-built store files.

Each test writes a small store file of real events (proto records through proto.jsonl.dumps, as
the store node writes them), computes the report's figures, and checks every figure against
values worked out here another way: brute force over the event list (equity recomputed from
scratch after each event, drawdown over every pair of points), numpy for Sharpe/Sortino, and
round-trip PnLs written out by hand.
"""
import json
import math
from decimal import Decimal as D

import numpy as np
import pytest

from proto import Fill, KillSwitch, Order, PnL, Position, RiskDecision, RiskState, Tick
from proto import jsonl
from proto.codec import Envelope
from tools.report import figures as F

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
S0 = D("10000")


class Store:
    """Builds one store file the way nodes/store writes it (``_open`` ... events ... ``_close``)."""

    def __init__(self):
        self.lines, self.seq, self.script = [], 0, []
        self.clock = None       # market time: the last tick's (the report's clock convention)

    def add(self, topic, msg, t, source="x", ts_event=None):
        self.seq += 1
        te = t if ts_event is None else ts_event
        self.lines.append(jsonl.dumps(Envelope(topic, self.seq, source, self.seq, te, te, msg)))

    def tick(self, t, product, mid):
        mid = D(mid)
        self.add(f"md.tick.{product}", Tick(product, mid, mid - D("0.5"), D(1), mid + D("0.5"), D(1), D(0)), t,
                 "marketdata")
        self.script.append(("mark", t, product, mid))
        self.clock = t

    def order(self, t, coid, strategy, product, status="NEW", code="OK"):
        self.add(f"order.{status.lower()}", Order(coid, "", product, "BUY", "MARKET", "GTC", D(1), None, None,
                                                  False, False, status, D(0), D(0), D(0), D(0), D(0), code, "",
                                                  strategy, "paper", t, t), t, "execution")

    def fill(self, t, coid, product, side, price, size, fee, strategy="s", fill_id=None, order=True, ts_event=None):
        if order:
            self.order(t, coid, strategy, product)
        fid = fill_id or f"f{self.seq}"
        self.add(f"fill.{product}", Fill(fid, coid, product, side, D(price), D(size), D(fee), "TAKER", "paper"),
                 t, "execution", ts_event)
        self.script.append(("fill", self.clock if self.clock is not None else t, strategy, product, side,
                            D(price), D(size), D(fee)))

    def pnl(self, t, realized="0", unrealized="0", equity=None, fees="0"):
        eq = D(equity) if equity is not None else S0 + D(realized) + D(unrealized)
        self.add("pnl", PnL(D(realized), D(unrealized), D(0), eq, D(fees), "2027-01-15"), t, "execution")

    def write(self, path, open_ts=T0):
        head = json.dumps({"type": "_open", "ts": open_ts, "format": "tickmesh.jsonl/1"}, separators=(",", ":"))
        close = json.dumps({"type": "_close", "ts": open_ts, "reason": "stop"}, separators=(",", ":"))
        path.write_text("\n".join([head, *self.lines, close]) + "\n")
        return path


def s(k):
    """Seconds after T0, in ns."""
    return T0 + int(k * NS)


# --- the independent calculation ------------------------------------------------------------------

def brute_curve(script, s0=S0, strategy=None, product=None):
    """[(t, equity)] after each event: equity recomputed from scratch (cash flow + qty x mark)."""
    out = []
    for i in range(len(script)):
        marks, qty, cash = {}, {}, D(0)
        for ev in script[:i + 1]:
            if ev[0] == "mark":
                marks[ev[2]] = ev[3]
            else:
                _, _, st, p, side, px, sz, fee = ev
                marks.setdefault(p, px)
                if (strategy and st != strategy) or (product and p != product):
                    continue
                sign = 1 if side == "BUY" else -1
                qty[p] = qty.get(p, D(0)) + sign * sz
                cash += -sign * sz * px - fee
        eq = s0 + cash + sum((q * marks[p] for p, q in qty.items()), D(0))
        out.append((script[i][1], eq))
    return out


def brute_drawdown(curve, s0=S0):
    """(max fall, its peak's value, peak time, trough time) over every pair of points."""
    pts = [(T0, s0)] + curve
    best = (D(0), s0, None, None)
    for j, (tj, ej) in enumerate(pts):
        for i in range(j):
            ti, ei = pts[i]
            if ei - ej > best[0] and all(pts[k][1] < ei for k in range(i + 1, j)):
                best = (ei - ej, ei, ti, tj)
    return best


def grid_equity(curve, t_end, step_s, s0=S0):
    """Equity at T0 + j*step (the last value of events strictly before it), complete steps only."""
    n = int((t_end - T0) / NS // step_s)
    out = []
    for j in range(n + 1):
        b = T0 + j * step_s * NS
        before = [e for t, e in curve if t < b]
        out.append(float(before[-1]) if before else float(s0))
    return np.array(out)


def np_sharpe_sortino(eq, step_s):
    r = np.diff(eq) / eq[:-1]
    ann = math.sqrt(365 * 86400 / step_s)
    sd = np.std(r, ddof=1)
    down = math.sqrt(np.mean(np.minimum(r, 0) ** 2))
    return (r.mean() / sd * ann if sd > 0 else None), (r.mean() / down * ann if down > 0 else None), len(r)


def check_against_brute(run, st, s0=S0):
    f = run.figures()["total"]
    curve = brute_curve(st.script, s0)
    assert f["ending_equity"] == curve[-1][1]
    assert f["net_pnl"] == curve[-1][1] - s0
    fees = sum((e[7] for e in st.script if e[0] == "fill"), D(0))
    assert f["fees"] == fees and f["gross_pnl"] == f["net_pnl"] + fees
    assert f["return"] == pytest.approx(float((curve[-1][1] - s0) / s0))
    dd, peak, t_peak, t_trough = brute_drawdown(curve, s0)
    assert f["max_drawdown"] == dd
    if dd:
        assert f["max_drawdown_pct"] == pytest.approx(float(dd / peak))
        assert (f["drawdown_start_ns"], f["drawdown_trough_ns"]) == (t_peak, t_trough)
    step = run.interval_s
    eq = grid_equity(curve, run.t_end, step, s0)
    sharpe, sortino, n = np_sharpe_sortino(eq, step)
    assert f["returns_used"] == n
    assert f["sharpe"] == (pytest.approx(sharpe) if sharpe is not None else None)
    assert f["sortino"] == (pytest.approx(sortino) if sortino is not None else None)
    turnover = sum((e[5] * e[6] for e in st.script if e[0] == "fill"), D(0))
    assert f["turnover"] == turnover
    return f


# --- cases ---------------------------------------------------------------------------------------

def test_no_trades(tmp_path):
    st = Store()
    st.pnl(s(0))
    for k, px in enumerate(["100", "101", "99", "100"]):
        st.tick(s(k), "BTC-USD", px)
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    f = check_against_brute(run, st)
    assert run.start_equity == S0
    assert f["net_pnl"] == 0 and f["fees"] == 0 and f["max_drawdown"] == 0 and f["max_drawdown_pct"] == 0
    assert (f["trades"], f["open_trades"], f["fills"], f["orders"]) == (0, 0, 0, 0)
    for k in ("win_rate", "profit_factor", "expectancy", "avg_win", "avg_loss", "sharpe", "sortino", "calmar"):
        assert f[k] is None, k
    assert f["time_in_market"] == 0 and f["turnover"] == 0 and f["max_exposure"] == 0
    assert run.strategies == {} and run.closed_trades == [] and run.open_trades == []


def test_only_losses(tmp_path):
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(1), "a-1", "BTC-USD", "BUY", "100", "2", "0.2")
    st.tick(s(2), "BTC-USD", "97")
    st.fill(s(3), "a-2", "BTC-USD", "SELL", "97", "2", "0.194")      # -6 - 0.394
    st.tick(s(4), "BTC-USD", "98")
    st.fill(s(5), "a-3", "BTC-USD", "SELL", "98", "1", "0.1")        # a short: -1 - 0.15
    st.tick(s(6), "BTC-USD", "99")
    st.fill(s(7), "a-4", "BTC-USD", "BUY", "99", "1", "0.05")
    st.tick(s(8), "BTC-USD", "99")
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    f = check_against_brute(run, st)
    pnls = [D("-6.394"), D("-1.15")]
    assert [t.pnl for t in run.closed_trades] == pnls
    assert [t.direction for t in run.closed_trades] == ["LONG", "SHORT"]
    assert (f["trades"], f["wins"], f["losses"], f["open_trades"]) == (2, 0, 2, 0)
    assert f["win_rate"] == 0.0 and f["profit_factor"] == 0.0
    assert f["avg_win"] is None and f["avg_loss"] == sum(pnls) / 2 and f["expectancy"] == sum(pnls) / 2
    assert f["closed_pnl"] == f["net_pnl"] == sum(pnls)
    assert f["time_in_market_s"] == pytest.approx(4.0)           # long 0..2, short 4..6 (market clock)
    assert f["max_position"] == {"BTC-USD": D(2)}
    assert f["max_exposure"] == D(200)                           # 2 x 100 at the fill's mark
    assert f["calmar"] == pytest.approx(f["return"] * (365 * 86400 / run.duration_s) / f["max_drawdown_pct"])


def test_open_position_at_the_end(tmp_path):
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "ETH-USD", "50")
    st.fill(s(1), "b-1", "ETH-USD", "BUY", "50", "3", "0.15", strategy="b")
    for k, px in enumerate(["52", "49", "55"], start=2):
        st.tick(s(k), "ETH-USD", px)
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    f = check_against_brute(run, st)
    assert (f["trades"], f["open_trades"]) == (0, 1)
    assert f["open_pnl"] == f["net_pnl"] == 3 * (D(55) - D(50)) - D("0.15")
    assert f["win_rate"] is None and f["expectancy"] is None
    assert f["time_in_market_s"] == pytest.approx(4.0)           # from the fill (at the 0 s tick) to the end
    assert run.open_trades[0].close_ns is None
    # the drawdown from the peak at 52 to 49, not recovered... then recovered at 55
    assert f["max_drawdown"] == 9 and f["drawdown_recovery_ns"] == s(4)
    assert run.account_unrealized == 3 * (D(55) - D(50))


def test_winners_losers_flip_and_fee_split(tmp_path):
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(1), "c-1", "BTC-USD", "BUY", "100", "1", "1")
    st.tick(s(2), "BTC-USD", "110")
    st.fill(s(3), "c-2", "BTC-USD", "SELL", "110", "3", "3")         # closes +10-1-1 = 8, opens short 2
    st.tick(s(4), "BTC-USD", "105")
    st.fill(s(5), "c-3", "BTC-USD", "BUY", "105", "2", "2")          # short closes: +10 -2 -2 = 6
    st.fill(s(6), "c-4", "BTC-USD", "BUY", "105", "1", "0")
    st.tick(s(7), "BTC-USD", "104")
    st.fill(s(8), "c-5", "BTC-USD", "SELL", "104", "1", "0")         # -1
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    f = check_against_brute(run, st)
    assert [t.pnl for t in run.closed_trades] == [D(8), D(6), D(-1)]
    assert [t.fees for t in run.closed_trades] == [D(2), D(4), D(0)]
    assert f["win_rate"] == pytest.approx(2 / 3)
    assert f["profit_factor"] == pytest.approx(14.0)
    assert f["avg_win"] == 7 and f["avg_loss"] == -1 and f["expectancy"] == D("4.3333333333")
    assert f["net_pnl"] == 13 and f["gross_pnl"] == 19


def test_strategies_and_products_add_up(tmp_path):
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.tick(s(0), "ETH-USD", "10")
    st.fill(s(1), "x-1", "BTC-USD", "BUY", "100", "1", "0.1", strategy="x")
    st.fill(s(1.5), "y-1", "BTC-USD", "SELL", "100", "0.5", "0.05", strategy="y")   # nets against x
    st.fill(s(2), "y-2", "ETH-USD", "BUY", "10", "4", "0.04", strategy="y")
    for k, (a, b) in enumerate([("103", "9"), ("98", "12"), ("101", "11")], start=3):
        st.tick(s(k), "BTC-USD", a)
        st.tick(s(k), "ETH-USD", b)
    st.fill(s(6), "x-2", "BTC-USD", "SELL", "101", "1", "0.1", strategy="x")
    st.tick(s(7), "BTC-USD", "101")
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    check_against_brute(run, st)
    figs = run.figures()
    assert set(figs["strategies"]) == {"x", "y"} and set(figs["products"]) == {"BTC-USD", "ETH-USD"}
    total = figs["total"]["net_pnl"]
    assert sum(v["net_pnl"] for v in figs["strategies"].values()) == total
    assert sum(v["net_pnl"] for v in figs["products"].values()) == total
    for name, fx in figs["strategies"].items():
        curve = brute_curve(st.script, strategy=name)
        assert fx["net_pnl"] == curve[-1][1] - S0
        assert fx["max_drawdown"] == brute_drawdown(curve)[0]
    for name, fx in figs["products"].items():
        curve = brute_curve(st.script, product=name)
        assert fx["net_pnl"] == curve[-1][1] - S0
        assert fx["max_drawdown"] == brute_drawdown(curve)[0]
    assert figs["strategies"]["x"]["trades"] == 1 and figs["strategies"]["y"]["open_trades"] == 2
    assert figs["total"]["max_position"] == {"BTC-USD": D(1), "ETH-USD": D(4)}
    assert figs["strategies"]["y"]["max_position"] == {"BTC-USD": D("0.5"), "ETH-USD": D(4)}


def test_sharpe_interval_and_annualisation(tmp_path):
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(0.5), "a-1", "BTC-USD", "BUY", "100", "10", "0")
    rng = np.random.default_rng(3)
    px = D(100)
    for k in range(1, 200):       # 200 s of marks: 1-second returns (1-minute ones need >= 30 minutes)
        px += D(int(rng.integers(-30, 31))) / 100
        st.tick(s(k + 0.25), "BTC-USD", str(px))
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    assert (run.interval_s, run.interval_name) == (1, "1 second")
    f = check_against_brute(run, st)
    assert f["returns_used"] == 199
    assert f["sharpe"] is not None and f["sortino"] is not None
    run5 = F.compute(tmp_path / "events.jsonl", interval="1m")
    assert run5.interval_s == 60
    check_against_brute(run5, st)
    assert F.choose_interval(29 * 60) == (1, "1 second")
    assert F.choose_interval(30 * 60) == (60, "1 minute")
    assert F.choose_interval(31 * 86400) == (86400, "1 day")
    with pytest.raises(F.ReportError, match="--interval"):
        F.compute(tmp_path / "events.jsonl", interval="7m")


def test_risk_refusals_rejections_killswitch_and_states(tmp_path):
    st = Store()

    def at(k):        # the market clock moves with ticks: one before each event
        st.tick(s(k), "BTC-USD", "100")
        return s(k)

    st.add("risk.killswitch", KillSwitch(False, "", "", 0), at(0))
    st.tick(s(0), "BTC-USD", "100")
    st.order(at(1), "a-1", "a", "BTC-USD")
    st.add("risk.decision", RiskDecision("a-1", "BTC-USD", False, "MAX_POSITION", "too big", 1), at(1))
    st.order(at(1), "a-1", "a", "BTC-USD", "REJECTED", "MAX_POSITION")
    st.order(at(2), "b-1", "b", "BTC-USD")
    st.order(at(2), "b-1", "b", "BTC-USD", "REJECTED", "RISK_UNAVAILABLE")
    st.add("risk.state", RiskState("REDUCING", "ACTIVE", "loss"), at(3))
    st.add("risk.killswitch", KillSwitch(True, "drawdown", "auto:drawdown", 0), at(4))
    st.add("risk.state", RiskState("HALTED", "REDUCING", "kill switch"), at(4))
    st.order(at(5), "a-2", "a", "BTC-USD")
    st.add("risk.decision", RiskDecision("a-2", "BTC-USD", False, "KILL_SWITCH", "engaged", 1), at(5))
    st.add("risk.killswitch", KillSwitch(False, "", "manual", 0), at(7))
    st.add("risk.state", RiskState("ACTIVE", "HALTED", "released"), at(7))
    st.add("risk.killswitch", KillSwitch(True, "again", "manual", 0), at(9))
    st.tick(s(10), "BTC-USD", "100")
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    figs = run.figures()
    assert figs["total"]["risk_refusals"] == {"KILL_SWITCH": 1, "MAX_POSITION": 1}
    assert figs["total"]["order_rejections"] == {"MAX_POSITION": 1, "RISK_UNAVAILABLE": 1}
    assert figs["strategies"]["a"]["risk_refusals"] == {"KILL_SWITCH": 1, "MAX_POSITION": 1}
    assert figs["strategies"]["b"]["order_rejections"] == {"RISK_UNAVAILABLE": 1}
    assert figs["total"]["orders"] == 3 and figs["strategies"]["a"]["orders"] == 2
    assert run.killswitch_s() == pytest.approx(3 + 1)      # 4..7 and 9..10 (still engaged at the end)
    assert run.killswitch_engaged_at_end
    assert run.state_s() == pytest.approx({"ACTIVE": 3 + 3, "REDUCING": 1, "HALTED": 3})


def test_market_clock_and_duplicate_fills(tmp_path):
    """A replay: ticks carry the recording's time, fills the wall clock of the replay; a
    republished fill counts once."""
    wall = T0 + 400 * 86400 * NS
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(1), "a-1", "BTC-USD", "BUY", "100", "1", "0", fill_id="F1", ts_event=wall)
    st.lines.append(st.lines[-1])          # the same fill line again
    st.tick(s(2), "BTC-USD", "90")
    st.fill(s(3), "a-2", "BTC-USD", "SELL", "90", "1", "0", ts_event=wall + NS)
    st.tick(s(4), "BTC-USD", "90")
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    assert run.t0 == s(0) and run.t_end == s(4) and run.duration_s == 4
    f = check_against_brute(run, st)
    assert f["fills"] == 2 and f["net_pnl"] == -10
    # times: the fill is at the market time of the tick before it (0 s), the sale at 2 s
    assert run.closed_trades[0].open_ns == s(0) and run.closed_trades[0].close_ns == s(2)


def test_starting_equity_sources(tmp_path):
    st = Store()
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(1), "a-1", "BTC-USD", "BUY", "100", "1", "1")
    st.pnl(s(1), realized="-1", unrealized="0", equity="4999")       # after the fill: the invariant
    run = F.compute(st.write(tmp_path / "a.jsonl"))
    assert run.start_equity == 5000 and "equity - realized - unrealized" in run.equity_source
    run = F.compute(tmp_path / "a.jsonl", starting_equity=D("777"))
    assert run.start_equity == 777 and run.equity_source == "--starting-equity"
    assert run.figures()["total"]["return"] == pytest.approx(-1 / 777)

    st = Store()
    st.tick(s(0), "BTC-USD", "100")
    st.pnl(s(0), realized="50", unrealized="0", equity="5050")       # earlier sessions' PnL
    st.fill(s(1), "a-1", "BTC-USD", "BUY", "100", "1", "1")
    run = F.compute(st.write(tmp_path / "b.jsonl"))
    assert run.start_equity == 5050 and "carried from earlier sessions" in run.equity_source


def test_opening_position_from_an_earlier_session(tmp_path):
    st = Store()
    st.tick(s(0), "BTC-USD", "100")
    st.pnl(s(0), realized="0", unrealized="20", equity="10020")
    st.add("position.BTC-USD", Position("BTC-USD", D(2), D(90), D(0), D(20), D(200), D(100), D(0)), s(0))
    st.tick(s(1), "BTC-USD", "104")
    st.fill(s(2), "a-1", "BTC-USD", "SELL", "104", "2", "0.5")
    st.tick(s(3), "BTC-USD", "104")
    run = F.compute(st.write(tmp_path / "events.jsonl"))
    f = run.figures()["total"]
    assert run.start_equity == D("10020") and run.opening == {"BTC-USD": D(2)}
    assert f["net_pnl"] == 2 * 4 - D("0.5")             # from the mark at the start of the recording
    # the strategies' own view (as the strategy node's): "s" sold short, the opening long is still open
    assert f["fills"] == 1 and f["trades"] == 0 and f["open_trades"] == 2
    assert set(run.strategies) == {F.OPENING, "s"} and run.strategies[F.OPENING].fills == 0
    assert run.account_realized == 2 * (104 - 90) - D("0.5")      # execution's own arithmetic


def test_rotated_files_in_open_order_and_run_dir(tmp_path):
    a, b = Store(), Store()
    a.pnl(s(0))
    a.tick(s(0), "BTC-USD", "100")
    a.fill(s(1), "a-1", "BTC-USD", "BUY", "100", "1", "0")
    b.tick(s(2), "BTC-USD", "110")
    b.fill(s(3), "a-2", "BTC-USD", "SELL", "110", "1", "0")
    store = tmp_path / "run" / "store"
    store.mkdir(parents=True)
    b.write(store / "events-20270115-0000.jsonl", open_ts=T0 + 5)     # names sort the wrong way round
    a.write(store / "events-20270115-0001.jsonl", open_ts=T0)
    run = F.compute(tmp_path / "run")
    assert [p.rsplit("/", 1)[1] for p in run.files] == ["events-20270115-0001.jsonl", "events-20270115-0000.jsonl"]
    assert run.figures()["total"]["net_pnl"] == 10 and run.figures()["total"]["trades"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(F.ReportError, match="no store files"):
        F.compute(tmp_path / "empty")
    with pytest.raises(F.ReportError, match="no such file"):
        F.compute(tmp_path / "absent")


def test_headline_is_json_ready(tmp_path):
    st = Store()
    st.pnl(s(0))
    st.tick(s(0), "BTC-USD", "100")
    st.fill(s(1), "a-1", "BTC-USD", "BUY", "100", "1", "0.25")
    st.tick(s(2), "BTC-USD", "101")
    h = F.headline(F.compute(st.write(tmp_path / "e.jsonl")))
    json.dumps(h)
    assert h["net_pnl"] == "0.75" and h["fees"] == "0.25" and h["open_trades"] == 1 and h["closed_trades"] == 0
    assert h["return_pct"] == pytest.approx(0.0075) and "365-day" in h["sharpe_interval"]
