"""Offline mode is deterministic by construction: the same seed and source give the same orders,
fills, positions, PnL and store contents, for the synthetic market and for a replay alike.

Each run is ``python -m nodes.offline ... --seed N --state-dir DIR --summary-json`` (a real
process; its store node writes DIR/store/*.jsonl). Two runs are compared twice over:

* ``tools.export --digest``: a sha256 over the order./fill./position./pnl events, with client
  order ids numbered by first appearance (docs/store.md, "Determinism digest");
* every stored event line, whole: envelope times included (they are market time), with only the
  envelope's ``msg_id`` (a per-process random base) and ``RiskDecision.compute_ns`` (how long a check
  took, measured) taken out.
"""
import json
import subprocess
import sys
from pathlib import Path

from nodes.strategy import rl
from tests.conftest import ROOT
from tools.export import digest


def _run(tmp: Path, name: str, seed: int, *source):
    state = tmp / name
    summary = tmp / f"{name}.json"
    p = subprocess.run([sys.executable, "-m", "nodes.offline", *source, "--seed", str(seed), "--no-report",
                        "--state-dir", str(state), "--summary-json", str(summary), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    files = sorted((state / "store").glob("*.jsonl"))
    assert files, f"no store files in {state}"
    return files, json.loads(summary.read_text())


def _lines(files):
    out = []
    for f in files:
        for line in Path(f).read_text().splitlines():
            o = json.loads(line)
            if o.get("type", "").startswith("_"):
                continue                    # the store's own bookkeeping (file names, pids)
            o.pop("msg_id", None)
            o["body"].pop("compute_ns", None)
            out.append(json.dumps(o, sort_keys=True))
    return out


def _same(tmp_path, *source, expect_orders=True):
    f1, s1 = _run(tmp_path, "run1", 3, *source)
    f2, s2 = _run(tmp_path, "run2", 3, *source)
    (h1, n1), (h2, n2) = digest([str(f) for f in f1]), digest([str(f) for f in f2])
    if expect_orders:
        assert n1 > 0 and s1["orders"] > 0, "the run produced no orders: nothing was compared"
    assert (h1, n1) == (h2, n2)
    # every frame a node sent was followed by the engine (none found only by its wall-clock poll)
    assert s1["engine_unrouted"] == s2["engine_unrouted"] == 0
    for k in ("ticks", "orders", "fills", "rejects", "realized_pnl", "fees", "positions", "events_stored"):
        assert s1[k] == s2[k], k
    l1, l2 = _lines(f1), _lines(f2)
    assert len(l1) == len(l2) == s1["events_stored"]
    assert l1 == l2
    return s1


def test_same_synthetic_seed_same_run(tmp_path):
    s = _same(tmp_path, "--source", "synthetic", "--market-hours", "0.25")
    assert s["market_hours"] == 0.25 and s["ticks"] == 2 * 900 + 2       # a tick a second per product


def test_same_replay_same_run(tmp_path):
    src = tmp_path / "recorded.jsonl"
    rl.write_store_file(src, rl.synthetic_ticks(5, 1500, product="BTC-USD", start=65000.0, dt_ns=100_000_000))
    s = _same(tmp_path, "--source", f"replay:{src}")
    assert s["ticks"] == 1500 and s["ended_by"] == "source"
