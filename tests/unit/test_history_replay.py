"""What a replay source may name (nodes/marketdata/replay.py): a file, a store directory, a glob, a
list; rotated files read as one recording, independent recordings merged by exchange time. The
source is driven without sockets: its ``emit`` callback collects what the node would publish."""
import json
import logging
import threading
from decimal import Decimal as D

import pytest

import proto
from nodes.config import ConfigError
from nodes.marketdata import MarketDataConfig
from nodes.marketdata.book import DeferredSnapshot
from nodes.marketdata.normalize import L2Ev, TickEv, TradeEv
from nodes.marketdata.replay import ReplaySource, read_events, recordings, replay_products, resolve
from proto import jsonl

T0 = 1793491200 * 10**9


def _trade(product, i, ts):
    return proto.Envelope(f"md.trade.{product}", i, "history", i, ts, ts, proto.Trade(product, str(i), D("100.01"),
                                                                                     D("0.5"), "BUY"))


def _write(path, envs, previous=None, header=True):
    lines = []
    if header:
        lines.append(json.dumps({"type": "_open", "ts": 1, "format": "tickmesh.jsonl/1", "file": path.name,
                                 "index": 0, "previous": previous}, separators=(",", ":")))
    lines += [jsonl.dumps(e) for e in envs]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def store(tmp_path):
    """A store directory: one recording rotated into three files, and a history file of ETH-USD."""
    d = tmp_path / "store"
    d.mkdir()
    btc = [_trade("BTC-USD", i, T0 + i * 10) for i in range(1, 10)]
    _write(d / "events-20261101-0000.jsonl", btc[:3])
    _write(d / "events-20261101-0001.jsonl", btc[3:6], previous="events-20261101-0000.jsonl")
    _write(d / "events-20261101-0002.jsonl", btc[6:], previous="events-20261101-0001.jsonl")
    eth = [_trade("ETH-USD", 100 + i, T0 + i * 10 + 5) for i in range(0, 9)]
    _write(d / "history-eth.jsonl", eth)
    (d / "notes.txt").write_text("not a store file")
    return d


