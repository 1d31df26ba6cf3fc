"""The Coinbase frame normaliser: every documented message shape, sequence checks, bad input."""
import json
from decimal import Decimal

from hypothesis import given, settings, strategies as st

from nodes.marketdata.normalize import (Ack, ErrorFrame, Frame, Gap, HeartbeatEv, L2Ev, Normalizer, OutOfOrder,
                                        ParseError, TickEv, TradeEv, parse_ts)

TS = "2026-03-01T12:00:00.123456789Z"
TS_NS = 1772366400_123456789


def env(channel, seq, events, ts=TS, **extra):
    d = {"channel": channel, "client_id": "", "timestamp": ts, "sequence_num": seq, "events": events}
    d.update(extra)
    return json.dumps(d)


def of(events, cls):
    return [e for e in events if type(e) is cls]


def test_parse_ts_nanoseconds_and_forms():
    assert parse_ts(TS) == TS_NS
    assert parse_ts("2026-03-01T12:00:00Z") == 1772366400 * 10**9
    assert parse_ts("2026-03-01T12:00:00.5Z") == 1772366400 * 10**9 + 500_000_000
    assert parse_ts("2026-03-01T13:00:00.000001+01:00") == 1772366400 * 10**9 + 1000
    assert parse_ts("1970-01-01T00:00:00Z") == 0
    for bad in ("2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-03-01T25:00:00Z", "not a time at all!!",
                "2026-03-01T12:00:00.1234567891Z", "2026-03-01T12:00:00", 12345, None):
        try:
            parse_ts(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_ticker_several_products_in_one_event_exact_decimals():
    n = Normalizer("c#1")
    frame = env("ticker", 0, [{"type": "update", "tickers": [
        {"type": "ticker", "product_id": "BTC-USD", "price": "65000.01", "volume_24_h": "9000.12",
         "low_24_h": "63000", "high_24_h": "66000", "price_percent_chg_24_h": "1.234",
         "best_bid": "65000.00", "best_bid_quantity": "0.5", "best_ask": "65000.01", "best_ask_quantity": "0.25"},
        {"type": "ticker", "product_id": "ETH-USD", "price": "3200.1", "volume_24_h": "1",
         "best_bid": "3200.09", "best_bid_quantity": "2", "best_ask": "3200.10", "best_ask_quantity": "3"}]}])
    out = n.feed(frame, 42)
    assert out[0] == Frame("c#1", "ticker", 0)
    ticks = of(out, TickEv)
    assert ticks[0] == TickEv("BTC-USD", Decimal("65000.01"), Decimal("65000.00"), Decimal("0.5"),
                              Decimal("65000.01"), Decimal("0.25"), Decimal("9000.12"), TS_NS, 42)
    assert str(ticks[0].bid) == "65000.00"           # exact, trailing zero kept
    assert ticks[1].product == "ETH-USD" and ticks[1].ask == Decimal("3200.10")
    assert not of(out, ParseError)


def test_several_ticker_events_in_one_frame():
    n = Normalizer("c")
    t = {"product_id": "BTC-USD", "price": "1", "volume_24_h": "2", "best_bid": "0.9", "best_bid_quantity": "1",
         "best_ask": "1.1", "best_ask_quantity": "1"}
    out = n.feed(env("ticker", 0, [{"type": "update", "tickers": [t]}, {"type": "update", "tickers": [t]}]), 1)
    assert len(of(out, TickEv)) == 2


def test_ticker_batch_has_no_best_bid_ask():
    n = Normalizer("c")
    out = n.feed(env("ticker_batch", 0, [{"type": "update", "tickers": [
        {"type": "ticker", "product_id": "BTC-USD", "price": "65000", "volume_24_h": "1"}]}]), 1)
    (t,) = of(out, TickEv)
    assert t.bid is None and t.ask is None and t.price == Decimal("65000")


def test_market_trades_maker_side_becomes_taker_side_and_snapshot_is_history():
    n = Normalizer("c")
    snap = n.feed(env("market_trades", 0, [{"type": "snapshot", "trades": [
        {"product_id": "BTC-USD", "trade_id": "1", "price": "1", "size": "1", "time": TS, "side": "BUY"}]}]), 1)
    assert not of(snap, TradeEv) and not of(snap, ParseError)
    out = n.feed(env("market_trades", 1, [{"type": "update", "trades": [
        {"product_id": "BTC-USD", "trade_id": "900000001", "price": "65000.01", "size": "0.0150",
         "time": "2026-03-01T12:00:02.123456Z", "side": "SELL"},
        {"product_id": "ETH-USD", "trade_id": 77, "price": "3200", "size": "1", "time": TS, "side": "BUY"}]}]), 5)
    a, b = of(out, TradeEv)
    assert a == TradeEv("BTC-USD", "900000001", Decimal("65000.01"), Decimal("0.0150"), "BUY",
                        1772366402_123456000, 5)
    assert b.side == "SELL" and b.trade_id == "77"


def test_level2_snapshot_then_updates_bid_offer():
    n = Normalizer("c")
    out = n.feed(env("l2_data", 0, [{"type": "snapshot", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": "1970-01-01T00:00:00Z", "price_level": "64999.99", "new_quantity": "1.2"},
        {"side": "offer", "event_time": "1970-01-01T00:00:00Z", "price_level": "65000.01", "new_quantity": "0.4"}]}]), 9)
    (s,) = of(out, L2Ev)
    assert s.snapshot and s.bids == [(Decimal("64999.99"), Decimal("1.2"))]
    assert s.asks == [(Decimal("65000.01"), Decimal("0.4"))]
    assert s.ts_event == TS_NS          # placeholder event_time: the envelope time is used
    out = n.feed(env("l2_data", 1, [
        {"type": "update", "product_id": "BTC-USD", "updates": [
            {"side": "offer", "event_time": "2026-03-01T12:00:01Z", "price_level": "65000.01", "new_quantity": "0"}]},
        {"type": "update", "product_id": "ETH-USD", "updates": [
            {"side": "bid", "event_time": "2026-03-01T12:00:01Z", "price_level": "3000", "new_quantity": "2"}]}]), 10)
    u1, u2 = of(out, L2Ev)
    assert not u1.snapshot and u1.asks == [(Decimal("65000.01"), Decimal("0"))] and u1.bids == []
    assert u1.ts_event == 1772366401 * 10**9
    assert u2.product == "ETH-USD"


