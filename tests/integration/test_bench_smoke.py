"""`python -m tools.bench all --quick` runs every section end to end (tiny sizes through
TICKMESH_BENCH_TINY) and writes one JSON report with every key the benchmark issue names.

Only that the benchmarks run and report is checked here: their figures are measured by
`python -m tools.bench`, never asserted in the test suite.
"""
import json
import math
import os
import subprocess
import sys

from tests.conftest import ROOT

SECTION_KEYS = {
    "tick_to_trade": None,      # per transport, below
    "replay": {"ticks_per_s", "raw_per_s", "ratio", "cpus", "fanout_raw_per_s", "fanout_ceiling", "direct_per_s",
               "bus_share"},
    "store": {"events_per_s", "plain_per_s", "ratio", "dropped", "kept_up", "plain_python_per_s",
              "ratio_vs_python_plain"},
    "startup": {"warm_s", "cold_s"},
}
T2T_KEYS = {"p50_us", "p99_us", "max_us", "raw_hop_us", "p50_ratio", "p99_ratio", "trades", "relay_floor_us",
            "floor_ratio", "logic_floor_us", "logic_floor_ratio", "logic_floor_p99_ratio"}


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_all_quick_reports_every_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKMESH_", "COINBASE_", "SLACK_", "TEAMS_"))}
    env["TICKMESH_BENCH_TINY"] = "1"
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "tools.bench", "all", "--quick", "--json", str(report)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    rep = json.loads(report.read_text())
    assert {"machine", "bus", "risk", "tick_to_trade", "replay", "store", "startup"} <= set(rep)
    t2t = rep["tick_to_trade"]
    assert set(t2t) == {"ipc", "tcp", "inproc"}
    for tr, row in t2t.items():
        assert set(row) == T2T_KEYS, tr
        assert row["trades"] > 0 and row["p50_us"] <= row["p99_us"] <= row["max_us"], (tr, row)
        assert all(_finite_positive(row[k]) for k in T2T_KEYS), (tr, row)
    for sec, keys in SECTION_KEYS.items():
        if keys is None:
            continue
        assert set(rep[sec]) == keys, sec
    assert all(_finite_positive(rep["replay"][k]) for k in ("ticks_per_s", "raw_per_s", "ratio", "fanout_raw_per_s",
                                                             "fanout_ceiling"))
    assert rep["replay"]["cpus"] and all(isinstance(c, int) for c in rep["replay"]["cpus"])
    assert all(_finite_positive(rep["store"][k]) for k in ("events_per_s", "plain_per_s", "ratio"))
    assert isinstance(rep["store"]["dropped"], int) and rep["store"]["dropped"] >= 0
    assert isinstance(rep["store"]["kept_up"], bool)
    assert all(_finite_positive(rep["store"][k]) for k in ("plain_python_per_s", "ratio_vs_python_plain"))
    assert 0 < rep["startup"]["warm_s"] and 0 < rep["startup"]["cold_s"]
    # the readable table of every section went to stdout
    for sec in ("tick_to_trade", "replay", "store", "startup"):
        assert f"== {sec} ==" in r.stdout