def test_resolve_takes_a_file_a_directory_a_glob_or_a_list(store, tmp_path, monkeypatch):
    names = lambda ps: [p.name for p in ps]      # noqa: E731
    f0 = store / "events-20261101-0000.jsonl"
    assert resolve(f0) == [f0.resolve()]
    assert names(resolve(store)) == ["events-20261101-0000.jsonl", "events-20261101-0001.jsonl",
                                     "events-20261101-0002.jsonl", "history-eth.jsonl"]
    assert names(resolve(str(store / "events-*.jsonl"))) == names(resolve(store))[:3]
    both = f"{store / 'history-eth.jsonl'},{store / 'events-2026110?-000[01].jsonl'}"
    assert names(resolve(both)) == ["history-eth.jsonl", "events-20261101-0000.jsonl", "events-20261101-0001.jsonl"]
    assert names(resolve([store / "history-eth.jsonl", f0, f0])) == ["history-eth.jsonl", f0.name]   # once each
    monkeypatch.chdir(tmp_path)
    assert names(resolve("store/history-eth.jsonl")) == ["history-eth.jsonl"]
    assert names(resolve("history-eth.jsonl", bases=[tmp_path / "nowhere", store])) == ["history-eth.jsonl"]
    with pytest.raises(ConfigError, match="marketdata.replay_file: nothing matches 'missing.jsonl'"):
        resolve("missing.jsonl")
    with pytest.raises(ConfigError, match="nothing matches"):
        resolve(str(store / "*.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no store files"):
        resolve(tmp_path / "empty")


def test_rotated_files_are_one_recording_and_recordings_merge_by_exchange_time(store):
    files = resolve(store)
    assert [[p.name for p in c] for c in recordings(files)] == [
        ["events-20261101-0000.jsonl", "events-20261101-0001.jsonl", "events-20261101-0002.jsonl"],
        ["history-eth.jsonl"]]
    # named out of order, a rotated set still reads in its own order
    assert [[p.name for p in c] for c in recordings(list(reversed(files[:3])))] == [
        ["events-20261101-0000.jsonl", "events-20261101-0001.jsonl", "events-20261101-0002.jsonl"]]
    evs = list(read_events(files))
    assert [e.ts_event for e in evs] == sorted(e.ts_event for e in evs) and len(evs) == 18
    assert [e.msg.product for e in evs[:4]] == ["ETH-USD", "BTC-USD", "ETH-USD", "BTC-USD"]
    assert replay_products(store) == ("BTC-USD", "ETH-USD")
    assert replay_products(store / "history-eth.jsonl") == ("ETH-USD",)


def _replay(spec, products):
    got, done = [], threading.Event()

    def emit(batch, wait=False):
        for ev in batch:
            if type(ev).__name__ == "ReplayDone":
                done.set()
            got.append(ev)
        return True

    conf = MarketDataConfig(source="replay", replay_file="x", replay_speed="max")
    src = ReplaySource(conf, products, emit, logging.getLogger("test"), spec)
    src.start()
    assert done.wait(10), "replay did not finish"
    src.stop()
    return src, got


def test_a_replay_source_plays_a_whole_store_directory(store):
    src, got = _replay(store, ["BTC-USD", "ETH-USD"])
    trades = [e for e in got if type(e) is TradeEv]
    assert [(e.product, e.trade_id) for e in trades][:3] == [("ETH-USD", "100"), ("BTC-USD", "1"), ("ETH-USD", "101")]
    assert len(trades) == 18 and [e.ts_event for e in trades] == sorted(e.ts_event for e in trades)
    assert src.info()["files"] == 4 and src.info()["used"] == 18 and src.info()["error"] == ""
    src, got = _replay(f"{store / 'events-*.jsonl'}", ["BTC-USD"])
    assert [e.trade_id for e in got if type(e) is TradeEv] == [str(i) for i in range(1, 10)]
    assert not [e for e in got if type(e) is TickEv]


def test_a_replay_source_refuses_a_path_that_names_nothing(tmp_path):
    conf = MarketDataConfig(source="replay", replay_file="x", replay_speed="max")
    with pytest.raises(ConfigError, match="marketdata.replay_file"):
        ReplaySource(conf, ["BTC-USD"], lambda b, wait=False: True, logging.getLogger("test"), tmp_path / "none-*.jsonl")


def _all_batches(paths, products, prefetch_chunk=None, raw=False):
    """Every (ts, events) batch of a driven replay, inline or through a Prefetch of ``chunk``."""
    from nodes.marketdata.replay import Prefetch
    conf = MarketDataConfig(source="replay", replay_file=str(paths[0]))
    src = ReplaySource(conf, products, None, logging.getLogger("test"), paths)
    pre = Prefetch(src, chunk=prefetch_chunk) if prefetch_chunk else None
    try:
        out = [(ts, [_decoded(ev) for ev in evs]) for ts, evs in src.batches(stamp=lambda ts: ts, prefetch=pre)]
    finally:
        if pre is not None:
            pre.close()
    return out, (src.records, src.used, src.skipped, src.error, src.mode)


def _decoded(ev):
    """A prefetched Book's snapshot with its levels decoded (judged as L2Book judges them)."""
    if isinstance(ev, L2Ev) and isinstance(ev.bids, DeferredSnapshot):
        bids, asks = ev.bids.levels()
        assert ev.bids.crossed == DeferredSnapshot.judge(ev.product, bids, asks)
        return ev._replace(bids=bids, asks=asks)
    return ev


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_a_prefetched_replay_is_the_inline_replay(store, tmp_path, chunk):
    """The helper process reads, merges and parses what batches() would: the same batches in the
    same order, the same counts, whatever the chunk size (records of other types and products
    skipped in runs; a rotated set and a second recording merged by exchange time)."""
    files = resolve(store)
    extra = [proto.Envelope("md.status.BTC-USD", 1, "marketdata", 1, T0 + 1, T0 + 1,
                            proto.FeedStatus("BTC-USD", True, "OK", "", 0.1)),
             proto.Envelope("md.tick.SOL-USD", 2, "marketdata", 1, T0 + 2, T0 + 2,
                            proto.Tick("SOL-USD", D("1"), D("1"), D("1"), D("1.01"), D("1"), D("5")))]
    tail = proto.Envelope("md.status.BTC-USD", 3, "marketdata", 2, T0 + 99, T0 + 99,
                          proto.FeedStatus("BTC-USD", True, "OK", "", 0.1))
    books = [proto.Envelope("md.book.BTC-USD", 4, "marketdata", 4, T0 + 9, T0 + 9,
                            proto.Book("BTC-USD", [[D("100.00"), D("1")], [D("99.99"), D("0.5")]],
                                       [[D("100.02"), D("2")]])),
             proto.Envelope("md.book.ETH-USD", 5, "marketdata", 5, T0 + 10, T0 + 10,    # crossed
                            proto.Book("ETH-USD", [[D("3000.10"), D("1")]], [[D("3000.05"), D("1")]]))]
    mixed = _write(tmp_path / "mixed.jsonl",
                   extra + [_trade("BTC-USD", 50 + i, T0 + 3 + i) for i in range(5)] + books + [tail])
    for paths in (files, [mixed]):
        want = _all_batches(paths, ("BTC-USD", "ETH-USD"))
        assert want[1][1] > 0
        if paths == [mixed]:                # the end is the last record's time, a skipped one's here
            assert want[0][-1][0] == T0 + 99 and want[1][:3] == (10, 7, 3)
        assert _all_batches(paths, ("BTC-USD", "ETH-USD"), prefetch_chunk=chunk) == want


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_a_prefetched_replay_stops_at_a_bad_line_with_the_inline_error(tmp_path, chunk):
    good = [jsonl.dumps(_trade("BTC-USD", i, T0 + i)) for i in range(1, 6)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(good[:3] + ['{"topic":"md.trade.BTC-USD","type":"Trade"'] + good[3:]) + "\n")
    want = _all_batches([path], ("BTC-USD",))
    assert want[1][:3] == (3, 3, 0) and "bad.jsonl:4" in want[1][3]
    assert _all_batches([path], ("BTC-USD",), prefetch_chunk=chunk) == want


def test_a_prefetched_raw_replay_is_the_inline_replay(tmp_path):
    """A recording with RawFrame records replays its frames through a Normalizer of their
    connection, prefetched or not; its normalised records are skipped."""
    frames = [
        {"channel": "ticker", "client_id": "", "timestamp": "2026-11-01T00:00:00.000001Z", "sequence_num": i,
         "events": [{"type": "update", "tickers": [{"type": "ticker", "product_id": "BTC-USD", "price": f"650{i:02d}.5",
                                                     "volume_24_h": "10", "best_bid": f"650{i:02d}.4",
                                                     "best_bid_quantity": "1", "best_ask": f"650{i:02d}.6",
                                                     "best_ask_quantity": "2"}]}]}
        for i in range(6)]
    envs = []
    for i, f in enumerate(frames):
        conn = "ws-1" if i < 3 else "ws-2"
        envs.append(proto.Envelope("raw.coinbase", i, "marketdata", i + 1, T0 + i, T0 + i,
                                   proto.RawFrame(conn, json.dumps(f, separators=(",", ":")))))
        envs.append(_trade("BTC-USD", 10 + i, T0 + i))
    path = _write(tmp_path / "raw.jsonl", envs)
    want = _all_batches([path], ("BTC-USD",))
    assert want[1][4] == "raw" and want[1][1] == 6 and want[1][2] == 6
    assert any(type(e) is TickEv for _, b in want[0] for e in b)
    for chunk in (1, 4, 1000):
        assert _all_batches([path], ("BTC-USD",), prefetch_chunk=chunk) == want


def test_a_prefetch_closed_early_ends_its_helper_cleanly(tmp_path):
    """The engine stops a replay before its end (--end, --duration): close() lets the helper end
    by itself (exit code 0), even when it is blocked sending a chunk nobody reads."""
    from nodes.marketdata.replay import Prefetch
    path = _write(tmp_path / "long.jsonl", [_trade("BTC-USD", i, T0 + i) for i in range(1, 12000)])
    conf = MarketDataConfig(source="replay", replay_file=str(path))
    src = ReplaySource(conf, ("BTC-USD",), None, logging.getLogger("test"), [path])
    pre = Prefetch(src, chunk=4000)             # a chunk larger than the pipe holds: the helper blocks
    it = iter(pre)
    assert [type(next(it)) for _ in range(10)] == [tuple] * 10
    pre.close()
    assert pre._proc.exitcode == 0