def test_level2_bad_event_names_its_product():
    n = Normalizer("c")
    out = n.feed(env("l2_data", 0, [{"type": "update", "product_id": "BTC-USD", "updates": [
        {"side": "ask?", "price_level": "1", "new_quantity": "1"}]}]), 1)
    (e,) = of(out, ParseError)
    assert e.product == "BTC-USD" and not of(out, L2Ev)


def test_ack_before_or_after_data_and_empty_ack():
    n = Normalizer("c")
    out = n.feed(env("subscriptions", 0, [{"subscriptions": {"level2": ["BTC-USD"], "market_trades": ["BTC-USD", "ETH-USD"]}}]), 1)
    assert of(out, Ack)[0].subscriptions == {"level2": ["BTC-USD"], "market_trades": ["BTC-USD", "ETH-USD"]}
    out = n.feed(env("subscriptions", 1, [{"subscriptions": {}}]), 1)
    assert of(out, Ack)[0].subscriptions == {}
    assert not of(out, Gap)


def test_heartbeat_counter_int_or_string():
    n = Normalizer("c")
    hb = {"current_time": "2026-03-01 12:00:01.000081 +0000 UTC m=+5012.3"}
    a = n.feed(env("heartbeats", 0, [dict(hb, heartbeat_counter=5012)]), 1)
    b = n.feed(env("heartbeats", 1, [dict(hb, heartbeat_counter="3049")]), 1)
    assert of(a, HeartbeatEv)[0].counter == 5012 and of(b, HeartbeatEv)[0].counter == 3049


def test_error_frame_has_no_envelope_and_keeps_the_sequence():
    n = Normalizer("c")
    n.feed(env("heartbeats", 0, [{"heartbeat_counter": 1}]), 1)
    out = n.feed('{"type": "error", "message": "authentication failure"}', 1)
    assert out == [Frame("c", "error", -1), ErrorFrame("c", "authentication failure")]
    assert not of(n.feed(env("heartbeats", 1, [{"heartbeat_counter": 2}]), 1), Gap)


