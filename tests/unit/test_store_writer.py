"""Store writer: batching, rotation by size and UTC day, fsync policies, lag/drop accounting,
gap lines, crash safety of the file format. Real files and a real writer thread; no sockets."""
import json
import logging
import os
from decimal import Decimal

import pytest

import proto
from proto import jsonl, topics
from proto.codec import Envelope
from nodes.store.writer import RotatingFile, StoreWriter, utc_day

DAY1 = 1_795_000_000_000_000_000          # 2026-11-18T...Z
DAY2 = DAY1 + 86_400_000_000_000


def tick_env(i, product="BTC-USD", ts=DAY1):
    t = proto.Tick(product, Decimal("65000.10") + i, Decimal("65000.00"), Decimal("0.50000000"),
                   Decimal("65000.20"), Decimal("1.25"), Decimal("1234.5678"))
    return Envelope(topics.tick(product), 1000 + i, "marketdata", i + 1, ts + i, ts + i + 7, t)


def read_all(directory):
    """(events, meta) of every file in ``directory``, in file order."""
    events, meta = [], []
    for f in sorted(os.listdir(directory)):
        for item in jsonl.read(os.path.join(directory, f), with_meta=True):
            (meta if type(item) is dict else events).append(item)
    return events, meta


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_events_round_trip_exactly_with_header_and_close(tmp_path):
    w = StoreWriter(tmp_path, flush_interval_s=0.05, header={"node": "store"}).start()
    envs = [tick_env(i) for i in range(100)]
    for e in envs:
        assert w.put(e)
    assert w.stop()
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith(f"events-{utc_day(os.stat(tmp_path).st_mtime_ns)[:4]}")
    events, meta = read_all(tmp_path)
    assert events == envs                          # topic, ids, seq, both times, exact Decimals
    assert events[0].msg.bid_size == Decimal("0.50000000") and str(events[0].msg.bid_size) == "0.50000000"
    assert meta[0]["type"] == "_open" and meta[0]["node"] == "store" and meta[0]["previous"] is None
    assert meta[-1]["type"] == "_close" and meta[-1]["reason"] == "stop" and meta[-1]["lines"] == 102
    assert w.stored == 100 and w.dropped == 0
    raw = (tmp_path / files[0]).read_text().splitlines()
    assert len(raw) == 102 and json.loads(raw[1])["body"]["price"] == "65000.10"


def test_rotates_by_size_without_losing_or_reordering(tmp_path):
    w = StoreWriter(tmp_path, rotate_bytes=4096, flush_interval_s=0.05).start()
    envs = [tick_env(i) for i in range(200)]
    for e in envs:
        w.put(e)
    w.stop()
    files = sorted(os.listdir(tmp_path))
    assert len(files) > 5
    for f in files:
        assert (tmp_path / f).stat().st_size <= 4096
    events, meta = read_all(tmp_path)
    assert events == envs
    opens = [m for m in meta if m["type"] == "_open"]
    closes = [m for m in meta if m["type"] == "_close"]
    assert [o["file"] for o in opens] == files
    assert [o["previous"] for o in opens[1:]] == files[:-1]      # each file names its predecessor
    assert [c["reason"] for c in closes] == ["size"] * (len(files) - 1) + ["stop"]
    assert w.file.files == len(files)


def test_rotates_at_utc_midnight(tmp_path):
    clock = Clock(DAY1)
    w = StoreWriter(tmp_path, flush_interval_s=0.05, clock=clock).start()
    for i in range(10):
        w.put(tick_env(i))
    assert w.flush()
    clock.now = DAY2
    for i in range(10, 20):
        w.put(tick_env(i, ts=DAY2))
    w.stop()
    files = sorted(os.listdir(tmp_path))
    assert files == [f"events-{utc_day(DAY1)}-0000.jsonl", f"events-{utc_day(DAY2)}-0000.jsonl"]
    first = list(jsonl.read(tmp_path / files[0], with_meta=True))
    assert first[-1] == {"type": "_close", "ts": DAY2, "reason": "day", "lines": 12}
    events, _ = read_all(tmp_path)
    assert [e.seq for e in events] == list(range(1, 21))


