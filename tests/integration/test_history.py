"""``tickmesh history fetch`` against the fake Coinbase REST API over real HTTPS (self-signed CA),
through the official SDK's public endpoints: pagination (candle pages of 350 buckets, trade pages
of ``--trades-limit``), every trade fetched once, resume after a SIGTERM and after a failed chunk,
retries of transient errors, one-line errors, the fake's Coinbase limits, and a replay of the
written file through offline mode."""
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal as D
from pathlib import Path

import pytest
import requests

from nodes.config import ROOT
from proto import jsonl
from tests.conftest import wait_until
from tools.fakecoinbase.rest import FakeExchange, RestServer
from tools.history.__main__ import main as history_main

BTC = "BTC-USD"
T0 = 1793491200                       # 2026-11-01T00:00:00Z
CANDLES = "GET /market/products/{id}/candles"
TICKER = "GET /market/products/{id}/ticker"
TICKER_PATH = "/api/v3/brokerage/market/products/BTC-USD/ticker"
CANDLES_PATH = "/api/v3/brokerage/market/products/BTC-USD/candles"


@pytest.fixture
def fake():
    ex = FakeExchange([BTC, "ETH-USD"], seed=3, trades_per_s=0.3)
    rest = RestServer(ex).start()
    yield ex, rest
    rest.stop()


def args(rest, out, start="2026-11-01", end="2026-11-01T07:00Z", *extra, progress="none"):
    return ["fetch", "--product", BTC, "--start", start, "--end", end, "--out", str(out),
            "--base-url", rest.base_url, "--ca-bundle", rest.ca_bundle, "--rate", "0", "--backoff-s", "0.01",
            "--progress", progress, *extra]


def events(path):
    return [e for e in jsonl.read(path)]


def body_lines(path):
    """The event and checkpoint lines (the header's and the close line's wall-clock stamps aside)."""
    lines = Path(path).read_text().splitlines()
    return [ln for ln in lines if not ln.startswith(('{"type":"_open"', '{"type":"_close"'))]


