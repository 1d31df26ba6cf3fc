"""Positions and PnL: exact numbers by hand, marks, exposure, daily reset at 00:00 UTC, and the
rebuild from stored Fill events (through the store's JSON Lines format) equal to the cent."""
import datetime as dt
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

import proto
from nodes.execution.positions import PositionBook, utc_day
from proto import Fill, Tick, jsonl, topics

T0 = int(dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc).timestamp() * 1e9)
S = 1_000_000_000


def fill(side, price, size, fee, product="BTC-USD", fid=None):
    fill.n += 1
    return Fill(fid or f"f{fill.n}", "c", product, side, D(price), D(size), D(fee), "TAKER", "paper")


fill.n = 0


def test_average_cost_realised_with_fees_through_a_flip():
    b = PositionBook(D("1000"))
    steps = [(("BUY", "100", "2", "1"), ("2", "100", "-1")),
             (("BUY", "103", "1", "0.5"), ("3", "101", "-1.5")),
             (("SELL", "105", "1.5", "0.75"), ("1.5", "101", "3.75")),     # +4 * 1.5 - fee
             (("SELL", "99", "2.5", "1"), ("-1", "99", "-0.25")),          # closes 1.5 at -2, opens -1 at 99
             (("BUY", "97", "0.4", "0.2"), ("-0.6", "99", "0.35")),        # short gains 2 * 0.4
             (("BUY", "100", "0.6", "0.3"), ("0", "0", "-0.55"))]          # short loses 1 * 0.6, flat
    for i, (args, (qty, avg, realized)) in enumerate(steps):
        p = b.apply_fill(fill(*args), T0 + i * S)
        assert (p.qty, p.avg_cost, p.realized) == (D(qty), D(avg), D(realized)), i
    pos = b.position("BTC-USD")
    assert pos.fees == D("3.75") and pos.unrealized_pnl == 0 and pos.exposure == 0
    pnl = b.pnl()
    assert pnl.realized == D("-0.55") and pnl.equity == D("999.45") and pnl.fees == D("3.75")
    assert all(type(v) is D for v in (pos.qty, pos.avg_cost, pos.realized_pnl, pnl.daily, pnl.equity))


def test_unrealised_is_marked_to_mid_and_exposure_in_quote():
    b = PositionBook(D("1000"))
    b.apply_fill(fill("BUY", "101", "1.5", "0"), T0)
    assert b.position("BTC-USD").unrealized_pnl == 0            # no mark yet: at cost
    b.set_mark("BTC-USD", D("104"), T0 + 1)
    p = b.position("BTC-USD")
    assert (p.unrealized_pnl, p.exposure, p.mark) == (D("4.5"), D("156"), D("104"))
    b.apply_fill(fill("SELL", "50", "3", "0", product="ETH-USD"), T0 + 2)
    b.set_mark("ETH-USD", D("49.5"), T0 + 3)
    e = b.position("ETH-USD")
    assert (e.qty, e.unrealized_pnl, e.exposure) == (D("-3"), D("1.5"), D("148.5"))
    assert b.pnl().unrealized == D("6") and b.pnl().equity == D("1006")
    assert [p.product for p in b.snapshot()] == ["BTC-USD", "ETH-USD"]


def test_daily_pnl_resets_at_midnight_utc():
    midnight = int(dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc).timestamp() * 1e9)
    b = PositionBook(D("1000"))
    b.apply_fill(fill("BUY", "100", "1", "1"), midnight - 60 * S)
    b.set_mark("BTC-USD", D("110"), midnight - S)
    assert b.pnl().day == "2026-03-01" and b.pnl().daily == D("9")        # -1 fee + 10 unrealised
    assert not b.roll(midnight - 1)
    assert b.roll(midnight) and b.pnl().day == "2026-03-02" and b.pnl().daily == 0
    b.set_mark("BTC-USD", D("105"), midnight + S)
    assert b.pnl().daily == D("-5") and b.pnl().equity == D("1004")
    assert not b.roll(midnight - S)                    # time going backwards never un-rolls
    assert utc_day(midnight) == "2026-03-02" and utc_day(midnight - 1) == "2026-03-01"


def _env(enc, topic, msg, ts):
    return proto.decode(enc.encode(topic, msg, ts, ts))


fills_st = st.lists(st.tuples(st.sampled_from(["BUY", "SELL"]), st.integers(6000000, 7000000),
                              st.integers(1, 300000), st.integers(0, 5000), st.sampled_from(["BTC-USD", "ETH-USD"]),
                              st.integers(0, 7000000), st.integers(1, 20_000)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(fills_st)
def test_replaying_stored_fill_events_reproduces_positions_and_pnl_to_the_cent(rows):
    """What the node computes live == what the store file rebuilds (JSON Lines round trip)."""
    live = PositionBook(D("100000"))
    enc_x, enc_m = proto.Encoder("execution"), proto.Encoder("marketdata")
    lines, ts = [], T0
    for i, (side, px, size, fee, product, mark, dt_s) in enumerate(rows):
        ts += dt_s * S                                                   # crosses days now and then
        f = Fill(f"f{i}", f"c{i}", product, side, D(px) / 100, D(size) / 10**6, D(fee) / 100, "TAKER", "paper")
        live.apply_fill(f, ts)
        lines.append(jsonl.dumps(_env(enc_x, topics.fill(product), f, ts)))
        if mark:
            m = D(mark) / 100
            live.set_mark(product, (m + m + D("0.02")) / 2, ts + 1)
            t = Tick(product, m, m, D(1), m + D("0.02"), D(1), D(0))
            lines.append(jsonl.dumps(_env(enc_m, topics.tick(product), t, ts + 1)))
    replayed = PositionBook.replay((jsonl.loads(x) for x in lines), D("100000"))
    cent = D("0.01")
    for p in live.snapshot():
        r = replayed.position(p.product)
        assert r.qty == p.qty and r.avg_cost == p.avg_cost
        for a, b in zip(p[3:], r[3:]):
            assert a.quantize(cent) == b.quantize(cent) and a == b
    assert replayed.pnl() == live.pnl()


def test_replay_ignores_duplicate_fill_ids_and_other_venues():
    enc = proto.Encoder("execution")
    f = fill("BUY", "100", "1", "0", fid="same")
    envs = [_env(enc, topics.fill("BTC-USD"), f, T0), _env(enc, topics.fill("BTC-USD"), f, T0 + 1),
            _env(enc, topics.fill("BTC-USD"), f._replace(fill_id="cb", venue="coinbase"), T0 + 2)]
    b = PositionBook.replay(envs, venue="paper")
    assert b.position("BTC-USD").qty == D("1")


@settings(max_examples=300, deadline=None)
@given(bid=st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=0, max_value=10**9),
       ask=st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=0, max_value=10**9))
def test_mid_is_half_the_sum_in_the_positions_context(bid, ask):
    """mid() computes with CTX's methods: exactly what (bid + ask) / 2 gives inside localcontext(CTX)."""
    from decimal import localcontext
    from nodes.execution.positions import CTX, mid
    with localcontext(CTX):
        want = (bid + ask) / 2
    got = mid(bid, ask)
    assert got == want and str(got) == str(want)
