"""The risk benchmark runs (tiny sizes; its figures are measured by `python -m tools.bench risk`,
never asserted here) and the node starts and answers in a fresh process."""
import math

from tools.bench import risk as bench


def test_bench_pieces_run_and_report_the_issue_keys():
    tick = bench.bench_tick(2000)
    assert set(tick) == {"numba_ns", "python_ns", "speedup"} and tick["numba_ns"] > 0
    batch = bench.bench_batch(20_000, 5_000, repeats=1)
    assert set(batch) == {"numba_s", "numpy_s", "python_s", "speedup_vs_numpy", "speedup_vs_python"}
    err = bench.stddev_error(800)
    assert math.isfinite(err) and err < 1e-6          # correctness, not speed
    p50, p99 = bench.bench_decision(300)
    assert 0 < p50 <= p99
    fd, runs = bench.first_decision(1)                # a fresh `python -m tools.bench.risk` child
    assert fd["code"] == "OK" and fd["first_decision_ms"] > 0 and len(runs) == 1
    r = {"tick": tick, "batch": batch, "stddev_max_rel_err": err, "decision_p50_us": p50,
         "decision_p99_us": p99, "first_decision_ms": fd["first_decision_ms"]}
    text = bench.table(r)
    assert "first decision" in text and "speedup vs numpy" in text