def expected_trades(ex, start, end, limit=None):
    """The fake's trades of [start, end) (maker side); with ``limit``, what a fetch with that limit
    gets (a second holding more than ``limit`` trades yields its newest ``limit``) and the number
    of such seconds."""
    tape = ex.history.trades(BTC, start, end)
    if limit is None:
        return tape
    per = Counter(t[0] // 1_000_000 for t in tape)
    out, taken = [], Counter()
    for t in reversed(tape):
        s = t[0] // 1_000_000
        if taken[s] < limit:
            taken[s] += 1
            out.append(t)
    return sorted(out), sum(1 for n in per.values() if n > limit)


def test_fetch_pages_through_candles_and_trades_and_writes_a_store_file(fake, tmp_path):
    ex, rest = fake
    out = tmp_path / "btc.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = args(rest, out, "2026-11-01", "2026-11-01T07:00Z", "--trades-limit", "200", progress="auto")
    p = subprocess.run([sys.executable, "-m", "tools.cli", "history", *argv],
                       capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr
    # not a terminal: plain progress lines on stderr, the summary on stdout
    assert "history: BTC-USD 100.0% up to 2026-11-01T07:00:00Z" in p.stderr
    assert p.stdout.startswith(f"history: wrote {out}: BTC-USD ONE_MINUTE 2026-11-01T00:00:00Z .. 2026-11-01T07:00:00Z")

    tape = expected_trades(ex, T0, T0 + 7 * 3600)
    assert len(tape) > 5000
    # 420 buckets: two candle pages (350 + 70), never more than 350 buckets per request (else a 400)
    assert ex.requests[CANDLES] == 2
    # 200 trades per request: at least ceil(n/200) requests per hour chunk, all of them answered
    per_hour = Counter(t[0] // 1_000_000 // 3600 for t in tape)
    assert ex.requests[TICKER] >= sum(-(-n // 200) for n in per_hour.values()) > 7

    evs = events(out)
    trades = [e for e in evs if e.topic == "md.trade.BTC-USD"]
    ticks = [e for e in evs if e.topic == "md.tick.BTC-USD"]
    # every trade of the window exactly once, as Coinbase printed it; the side turned into the taker's
    assert [(int(e.msg.trade_id), e.ts_event // 1000, e.msg.price, e.msg.size) for e in trades] == \
        [(t[1], t[0], t[2], t[3]) for t in tape]
    assert [e.msg.side for e in trades] == [{"BUY": "SELL", "SELL": "BUY"}[t[4]] for t in tape]
    # one derived tick per trade, at its time: the trade price on the side it took, bid < ask
    assert len(ticks) == len(trades)
    for tr, tk in zip(trades, ticks):
        assert tk.ts_event == tr.ts_event and tk.msg.price == tr.msg.price
        assert tk.msg.bid < tk.msg.ask
        assert (tk.msg.ask if tr.msg.side == "BUY" else tk.msg.bid) == tr.msg.price
    # a store file: time order, contiguous sequence numbers per topic, exchange time as ts_event
    assert [e.ts_event for e in evs] == sorted(e.ts_event for e in evs)
    assert [e.seq for e in trades] == list(range(1, len(trades) + 1))
    assert T0 * 10**9 <= evs[0].ts_event and evs[-1].ts_event < (T0 + 7 * 3600) * 10**9
    meta = [m for m in jsonl.read(out, with_meta=True) if type(m) is dict]
    assert meta[0]["type"] == "_open" and meta[0]["history"]["product"] == BTC
    chunks = [m for m in meta if m["type"] == "_chunk"]
    assert [c["start"] for c in chunks] == [T0 + h * 3600 for h in range(7)]
    assert sum(c["candles"] for c in chunks) == 420          # the fake's tape trades every minute
    assert meta[-1]["type"] == "_close" and meta[-1]["reason"] == "complete"


def test_a_second_busier_than_the_limit_keeps_its_newest_trades_and_is_counted(tmp_path):
    ex = FakeExchange([BTC], seed=5, trades_per_s=3.0)
    rest = RestServer(ex).start()
    try:
        out = tmp_path / "busy.jsonl"
        assert history_main(args(rest, out, "2026-11-01T00:00Z", "2026-11-01T00:10Z", "--trades-limit", "3")) == 0
        want, over = expected_trades(ex, T0, T0 + 600, limit=3)
        assert over > 0
        got = [int(e.msg.trade_id) for e in events(out) if e.topic.startswith("md.trade.")]
        assert got == [t[1] for t in want]
        # counted: every second with more trades than the limit (and maybe some with exactly as many:
        # a full answer inside one second cannot tell)
        at_limit = sum(1 for n in Counter(t[0] // 1_000_000 for t in ex.history.trades(BTC, T0, T0 + 600)).values()
                       if n >= 3)
        chunk = [m for m in jsonl.read(out, with_meta=True) if type(m) is dict and m["type"] == "_chunk"][-1]
        assert over <= chunk["total"]["saturated_s"] <= at_limit
    finally:
        rest.stop()


def test_sigterm_then_the_same_command_resumes_without_refetching_or_duplicates(fake, tmp_path):
    ex, rest = fake
    clean = tmp_path / "clean.jsonl"
    assert history_main(args(rest, clean, "2026-11-01", "2026-11-01T05:00Z", "--trades-limit", "200")) == 0
    before = dict(ex.requests)

    out = tmp_path / "cut.jsonl"
    cmd = [sys.executable, "-m", "tools.history",
           *args(rest, out, "2026-11-01", "2026-11-01T05:00Z", "--trades-limit", "200")]
    cmd[cmd.index("--rate") + 1] = "4"            # slow enough to be stopped half-way
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_until(lambda: out.exists() and out.read_text().count('{"type":"_chunk"') >= 1, 60,
                   what="a first chunk written")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err
    done = out.read_text().count('{"type":"_chunk"')
    assert 1 <= done < 5 and '"_close"' not in out.read_text()
    # a crash mid-chunk leaves part of the next chunk behind: resuming cuts it off
    with open(out, "a") as f:
        f.write('{"topic":"md.trade.BTC-USD","type":"Trade","source":"history","seq":99999,"msg_id":1,"ts_ev')
    ticker_before = ex.requests[TICKER]
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T05:00Z", "--trades-limit", "200")) == 0
    assert body_lines(out) == body_lines(clean)
    # the resumed run fetched only the chunks that were missing
    first_run_total = before[TICKER]
    assert ex.requests[TICKER] - ticker_before < first_run_total


def test_a_failed_chunk_stops_with_one_line_and_the_next_run_continues(fake, tmp_path, capsys):
    ex, rest = fake
    clean = tmp_path / "clean.jsonl"
    assert history_main(args(rest, clean, "2026-11-01", "2026-11-01T04:00Z")) == 0
    out = tmp_path / "out.jsonl"
    ex.fail_next(1, 400, "GET", TICKER_PATH, skip=2)     # chunks 1 and 2 pass, chunk 3 is refused
    capsys.readouterr()
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T04:00Z")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 400 INVALID_ARGUMENT" in err[0], err
    assert "holds up to 2026-11-01T0" in err[0] and err[0].endswith("run the same command again to resume)")
    assert out.read_text().count('{"type":"_chunk"') >= 1
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T04:00Z")) == 0
    assert "resuming" in capsys.readouterr().err
    assert body_lines(out) == body_lines(clean)
    # a finished file: nothing to fetch; a later --end extends it
    n = sum(ex.requests.values())
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T04:00Z")) == 0
    assert "nothing to fetch" in capsys.readouterr().out
    assert sum(ex.requests.values()) == n + 1        # the product look-up only
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T05:00Z")) == 0
    assert [m["end"] for m in jsonl.read(out, with_meta=True) if type(m) is dict and m["type"] == "_chunk"][-1] \
        == T0 + 5 * 3600


def test_transient_errors_are_retried_and_change_nothing(fake, tmp_path, capsys):
    ex, rest = fake
    clean = tmp_path / "clean.jsonl"
    assert history_main(args(rest, clean, "2026-11-01", "2026-11-01T02:00Z")) == 0
    ex.fail_next(2, 503, "GET", CANDLES_PATH)
    ex.fail_next(1, 429, "GET", TICKER_PATH, skip=1)
    ex.fail_next(1, 500, "GET", "/api/v3/brokerage/market/products/BTC-USD", skip=0)
    out = tmp_path / "retried.jsonl"
    capsys.readouterr()
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T02:00Z")) == 0
    assert "(4 retried)" in capsys.readouterr().out
    assert body_lines(out) == body_lines(clean)


@pytest.mark.parametrize("argv_tail, rc, text", [
    (["--product", "NOPE-USD"], 1, "history: unknown product 'NOPE-USD' (product NOPE-USD: HTTP 404 NOT_FOUND: "
                                   "valid product_id is required)"),
    (["--product", "BTC/USD"], 2, "history: --product: expected a Coinbase product id such as BTC-USD, got 'BTC/USD'"),
    (["--start", "2026-13-01"], 2, "history: --start: expected a date (2026-11-01) or a UTC time "
                                   "(2026-11-01T12:00Z), got '2026-13-01'"),
    (["--end", "2026-10-01"], 2, "history: --end (2026-10-01T00:00:00Z) must be after --start (2026-11-01T00:00:00Z)"),
    (["--start", "2099-01-01", "--end", "2099-01-02"], 2, "history: --start (2099-01-01T00:00:00Z) is not in the past"),
    (["--base-url", "http://127.0.0.1:1"], 2, "history: --base-url: the Coinbase SDK speaks https only"),
])
def test_bad_requests_fail_with_one_line(fake, tmp_path, capsys, argv_tail, rc, text):
    _, rest = fake
    argv = args(rest, tmp_path / "x.jsonl")
    for i in range(0, len(argv_tail), 2):
        argv[argv.index(argv_tail[i]) + 1] = argv_tail[i + 1]
    capsys.readouterr()
    assert history_main(argv) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(text), err
    assert not (tmp_path / "x.jsonl").exists()


def test_http_errors_fail_with_one_line(fake, tmp_path, capsys):
    ex, rest = fake
    ex.fail_next(9, 503, "GET", CANDLES_PATH)
    capsys.readouterr()
    assert history_main(args(rest, tmp_path / "a.jsonl", "2026-11-01", "2026-11-01T01:00Z", "--retries", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["history: candles BTC-USD 1793491200..1793494799: HTTP 503 INTERNAL: internal error (after 3 tries)"]
    # another file at --out is never overwritten
    other = tmp_path / "notes.jsonl"
    other.write_text('{"topic":"md.tick.BTC-USD"}\n')
    assert history_main(args(rest, other, "2026-11-01", "2026-11-01T01:00Z")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a file written by `tickmesh history fetch`" in err[0]
    assert other.read_text() == '{"topic":"md.tick.BTC-USD"}\n'
    # nothing listens: connection errors are retried, then one line
    argv = args(rest, tmp_path / "b.jsonl", "2026-11-01", "2026-11-01T01:00Z", "--retries", "1")
    argv[argv.index("--base-url") + 1] = "127.0.0.1:1"
    assert history_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["history: product BTC-USD: cannot reach https://127.0.0.1:1: [Errno 111] Connection refused "
                   "(after 2 tries)"]


def test_the_fake_enforces_coinbase_limits_with_the_sdk_shapes(fake):
    from coinbase.rest import RESTClient
    ex, rest = fake
    c = RESTClient(api_key=None, api_secret=None, base_url=rest.base_url, timeout=10)
    c.session.verify, c.session.trust_env = rest.ca_bundle, False
    ok = c.get_public_candles(BTC, start=str(T0), end=str(T0 + 350 * 60), granularity="ONE_MINUTE")
    assert len(ok.candles) == 350 and int(ok.candles[0].start) > int(ok.candles[-1].start)   # newest first
    one = ok.candles[-1]
    tape = ex.history.trades(BTC, T0, T0 + 60)
    assert (D(one.open), D(one.close), D(one.volume)) == (tape[0][2], tape[-1][2], sum(t[3] for t in tape))
    with pytest.raises(requests.HTTPError, match="400 Client Error.*number of candles requested"):
        c.get_public_candles(BTC, start=str(T0), end=str(T0 + 351 * 60), granularity="ONE_MINUTE")
    with pytest.raises(requests.HTTPError, match="400 Client Error.*granularity"):
        c.get_public_candles(BTC, start=str(T0), end=str(T0 + 60), granularity="ONE_SECOND")
    with pytest.raises(requests.HTTPError, match="400 Client Error.*limit"):
        c.get_public_market_trades(BTC, limit=1001, start=str(T0), end=str(T0 + 60))
    r = c.get_public_market_trades(BTC, limit=5, start=str(T0), end=str(T0 + 3600))
    assert [t.trade_id for t in r.trades] == [str(t[1]) for t in reversed(ex.history.trades(BTC, T0, T0 + 3600)[-5:])]
    assert set(r.trades[0].to_dict()) == {"trade_id", "product_id", "price", "size", "time", "side", "exchange"}
    assert r.best_bid and r.best_ask
    with pytest.raises(requests.HTTPError, match="404 Client Error.*valid product_id is required"):
        c.get_public_product("NOPE-USD")
    assert c.get_public_product(BTC).product_id == BTC
    # private endpoints still want a JWT
    with pytest.raises(requests.HTTPError, match="401"):
        c.session.get(f"https://{rest.base_url}/api/v3/brokerage/accounts", timeout=5).raise_for_status()


def test_offline_mode_replays_the_fetched_file(fake, tmp_path):
    _, rest = fake
    out = tmp_path / "btc.jsonl"
    assert history_main(args(rest, out, "2026-11-01", "2026-11-01T01:00Z")) == 0
    n_trades = sum(1 for e in events(out) if e.topic.startswith("md.trade."))
    summary_file = tmp_path / "summary.json"
    p = subprocess.run([sys.executable, "-m", "nodes.offline", "--source", f"replay:{out}", "--duration", "3",
                        "--state-dir", str(tmp_path / "run"), "--summary-json", str(summary_file)],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads(summary_file.read_text())
    # the file's market data went through the mesh: its ticks and trades, and nothing else's
    assert 0 < int(summary["ticks"]) <= n_trades and 0 < int(summary["trades"]) <= n_trades
    assert summary["bus_gaps"] == 0
    assert set(summary["positions"]) <= {BTC}
