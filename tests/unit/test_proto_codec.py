"""Codec round-trips and rejection of bad input (no sockets)."""
import math
from decimal import Decimal

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

import proto
from proto import Code, DecodeError, EncodeError, topics
from proto.codec import MAJOR

finite_decimals = st.decimals(allow_nan=False, allow_infinity=False)
money = st.one_of(
    finite_decimals,
    st.sampled_from([Decimal("0"), Decimal("-0"), Decimal("0E-8"), Decimal("1E+30"), Decimal("1E-30"),
                     Decimal("65000.01"), Decimal("0.00000001"), Decimal("-123456789.123456789"),
                     Decimal("1.10"), Decimal("1.1")]))
product = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12)


def rt(msg, topic="t.x"):
    return proto.decode(proto.encode(topic, msg, source="test"))


@settings(max_examples=300, deadline=None)
@given(product, money, money, money, money, money, money)
def test_tick_round_trips_exactly(p, a, b, c, d, e, f):
    t = proto.Tick(p, a, b, c, d, e, f)
    env = rt(t, topics.tick(p))
    assert env.msg == t
    # exact: same digits and exponent, not just numerically equal
    for x, y in zip(env.msg[1:], t[1:]):
        assert str(x) == str(y) and type(x) is Decimal


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(money, money), max_size=20), st.lists(st.tuples(money, money), max_size=20))
def test_book_levels_round_trip(bids, asks):
    b = proto.Book("BTC-USD", [list(x) for x in bids], [list(x) for x in asks])
    assert rt(b).msg == b


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), money, max_size=5), st.integers(min_value=-2**63, max_value=2**64 - 1))
def test_reply_with_nested_records_and_decimals(d, n):
    order = proto.Order("c1", "v1", "BTC-USD", "BUY", "LIMIT", "GTC", Decimal("0.01"), None, Decimal("65000"),
                        False, False, "NEW", Decimal(0), Decimal(0), Decimal(0), Decimal(0), Decimal(0),
                        Code.OK, "", "s", "paper", 1, 2)
    r = proto.Reply(True, Code.OK, "", {"orders": [order], "m": d, "n": n})
    got = rt(r).msg
    assert got == r
    assert type(got.data["orders"][0]) is proto.Order


def test_envelope_fields_and_sequence_per_topic():
    enc = proto.Encoder("md")
    t = proto.Tick("BTC-USD", *[Decimal(1)] * 6)
    e1 = proto.decode(enc.encode("md.tick.BTC-USD", t, ts_event=5, ts_recv=7))
    e2 = proto.decode(enc.encode("md.tick.ETH-USD", t))
    e3 = proto.decode(enc.encode("md.tick.BTC-USD", t))
    assert (e1.topic, e1.source, e1.seq, e1.ts_event, e1.ts_recv, e1.type) == ("md.tick.BTC-USD", "md", 1, 5, 7, "Tick")
    assert e2.seq == 1 and e3.seq == 2          # per publisher *and* topic
    assert len({e1.msg_id, e2.msg_id, e3.msg_id}) == 3


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("sNaN"),
                                 1.5, 3, "1.0", None])
def test_encode_refuses_non_decimal_or_non_finite_money(bad):
    with pytest.raises(EncodeError, match="Tick.price"):
        proto.encode("t", proto.Tick("B", bad, *[Decimal(1)] * 5))


def test_encode_refuses_unregistered_and_bad_topic():
    with pytest.raises(EncodeError):
        proto.encode("t", ("not", "a", "message"))
    with pytest.raises(EncodeError):
        proto.encode("bad\x00topic", proto.Query("status"))
    enc = proto.Encoder("x")
    with pytest.raises(EncodeError):
        enc.encode("t", proto.Tick("B", Decimal("NaN"), *[Decimal(1)] * 5))
    # a refused encode does not burn a sequence number
    assert proto.decode(enc.encode("t", proto.Tick("B", *[Decimal(1)] * 6))).seq == 1


def _frame(obj, topic=b"t"):
    return topic + topics.SEP + msgpack.packb(obj, use_bin_type=True)


GOOD_BODY = ["BTC-USD", "1", "1", "1", "1", "1", "1"]


