"""tools/history without sockets: time and record parsing, the derived ticks (spread, sizes, 24 h
volume, candle-only buckets), the store file's checkpoints and resume, and argument checks."""
import json
from decimal import Decimal as D
from types import SimpleNamespace

import pytest

from proto import jsonl
from tools.history import derive
from tools.history.__main__ import Usage, base_url_of, build_parser, resolve
from tools.history.derive import BadData, Candle, Deriver, HTrade
from tools.history.storefile import HistoryFile, NotResumable

T0 = 1793491200                      # 2026-11-01T00:00:00Z
NS = 1_000_000_000
INC = D("0.01")


def tr(ts_s, tid, price, size="0.1", side="BUY"):
    return HTrade(int(ts_s * NS), str(tid), D(price), D(size), side)


def test_times_parse_to_integer_nanoseconds():
    assert derive.parse_time_ns("2026-11-01T00:00:59.944309Z") == (T0 + 59) * NS + 944_309_000
    assert derive.parse_time_ns("2026-11-01T00:00:00Z") == T0 * NS
    assert derive.parse_time_ns("2026-11-01T01:00:00.5+01:00") == T0 * NS + NS // 2
    assert derive.parse_time_ns("2026-11-01T00:00:00.123456789Z") == T0 * NS + 123_456_789
    for bad in ("", "2026-11-01", "yesterday", None):
        with pytest.raises(BadData):
            derive.parse_time_ns(bad)


def test_trades_and_candles_parse_strictly():
    t = derive.parse_trade({"trade_id": "7", "product_id": "BTC-USD", "price": "65000.01", "size": "0.5",
                            "time": "2026-11-01T00:00:01.000001Z", "side": "SELL", "exchange": "coinbase"}, "BTC-USD")
    # the API gives the maker's side: a maker sell was lifted by a taker buy
    assert (t.ts, t.trade_id, t.price, t.size, t.side) == ((T0 + 1) * NS + 1000, "7", D("65000.01"), D("0.5"), "BUY")
    good = {"trade_id": "7", "price": "1", "size": "1", "time": "2026-11-01T00:00:01Z", "side": "BUY"}
    for k, v in (("side", "buy"), ("price", "-1"), ("size", "NaN"), ("trade_id", ""), ("product_id", "ETH-USD"),
                 ("time", "1793491200")):
        with pytest.raises(BadData):
            derive.parse_trade(dict(good, **{k: v}), "BTC-USD")
    c = derive.parse_candle({"start": str(T0), "low": "1", "high": "3", "open": "2", "close": "2.5", "volume": "9"})
    assert (c.start, c.open, c.high, c.low, c.close, c.volume) == (T0, D(2), D(3), D(1), D("2.5"), D(9))
    with pytest.raises(BadData):
        derive.parse_candle({"start": str(T0), "low": "2", "high": "3", "open": "1", "close": "2.5", "volume": "9"})
    with pytest.raises(BadData):
        derive.parse_candle({"start": "soon", "low": "1", "high": "3", "open": "2", "close": "2", "volume": "1"})


def test_ticks_put_the_trade_on_the_side_it_took_with_a_spread_learned_from_the_tape():
    d = Deriver("BTC-USD", INC, 60, msg_base=1000)
    out = d.chunk_events([tr(T0 + 0.0, 1, "100.05", "0.2", "BUY")], [])
    trade, tick = out
    assert (trade.topic, trade.msg.side, trade.seq, trade.msg_id) == ("md.trade.BTC-USD", "BUY", 1, 1001)
    # no pair seen yet: one increment; a taker buy lifted the ask
    assert (tick.msg.bid, tick.msg.ask, tick.msg.ask_size, tick.ts_event) == (D("100.04"), D("100.05"), D("0.2"),
                                                                               T0 * NS)
    # a taker sell 100 ms later at 100.00: the two sides 0.05 apart
    (_, tick) = d.chunk_events([tr(T0 + 0.1, 2, "100.00", "0.3", "SELL")], [])
    assert (tick.msg.bid, tick.msg.ask, tick.msg.bid_size, tick.msg.ask_size) == (D("100.00"), D("100.05"), D("0.3"),
                                                                                   D("0.2"))
    # a pair more than 250 ms apart says nothing about the spread (the quote may have moved)
    (_, tick) = d.chunk_events([tr(T0 + 5, 3, "101.00", "0.1", "BUY")], [])
    assert tick.msg.ask - tick.msg.bid == D("0.05")
    assert d.spread == D("0.05") and d.counts == {"trades": 3, "ticks": 3, "candle_ticks": 0}


