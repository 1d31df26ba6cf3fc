"""Q-learning: features, exact accounting, reproducible training, out-of-sample performance after
fees on held-out synthetic markets, the training CLI, and train/live consistency of the plugin."""
import json
from decimal import Decimal

import pytest

from nodes.strategy import rl
from nodes.strategy.base import PluginContext
from nodes.strategy.qlearn import QLearn, QLearnParams
from tools import train as train_tool

FEE = Decimal("0.006")           # the same fee model in training and evaluation
SPEC = rl.FeatureSpec()


def series(seed, n=4000):
    envs = rl.synthetic_ticks(seed, n)
    return rl.build_series({"SYN-USD": [e.msg for e in envs]}, SPEC)


@pytest.fixture(scope="module")
def trained():
    return rl.train(series(1), SPEC, rl.TrainParams(seed=7))


def test_features_warm_up_then_give_states_in_range():
    f = rl.Features(SPEC)
    envs = rl.synthetic_ticks(3, 300)
    states = [f.update(float(e.msg.price)) for e in envs]
    assert states[: f.need - 1] == [None] * (f.need - 1)
    live = [s for s in states if s is not None]
    assert len(live) == 300 - f.need + 1
    nr, nb = len(SPEC.ret_edges) + 1, len(SPEC.band_edges) + 1
    assert all(0 <= a < nr and 0 <= b < nr and 0 <= c < nb for a, b, c in live)
    assert len(set(live)) > 10                      # the market visits many states
    idx = {SPEC.index(s, u) for s in live for u in (0, 1)}
    assert max(idx) < SPEC.n_states


def test_exact_accounting_of_a_round_trip():
    """Buy one unit at the ask, sell at the bid, fees on both notionals: to the cent, in Decimal."""
    model = rl.QModel(rl.FeatureSpec(short=1, long=2, vol_window=2, band_window=2))
    s = rl.Series("X", bid=[Decimal("99.99"), Decimal("104.99")], ask=[Decimal("100.01"), Decimal("105.01")],
                  mid=[Decimal("100.00"), Decimal("105.00")], mstate=[(0, 0, 0), (0, 0, 0)])
    model.q[model.spec.index((0, 0, 0), 0)] = [0.0, 1.0, 0.0]    # buy when flat, then hold
    r = rl.evaluate(model, [s], fee_rate=FEE)
    # bought 100.01 + 0.60006 fee; closed out at the end at 104.99 - 0.62994 fee
    assert r.pnl == Decimal("104.99") - Decimal("100.01") - Decimal("0.60006") - Decimal("0.62994")
    assert r.fees == Decimal("1.23000") and r.trades == 2
    assert r.buy_hold_pnl == r.pnl


def test_training_is_reproducible_with_a_seed(tmp_path, trained):
    again = rl.train(series(1), SPEC, rl.TrainParams(seed=7))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    trained.save(a)
    again.save(b)
    assert a.read_bytes() == b.read_bytes()
    other = rl.train(series(1), SPEC, rl.TrainParams(seed=8))
    assert other.q != trained.q


def test_policy_beats_cash_after_fees_out_of_sample(trained):
    """Trained on seed 1, judged on markets from other seeds it never saw, same fee model."""
    for seed in (2, 3, 4):
        r = rl.evaluate(trained, series(seed), fee_rate=FEE)
        assert r.trades > 0 and r.fees > 0          # it trades and pays for it
        assert r.pnl > 0, f"seed {seed}: {r.to_json()}"


def test_an_untrained_table_holds_cash():
    r = rl.evaluate(rl.QModel(SPEC), series(2), fee_rate=FEE)
    assert r.pnl == 0 and r.trades == 0


def test_model_file_round_trip_and_validation(tmp_path, trained):
    p = tmp_path / "m.json"
    trained.save(p)
    m = rl.QModel.load(p)
    assert m.spec == SPEC and m.q == trained.q and m.visits == trained.visits
    d = json.loads(p.read_text())
    d["q"] = d["q"][:-1]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="rows"):
        rl.QModel.load(p)
    p.write_text("{}")
    with pytest.raises(ValueError, match="not a tickmesh.qlearn/1 model"):
        rl.QModel.load(p)


def test_train_cli_writes_a_model_and_reports(tmp_path, capsys):
    train_f, test_f, out = tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "m.json"
    assert train_tool.main(["--write-synthetic", str(train_f), "--seed", "1"]) == 0
    assert train_tool.main(["--write-synthetic", str(test_f), "--seed", "2"]) == 0
    rep = tmp_path / "report.json"
    assert train_tool.main([str(train_f), "--out", str(out), "--seed", "7", "--eval", str(test_f),
                            "--report-json", str(rep)]) == 0
    err = capsys.readouterr().err
    assert "train [" in err and "40/40 episodes" in err            # the progress bar
    assert "out-of-sample (test.jsonl): policy PnL" in err and "beats cash" in err
    report = json.loads(rep.read_text())
    assert Decimal(report["out_of_sample"]["pnl"]) > 0
    m = rl.QModel.load(out)
    assert m.meta["train"]["seed"] == 7 and m.meta["trained_on"] == "train.jsonl"
    # the file path gives the same table as the in-memory series (the store format loses nothing)
    assert m.q == rl.train(series(1), SPEC, rl.TrainParams(seed=7)).q
    out2 = tmp_path / "m2.json"
    assert train_tool.main([str(train_f), "--out", str(out2), "--seed", "7", "--eval", str(test_f), "--quiet"]) == 0
    assert out.read_bytes() == out2.read_bytes()


def test_train_cli_refuses_a_file_without_ticks(tmp_path, capsys):
    f = tmp_path / "empty.jsonl"
    f.write_text('{"type":"_open","ts":0}\n')
    assert train_tool.main([str(f), "--out", str(tmp_path / "m.json")]) == 2
    assert "no product has enough ticks" in capsys.readouterr().err


def test_live_plugin_takes_the_same_decisions_as_the_evaluator(tmp_path, trained):
    """The plugin, fed ticks one by one with its fills applied, trades exactly like evaluate()."""
    path = tmp_path / "m.json"
    trained.save(path)
    pos = {}
    size = Decimal("0.01")
    ctx = PluginContext("qlearn", ("SYN-USD",), size, pos, pending=lambda p: False, seed=1)
    plugin = QLearn("qlearn", QLearnParams(model_path=str(path)), ctx)
    plugin.start()
    sides = []
    for e in rl.synthetic_ticks(2, 4000):
        for it in plugin.on_tick(e.msg, e) or ():
            sides.append(it.side)
            pos["SYN-USD"] = pos.get("SYN-USD", Decimal(0)) + (size if it.side == "BUY" else -size)
    r = rl.evaluate(trained, series(2), fee_rate=FEE)
    closing = 1 if sides and sides[-1] == "BUY" else 0       # evaluate() closes an open position
    assert len(sides) + closing == r.trades and len(sides) > 0
    assert all(a != b for a, b in zip(sides, sides[1:]))     # max_units 1: buy, sell, buy, ...


def test_plugin_refuses_to_start_without_a_model(tmp_path):
    ctx = PluginContext("qlearn", ("SYN-USD",), Decimal(1), {}, pending=lambda p: False)
    with pytest.raises(ValueError, match="strategy.params.qlearn.model_path"):
        QLearn("qlearn", QLearnParams(), ctx).start()
    with pytest.raises(ValueError, match="cannot load"):
        QLearn("qlearn", QLearnParams(model_path=str(tmp_path / "missing.json")), ctx).start()