def test_unknown_channel_counted_not_fatal():
    n = Normalizer("c")
    out = n.feed(env("brand_new_channel", 0, [{"x": 1}]), 1)
    assert out == [Frame("c", "brand_new_channel", 0)]
    out = n.feed(env("status", 1, [{"type": "snapshot", "products": []}]), 1)
    assert out == [Frame("c", "status", 1)]


def test_sequence_per_connection_from_zero_acks_included_gap_and_out_of_order():
    n = Normalizer("c")
    assert not of(n.feed(env("subscriptions", 0, [{"subscriptions": {}}]), 1), Gap)
    assert not of(n.feed(env("heartbeats", 1, [{"heartbeat_counter": 1}]), 1), Gap)
    out = n.feed(env("heartbeats", 4, [{"heartbeat_counter": 1}]), 1)
    assert of(out, Gap) == [Gap("c", 2, 4)] and of(out, HeartbeatEv)     # the frame itself is used
    out = n.feed(env("ticker", 3, [{"type": "update", "tickers": []}]), 1)
    assert of(out, OutOfOrder) == [OutOfOrder("c", 4, 3)]
    assert not of(n.feed(env("heartbeats", 5, [{"heartbeat_counter": 1}]), 1), Gap)
    # a new connection starts at 0; a first frame above 0 means frames were lost
    assert of(Normalizer("d").feed(env("heartbeats", 3, [{"heartbeat_counter": 1}]), 1), Gap) == [Gap("d", 0, 3)]


def test_bytes_and_preparsed_dicts_take_the_same_path():
    f = env("heartbeats", 0, [{"heartbeat_counter": 7}])
    a = Normalizer("c").feed(f, 1)
    b = Normalizer("c").feed(f.encode(), 1)
    c = Normalizer("c").feed(json.loads(f), 1)
    assert a == b == c


def test_malformed_frames_become_parse_errors():
    n = Normalizer("c")
    bad = ["not json", b"\x00\xff\xfe", "[1,2]", "{}", '{"hello": 1}', "null", "",
           json.dumps({"channel": "ticker", "sequence_num": "7", "events": []}),
           json.dumps({"channel": 5, "sequence_num": 0, "events": []}),
           json.dumps({"channel": "ticker", "sequence_num": -1, "events": []})]
    for f in bad:
        out = n.feed(f, 1)
        assert of(out, ParseError), f
    assert n.last_seq is None     # nothing malformed moved the sequence
    out = n.feed(env("ticker", 0, "not a list"), 1)
    assert of(out, ParseError) and n.last_seq == 0
    out = n.feed(env("ticker", 1, [], ts="yesterday"), 1)
    assert of(out, ParseError)
    out = n.feed(env("ticker", 2, [{"type": "update", "tickers": [
        {"product_id": "BTC-USD", "price": "NaN"}, {"product_id": "BTC-USD", "price": "-1"},
        {"product_id": "", "price": "1"}, {"price": "1"}, "x"]}]), 1)
    assert len(of(out, ParseError)) == 5 and not of(out, TickEv)
    out = n.feed(env("market_trades", 3, [{"type": "update", "trades": [
        {"product_id": "BTC-USD", "trade_id": "1", "price": "1", "size": "1", "time": TS, "side": "UP"}]}]), 1)
    assert of(out, ParseError) and not of(out, TradeEv)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=20)
_keys = st.sampled_from(["channel", "client_id", "timestamp", "sequence_num", "events", "type", "message"])


@settings(max_examples=300, deadline=None)
@given(frame=st.one_of(st.binary(max_size=64), st.text(max_size=64), _json.map(json.dumps),
                       st.dictionaries(_keys, _json, max_size=6).map(json.dumps)),
       channel=st.sampled_from(["ticker", "l2_data", "market_trades", "heartbeats", "subscriptions", "x"]),
       events=_json)
def test_never_raises_on_any_input(frame, channel, events):
    n = Normalizer("fuzz")
    assert isinstance(n.feed(frame, 1), list)
    out = n.feed(json.dumps({"channel": channel, "client_id": "", "timestamp": TS, "sequence_num": 0,
                             "events": events}), 1)
    assert isinstance(out, list)
    for e in out:
        for f in e:
            if isinstance(f, Decimal):
                assert f.is_finite() and f >= 0