def test_the_spread_is_a_median_capped_at_half_a_percent():
    d = Deriver("X-USD", INC, 60, 0)
    t = T0
    for i, gap in enumerate(["0.01", "0.01", "9.00", "0.02", "0.01"]):   # one outlier pair
        d.learn(tr(t, 2 * i, "100", side="BUY"))
        d.learn(tr(t + 0.01, 2 * i + 1, str(D(100) - D(gap)), side="SELL"))
        t += 1
    assert d.spread == D("0.01")
    d2 = Deriver("X-USD", INC, 60, 0)
    d2.learn(tr(T0, 1, "100", side="BUY"))
    d2.learn(tr(T0 + 0.01, 2, "90", side="SELL"))
    assert d2.spread == D("0.45")                    # 0.5% of 90 (the gap was 10)


def test_volume_24h_trails_a_day_of_fetched_trades():
    d = Deriver("BTC-USD", INC, 60, 0)
    d.chunk_events([tr(T0, 1, "1", "2"), tr(T0 + 3600, 2, "1", "3")], [])
    (_, tick) = d.chunk_events([tr(T0 + 86400 - 1, 3, "1", "1")], [])
    assert tick.msg.volume_24h == D(6)
    (_, tick) = d.chunk_events([tr(T0 + 86400 + 60, 4, "1", "1")], [])
    assert tick.msg.volume_24h == D(5)                # the first trade's minute left the window


def test_candle_only_buckets_become_four_ticks_between_the_trades():
    d = Deriver("BTC-USD", INC, 60, 0)
    rising = Candle(T0 + 60, D("10.00"), D("12.00"), D("9.00"), D("11.00"), D("5"))
    falling = Candle(T0 + 180, D("11.00"), D("11.50"), D("8.00"), D("9.00"), D("5"))
    busy = Candle(T0, D("10"), D("10"), D("10"), D("10"), D("1"))     # has trades: they tell it
    out = d.chunk_events([tr(T0 + 2, 1, "10.00"), tr(T0 + 130, 2, "11.00", side="SELL")], [busy, falling, rising])
    assert [e.topic.split(".")[1] for e in out] == ["trade", "tick", "tick", "tick", "tick", "tick", "trade", "tick",
                                                    "tick", "tick", "tick", "tick"]
    candle_ticks = [e for e in out if e.topic == "md.tick.BTC-USD" and e.ts_event >= (T0 + 60) * NS
                    and e.ts_event != (T0 + 130) * NS]
    assert [e.msg.price for e in candle_ticks] == [D(10), D(9), D(12), D(11), D(11), D("11.50"), D(8), D(9)]
    assert [e.ts_event for e in candle_ticks[:4]] == [(T0 + 60) * NS + i * 15 * NS for i in range(4)]
    assert all(e.msg.bid < e.msg.ask and e.msg.bid <= e.msg.price <= e.msg.ask for e in candle_ticks)
    assert [e.ts_event for e in out] == sorted(e.ts_event for e in out)
    assert [e.seq for e in out if e.topic == "md.tick.BTC-USD"] == list(range(1, 11))
    assert d.counts == {"trades": 2, "ticks": 10, "candle_ticks": 8}


def test_a_deriver_rebuilt_from_the_trades_written_continues_identically():
    trades = [tr(T0 + i * 0.07, i, str(D("100") + D(i % 7) / 100), "0.01", "BUY" if i % 3 else "SELL")
              for i in range(400)]
    whole = Deriver("BTC-USD", INC, 60, 5)
    a = whole.chunk_events(trades[:250], []) + whole.chunk_events(trades[250:], [])
    first = Deriver("BTC-USD", INC, 60, 5)
    written = first.chunk_events(trades[:250], [])
    again = Deriver("BTC-USD", INC, 60, 5)
    for env in written:
        if env.topic.startswith("md.trade."):
            m = env.msg
            again.learn(HTrade(env.ts_event, m.trade_id, m.price, m.size, m.side))
    again.seq, again.msgs = dict(first.seq), first.msgs
    assert written + again.chunk_events(trades[250:], []) == a


