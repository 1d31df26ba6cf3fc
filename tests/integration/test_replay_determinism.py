"""Replaying one store file twice through the whole offline mesh with one seed gives identical
order, fill, position and PnL events.

Each run is ``python -m nodes.offline --source replay:FILE --seed N --state-dir DIR --summary-json``
(a real process); its store node writes DIR/store/*.jsonl. The runs are compared with
``tools.export.digest``: a sha256 over the order./fill./position./pnl events per topic in file order,
without wall-clock fields (ts_event/ts_recv of the envelope, created_ns, updated_ns, origin_ns), the
paper venue's random ids (venue_order_id, fill_id) and the UTC day of the run, with client order ids
numbered by first appearance. See docs/store.md, "Determinism digest".
"""
import json
import subprocess
import sys
from pathlib import Path


from nodes.strategy import rl
from tests.conftest import ROOT
from tools.export import digest

def _run(tmp: Path, name: str, src: Path, seed: int):
    state = tmp / name
    summary = tmp / f"{name}.json"
    p = subprocess.run([sys.executable, "-m", "nodes.offline", "--source", f"replay:{src}", "--seed", str(seed),
                        "--state-dir", str(state), "--summary-json", str(summary), "--duration", "60", "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    files = sorted((state / "store").glob("*.jsonl"))
    assert files, f"no store files in {state}"
    return digest([str(f) for f in files]), json.loads(summary.read_text())


# A replay runs in lockstep (marketdata.lockstep, nodes.offline's default for replays): without it
# the strategy's submits raced the replay and only 1 pair of runs in 5 was identical.
def test_same_file_same_seed_same_orders_and_pnl(tmp_path):
    src = tmp_path / "recorded.jsonl"
    rl.write_store_file(src, rl.synthetic_ticks(5, 1500, product="BTC-USD", start=65000.0, dt_ns=100_000_000))
    (h1, n1), s1 = _run(tmp_path, "run1", src, 3)
    (h2, n2), s2 = _run(tmp_path, "run2", src, 3)
    assert n1 > 0 and s1["orders"] > 0, "the replay produced no orders: nothing was compared"
    assert s1["ticks"] == s2["ticks"] == 1500
    assert (h1, n1) == (h2, n2)
    for k in ("orders", "fills", "rejects", "realized_pnl", "fees", "positions"):
        assert s1[k] == s2[k], k