def test_full_queue_drops_counts_logs_and_writes_a_lag_line(tmp_path, caplog):
    w = StoreWriter(tmp_path, queue_max=50, flush_interval_s=0.05)   # thread not started yet: it is "behind"
    with caplog.at_level(logging.WARNING, logger="tickmesh.store.writer"):
        accepted = [w.put(tick_env(i)) for i in range(80)]
    assert accepted == [True] * 50 + [False] * 30
    assert w.dropped == 30
    assert any("queue full" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    w.start()
    w.stop()
    events, meta = read_all(tmp_path)
    assert [e.seq for e in events] == list(range(1, 51))      # what was queued is all there
    lags = [m for m in meta if m["type"] == "_lag"]
    assert len(lags) == 1 and lags[0]["dropped"] == 30 and lags[0]["dropped_total"] == 30
    assert lags[0]["queued"] == 50
    assert w.stats()["lag_lines"] == 1 and w.lag_events == 1


def test_gap_lines_sit_where_the_gap_was_seen(tmp_path):
    w = StoreWriter(tmp_path, flush_interval_s=0.05)
    w.put(tick_env(0))
    w.put(tick_env(1))
    w.put_gap("marketdata", "md.tick.BTC-USD", 5)
    w.put(tick_env(7))
    w.start()
    w.stop()
    f = os.listdir(tmp_path)[0]
    kinds = [(i["type"] if type(i) is dict else i.seq) for i in jsonl.read(tmp_path / f, with_meta=True)]
    assert kinds == ["_open", 1, 2, "_gap", 8, "_close"]
    gap = [i for i in jsonl.read(tmp_path / f, with_meta=True) if type(i) is dict and i["type"] == "_gap"][0]
    assert gap["source"] == "marketdata" and gap["topic"] == "md.tick.BTC-USD" and gap["missing"] == 5
    assert w.gap_lines == 1


def test_gap_lines_are_kept_even_when_the_queue_is_full(tmp_path):
    w = StoreWriter(tmp_path, queue_max=2)
    w.put(tick_env(0))
    w.put(tick_env(1))
    w.put_gap("risk", "risk.state", 3)
    assert not w.put(tick_env(2))
    w.start()
    w.stop()
    _, meta = read_all(tmp_path)
    assert [m["type"] for m in meta] == ["_open", "_lag", "_gap", "_close"]


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_fsync_policy(tmp_path, policy):
    from tests.conftest import wait_until
    w = StoreWriter(tmp_path, fsync=policy, flush_interval_s=30.0, batch_max=10).start()
    for k in range(10):          # batch_max wakes the writer: ten batches inside one flush interval
        for i in range(10):
            w.put(tick_env(10 * k + i))
        wait_until(lambda: w.stored == 10 * (k + 1), 5, what="batch written")
    w.stop()
    fs = w.file.fsyncs
    if policy == "never":
        assert fs == 0
    elif policy == "always":
        assert fs >= 1 + 10 + 1        # the header, every batch, the close
    else:
        assert 1 <= fs <= 3            # header, the final batch at stop, the close: not per batch
    events, _ = read_all(tmp_path)
    assert len(events) == 100


def test_flush_puts_everything_queued_in_the_file_while_running(tmp_path):
    """What flush() reported is in the file even if the process died right after (crash model)."""
    w = StoreWriter(tmp_path, flush_interval_s=30.0).start()     # would not write on its own for 30 s
    for i in range(25):
        w.put(tick_env(i))
    assert w.flush(timeout=2.0)
    assert w.stored == 25
    f = w.file.path
    events = list(jsonl.read(f))                 # read while the writer is alive: no _close yet
    assert [e.seq for e in events] == list(range(1, 26))
    w.stop()


def test_never_appends_to_an_existing_file_so_a_torn_line_stays_last(tmp_path, caplog):
    w = StoreWriter(tmp_path).start()
    for i in range(5):
        w.put(tick_env(i))
    assert w.flush()
    path = w.file.path
    w.stop()
    # simulate a crash mid-write: a partial last line and no _close
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + jsonl.dumps(tick_env(5))[:40])
    with caplog.at_level(logging.WARNING, logger="tickmesh.jsonl"):
        events = list(jsonl.read(path))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    w2 = StoreWriter(tmp_path).start()          # a restart opens the next file, never the torn one
    w2.put(tick_env(9))
    w2.stop()
    assert w2.file.path != path and w2.file.path.name.endswith("-0001.jsonl")
    assert list(jsonl.read(w2.file.path))[0].seq == 10


def test_write_errors_are_counted_and_the_writer_survives(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")                     # the store dir is a file: every open fails
    w = StoreWriter(blocker, flush_interval_s=0.02).start()
    for i in range(10):
        w.put(tick_env(i))
    assert w.flush()
    assert w.alive and w.write_errors >= 1 and w.write_lost == 10 and w.stored == 0
    w.stop()


def test_rotating_file_never_rotates_an_empty_file_for_a_huge_line(tmp_path):
    f = RotatingFile(tmp_path, rotate_bytes=4096, fsync="never")
    big = "x" * 10000
    f.write_lines([big, big], DAY1)
    f.close(DAY1, "stop")
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2                     # one oversize line per file, no empty files
    for n in names:
        assert (tmp_path / n).read_text().count(big) == 1