def _hist(path, product="BTC-USD"):
    return HistoryFile(path, {"product": product, "granularity": "ONE_MINUTE", "start": "2026-11-01T00:00:00Z",
                              "start_s": T0})


def _lines(n, start=0):
    d = Deriver("BTC-USD", INC, 60, 0)
    d.msgs = start
    return [jsonl.dumps(e) for e in d.chunk_events([tr(T0 + start + i, start + i, "100") for i in range(n)], [])]


def test_the_store_file_resumes_after_its_last_complete_chunk(tmp_path):
    path = tmp_path / "h.jsonl"
    f = _hist(path)
    r = f.open()
    assert r.checkpoint is None and not r.resumed
    f.write_chunk(_lines(3), {"start": T0, "end": T0 + 3600, "seq": {}, "msgs": 6})
    f.write_chunk(_lines(2, 3), {"start": T0 + 3600, "end": T0 + 7200, "seq": {}, "msgs": 10})
    f.close()
    whole = path.read_bytes()
    with open(path, "ab") as out:      # a crash in the middle of the third chunk
        out.write(("\n".join(_lines(2, 5)) + "\n" + _lines(1, 7)[0][:40]).encode())
    r = _hist(path).open()
    assert r.resumed and r.checkpoint["end"] == T0 + 7200 and r.lines == 1 + 7 + 5
    assert path.read_bytes() == whole                 # the cut chunk is gone
    g = _hist(path)
    g.open()
    assert [e.msg.trade_id for e in g.trades()] == ["0", "1", "2", "3", "4"]
    g.close("complete")
    # a cut checkpoint line: the chunk before it is the last complete one... and the cut one's events go
    data = path.read_bytes()
    path.write_bytes(data[:data.rfind(b'{"type":"_chunk"')] + b'{"type":"_chunk","start":17934')
    r = _hist(path).open()
    assert r.checkpoint["end"] == T0 + 3600
    assert [json.loads(x)["type"] for x in path.read_text().splitlines()] == ["_open"] + ["Trade", "Tick"] * 3 + ["_chunk"]


def test_the_store_file_refuses_what_it_cannot_continue(tmp_path):
    other = tmp_path / "events.jsonl"
    other.write_text('{"topic":"md.tick.BTC-USD"}\n')
    with pytest.raises(NotResumable, match="not a file written by `tickmesh history fetch`"):
        _hist(other).open()
    path = tmp_path / "h.jsonl"
    f = _hist(path)
    f.open()
    f.close()
    with pytest.raises(NotResumable, match="holds BTC-USD ONE_MINUTE from 2026-11-01T00:00:00Z; this request is "
                                           "ETH-USD"):
        _hist(path, "ETH-USD").open()
    # a header cut mid-line: nothing was fetched yet, start again
    path.write_bytes(path.read_bytes()[:30])
    r = _hist(path).open()
    assert not r.resumed and path.read_text().startswith('{"type":"_open"')


def _args(**kw):
    a = dict(product="BTC-USD", start="2026-11-01", end="2026-11-02", granularity="ONE_MINUTE", trades_limit=1000,
             retries=6, backoff_s=0.5, timeout_s=30.0, rate=9.0, base_url=None, ca_bundle=None)
    a.update(kw)
    return SimpleNamespace(**a)