@pytest.mark.parametrize("frame,match", [
    (b"", "separator"),
    (b"garbage", "separator"),
    (b"t\x00\xc1\xc1", "malformed"),
    (b"t\x00" + b"\x93\x01", "malformed"),
    (_frame([MAJOR + 1, 0, "Tick", 1, "s", 1, 1, 1, GOOD_BODY]), "major version"),
    (_frame(["1", 0, "Tick", 1, "s", 1, 1, 1, GOOD_BODY]), "major version"),
    (_frame([MAJOR, 0, "NoSuchType", 1, "s", 1, 1, 1, GOOD_BODY]), "unknown message type"),
    (_frame([MAJOR, 0, "Tick", "1", "s", 1, 1, 1, GOOD_BODY]), "integers"),
    (_frame([MAJOR, 0, "Tick", 1, 5, 1, 1, 1, GOOD_BODY]), "source"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1]), "malformed"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["BTC-USD", "1"]]), "expected 7 fields"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["BTC-USD", 1.5, "1", "1", "1", "1", "1"]]), "Tick.price"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["BTC-USD", "NaN", "1", "1", "1", "1", "1"]]), "non-finite"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["BTC-USD", "inf", "1", "1", "1", "1", "1"]]), "non-finite"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["BTC-USD", "12abc", "1", "1", "1", "1", "1"]]), "bad decimal"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, [7, "1", "1", "1", "1", "1", "1"]]), "Tick.product"),
    (_frame([MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["B", None, "1", "1", "1", "1", "1"]]), "null"),
    (_frame([MAJOR, 0, "Book", 1, "s", 1, 1, 1, ["B", [["1"]], []]]), "Book.bids"),
    (_frame([MAJOR, 0, "Heartbeat", 1, "s", 1, 1, 1, ["n", 1, "R", 1, 1.0, {"a": "x"}, "h"]]), "Heartbeat.counters"),
    (_frame([MAJOR, 0, "Reply", 1, "s", 1, 1, 1, [True, "OK", "", None]]) + b"x", "malformed"),
    (b"t\x00" + msgpack.packb([MAJOR, 0, "Reply", 1, "s", 1, 1, 1, [True, "OK", "", msgpack.ExtType(9, b"x")]]), "ext type"),
    (b"t\x00" + msgpack.packb([MAJOR, 0, "Reply", 1, "s", 1, 1, 1, [True, "OK", "", msgpack.ExtType(1, b"NaN")]]), "non-finite"),
    (b"\xff\xfe\x00abc", "malformed|ascii"),
])
def test_decode_rejects_bad_frames_with_one_named_error(frame, match):
    with pytest.raises(DecodeError, match=match):
        proto.decode(frame)


def test_decode_refuses_oversized_frame():
    with pytest.raises(DecodeError, match="exceeds"):
        proto.decode(b"t\x00" + b"\x00" * (proto.MAX_FRAME + 1))


def test_minor_version_compat_extra_fields_ignored_missing_defaults_filled():
    extra = _frame([MAJOR, 5, "Query", 1, "s", 1, 1, 1, ["status", "", "future-field"]])
    assert proto.decode(extra).msg == proto.Query("status", "")
    short = _frame([MAJOR, 0, "Query", 1, "s", 1, 1, 1, ["status"]])
    assert proto.decode(short).msg == proto.Query("status", "")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_only_ever_raise_decode_error(data):
    for frame in (data, b"md.tick.X\x00" + data):
        try:
            proto.decode(frame)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_frames_only_raise_decode_error(data):
    good = proto.encode("md.tick.BTC-USD", proto.Tick("BTC-USD", *[Decimal("65000.5")] * 6))
    i = data.draw(st.integers(0, len(good) - 1))
    b = data.draw(st.integers(0, 255))
    mutated = good[:i] + bytes([b]) + good[i + 1:]
    cut = good[:data.draw(st.integers(0, len(good)))]
    for f in (mutated, cut):
        try:
            env = proto.decode(f)
        except DecodeError:
            continue
        assert all(type(x) is Decimal and x.is_finite() for x in env.msg[1:])


def test_jsonl_round_trip_is_exact(tmp_path):
    from proto import jsonl
    enc = proto.Encoder("md")
    envs = [proto.decode(enc.encode("md.tick.BTC-USD", proto.Tick("BTC-USD", Decimal("65000.10"), *[Decimal("1E-8")] * 5))),
            proto.decode(enc.encode("order.new", proto.OrderIntent("BTC-USD", "BUY", "MARKET", size=Decimal("0.5"))))]
    p = tmp_path / "f.jsonl"
    p.write_text("".join(jsonl.dumps(e) + "\n" for e in envs) + '{"type":"_gap","missing":3}\n' + '{"topic":"md.ti')
    back = list(jsonl.read(p))
    assert back == envs
    assert str(back[0].msg.price) == "65000.10"
    meta = [x for x in jsonl.read(p, with_meta=True) if isinstance(x, dict)]
    assert meta == [{"type": "_gap", "missing": 3}]


def sample_records():
    """One record of every registered message type, every field a sample of its type."""
    samples = {Decimal: Decimal("1.5"), str: "s", int: 7, bool: True, float: 0.25}
    from typing import get_type_hints
    from proto.messages import DecMap, IntMap, Levels
    for tag, cls in proto.REGISTRY.items():
        hints = get_type_hints(cls)
        vals = []
        for f in cls._fields:
            tp = hints[f]
            args = getattr(tp, "__args__", ())
            if type(None) in args:
                tp = [a for a in args if a is not type(None)][0]
            vals.append({Levels: [[Decimal(1), Decimal(2)]], DecMap: {"a": Decimal("3")},
                         IntMap: {"a": 1}, list: ["x"], dict: {"k": 1}}.get(tp, samples.get(tp, None)))
        yield tag, cls(*vals)


def test_every_message_type_round_trips_with_defaults_or_samples():
    for tag, m in sample_records():
        assert rt(m).msg == m, tag


def test_codes_are_unique_strings():
    codes = Code.all()
    assert "RISK_UNAVAILABLE" in codes and all(isinstance(c, str) for c in codes)
    assert not math.isnan(len(codes))