def test_arguments_are_checked_and_completed():
    now = T0 + 10 * 86400
    r = resolve(_args(product="btc-usd"), env={}, now=now)
    assert (r["product"], r["start"], r["end"], r["g"], r["base_url"], r["notes"]) == \
        ("BTC-USD", T0, T0 + 86400, 60, "api.coinbase.com", [])
    r = resolve(_args(start="2026-11-01T00:30Z", end="2026-11-01T02:10Z", granularity="ONE_HOUR"), env={}, now=now)
    assert (r["start"], r["end"]) == (T0, T0 + 3 * 3600) and len(r["notes"]) == 2
    r = resolve(_args(end="2026-12-01"), env={}, now=T0 + 86400 + 125)          # --end in the future
    assert r["end"] == T0 + 86400 + 120 and "fetching up to 2026-11-02T00:02:00Z" in r["notes"][0]
    r = resolve(_args(), env={"COINBASE_REST_BASE_URL": "https://127.0.0.1:8443/"}, now=now)
    assert r["base_url"] == "127.0.0.1:8443"
    assert resolve(_args(base_url="localhost:9"), env={"COINBASE_REST_BASE_URL": "x:1"}, now=now)["base_url"] == \
        "localhost:9"
    for kw, msg in ((dict(product="BTC_USD"), "--product"), (dict(start="11/01/2026"), "--start"),
                    (dict(end="2026-11-01"), "must be after"), (dict(trades_limit=1001), "--trades-limit"),
                    (dict(start="2026-11-11", end="2026-11-12"), "not in the past"),
                    (dict(ca_bundle="/nonexistent.pem"), "--ca-bundle"), (dict(retries=-1), "--retries")):
        with pytest.raises(Usage, match=msg):
            resolve(_args(**kw), env={}, now=now)
    assert base_url_of("api.coinbase.com") == "api.coinbase.com"
    for bad in ("http://127.0.0.1:1", "ws://x", "host/path", ""):
        with pytest.raises(Usage):
            base_url_of(bad)


def test_the_help_says_how_to_resume(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fetch", "--help"])
    out = capsys.readouterr().out
    assert "Run the same command\nagain with the same --out" in out and "COINBASE_REST_BASE_URL" in out


class _Tape:
    """The market-trades answers of a tape (what ``PublicApi.trades`` returns), newest first."""

    def __init__(self, trades, shift_s=0):
        self.tape, self.shift, self.calls = trades, shift_s, []

    def trades(self, product, start_s, end_s, limit):
        self.calls.append((start_s, end_s))
        inside = [t for t in self.tape if start_s * NS <= t[0] < end_s * NS]
        return [{"trade_id": str(tid), "product_id": product, "price": "100", "size": "1", "side": "SELL",
                 "time": f"2026-11-01T00:{(ts // NS - T0 + self.shift) // 60:02d}:"
                         f"{(ts // NS - T0 + self.shift) % 60:02d}.{ts % NS:09d}Z"}
                for ts, tid in reversed(inside[-limit:])]


def _fetcher(api, limit):
    from tools.history.fetch import Fetcher
    return Fetcher(api, None, "BTC-USD", "ONE_MINUTE", T0, T0 + 3600, trades_limit=limit, increment=INC)


def test_trade_pages_walk_back_by_second_and_count_seconds_they_cannot_split():
    # 2 trades a second for 10 s, 5 in second 4
    tape = sorted([((T0 + s) * NS + i * 1000, s * 10 + i) for s in range(10) for i in range(5 if s == 4 else 2)])
    api = _Tape(tape)
    got, saturated = _fetcher(api, 3)._trades(T0, T0 + 10)
    ids = sorted(int(t.trade_id) for t in got)
    assert ids == sorted(tid for _, tid in tape if tid not in (40, 41))     # second 4 keeps its newest 3
    assert saturated >= 1
    assert all(e <= prev for (_, e), (_, prev) in zip(api.calls[1:], api.calls))      # ends only move back
    api = _Tape(tape)
    got, saturated = _fetcher(api, 1000)._trades(T0, T0 + 10)
    assert len(got) == len(tape) and saturated == 0 and api.calls == [(T0, T0 + 10)]     # one page held all


def test_trades_outside_the_window_asked_stop_the_fetch():
    api = _Tape([((T0 + 5) * NS, 1)], shift_s=120)          # the API answers with other times
    with pytest.raises(BadData, match="outside the window asked for"):
        _fetcher(api, 10)._trades(T0, T0 + 10)
