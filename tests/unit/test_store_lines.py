"""nodes.store.lines.dumps and proto.jsonl.dumps write exactly the line of the definition
(proto.jsonl.dumps_py) for every message type, whatever the values (escapes, unicode, None, big numbers,
NaN, nested free-form data): the C formatter (proto._speedups, when built), the store's Python formatter,
and their fallbacks."""
import math
from decimal import Decimal
from typing import Any, get_type_hints

from hypothesis import given, settings, strategies as st

from nodes.store import lines
from proto import codec, jsonl
from proto.codec import Envelope
from proto.messages import REGISTRY, DecMap, IntMap, Levels

TEXT = st.text(max_size=12)
DEC = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: d.is_finite())
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), TEXT, DEC,
                   st.floats(allow_nan=True, allow_infinity=True))
ANY = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)


def field_strategy(tp):
    args = getattr(tp, "__args__", ())
    if getattr(tp, "__origin__", None) is not None and type(None) in args:     # Optional[X]
        return st.one_of(st.none(), field_strategy([a for a in args if a is not type(None)][0]))
    if tp is Decimal:
        return DEC
    if tp is Levels:
        return st.lists(st.tuples(DEC, DEC).map(list), max_size=4)
    if tp is DecMap:
        return st.dictionaries(TEXT, DEC, max_size=3)
    if tp is IntMap:
        return st.dictionaries(TEXT, st.integers(-2**40, 2**40), max_size=3)
    if tp is float:
        return st.floats(allow_nan=True, allow_infinity=True)
    if tp is int:
        return st.integers(-2**70, 2**70)
    if tp is str:
        return TEXT
    if tp is bool:
        return st.booleans()
    if tp is bytes:
        return st.binary(max_size=8)
    if tp is list:
        return st.lists(ANY, max_size=3)
    if tp is dict:
        return st.dictionaries(TEXT, ANY, max_size=3)
    if tp is Any:
        return ANY
    raise AssertionError(f"no strategy for {tp!r}")


def record_strategy(cls):
    hints = get_type_hints(cls)
    return st.tuples(*[field_strategy(hints[f]) for f in cls._fields]).map(lambda vals: cls(*vals))


RECORD = st.one_of([record_strategy(c) for c in REGISTRY.values()])
ENVELOPE = st.builds(Envelope, TEXT, st.integers(0, 2**64), TEXT, st.integers(0, 2**40), st.integers(0, 2**63),
                     st.integers(0, 2**63), RECORD)


@settings(max_examples=300, deadline=None)
@given(ENVELOPE)
def test_same_line_as_proto_jsonl(env):
    want = jsonl.dumps_py(env)
    assert lines.dumps(env) == want
    assert lines.dumps_py(env) == want
    assert jsonl.dumps(env) == want
    if jsonl.dump_line_c is not None:
        try:
            assert jsonl.dump_line_c(env) == want
        except codec._Unsupported:
            pass


@settings(max_examples=100, deadline=None)
@given(RECORD, st.lists(RECORD, max_size=2))
def test_nested_records_and_odd_containers(rec, nested):
    from proto import Reply
    data = {"records": nested, "tuple": (Decimal("1.50"), "x"), 7: "non-str key", "n": math.pi}
    for body in (rec, Reply(True, "OK", "", data), Reply(False, "X", "\"quoted\"\n\u00e9", [rec, (1, 2)])):
        env = Envelope("rep", 1, "src", 1, 2, 3, body)
        want = jsonl.dumps_py(env)
        assert lines.dumps(env) == want and lines.dumps_py(env) == want and jsonl.dumps(env) == want


def test_every_message_type_has_a_formatter():
    assert set(lines._BODY) == set(REGISTRY.values())


def test_the_c_formatter_takes_the_usual_lines_and_refuses_the_unusual():
    import pytest
    if jsonl.dump_line_c is None:
        pytest.skip("C extension not built or TICKMESH_PURE_PYTHON set")
    from proto import Book, Reply, Tick
    D = Decimal
    usual = [Tick("BTC-USD", D("65000.01"), D("65000"), D("0.5"), D("65000.02"), D("0.25"), D("9000.12")),
             Book("ETH-USD", [[D("3200.1"), D("2")]], [[D("3200.2"), D("1E-8")]]),
             Reply(True, "OK", "", {"n": [1, 2.5, None, True], "s": "\u00e9\n\"", "nan": math.nan})]
    for m in usual:
        env = Envelope("t", 1, "src", 2, 3, 4, m)
        assert jsonl.dump_line_c(env) == jsonl.dumps_py(env)
    for m in (Reply(True, "OK", "", {7: "non-str key"}), Reply(True, "OK", "", b"\x00bytes"),
              Reply(True, "OK", "", {"set": {1}})):
        with pytest.raises(codec._Unsupported):
            jsonl.dump_line_c(Envelope("t", 1, "src", 2, 3, 4, m))
    with pytest.raises(codec._Unsupported):
        jsonl.dump_line_c(("t", 1, "src", 2, 3, 4, usual[0]))        # a plain tuple, not an Envelope


# --- frames straight to store lines (proto.jsonl.decode_for_store) ----------------------------------

def _store_view(frame):
    """(kind, text) of decode_for_store and of the definition (decode, then dumps_py)."""
    import proto
    out = []
    for fn in (jsonl.decode_for_store, proto.decode):
        try:
            env = fn(frame)
        except proto.DecodeError as e:
            out.append(("err", str(e)))
            continue
        if type(env.msg) is jsonl.Line:
            assert fn is jsonl.decode_for_store
            out.append(("ok", str(env.msg), env[:6]))
        else:
            out.append(("ok", jsonl.dumps_py(env), env[:6]))
    return out


@settings(max_examples=300, deadline=None)
@given(RECORD.filter(lambda r: _encodable(r)), TEXT.filter(lambda t: t and t.isascii() and "\x00" not in t))
def test_frames_straight_to_lines_match_decode_then_dumps(rec, topic):
    frame = _encoder().encode(topic, rec)
    a, b = _store_view(frame)
    assert a == b


import proto as _proto                    # noqa: E402
_ENC = _proto.Encoder("src")             # made at import: an Encoder draws a random id base


def _encoder():
    """A fresh encoder with a fixed id base (frames of the same length in every run)."""
    import proto
    e = proto.Encoder("src")
    e._base = 1 << 40
    return e


def _encodable(rec):
    import proto
    try:
        _ENC.encode("t", rec)
        return True
    except proto.EncodeError:
        return False


DEC_TEXT = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["0", "-0", "0.0", "00", "01.5", "+1", "1.", ".5", "1e3", "1E+3", "1E-7", "0.000001",
                     "0.0000001", "0.000000", "0.0000000", "-0.000000", "1_000", " 1", "1 ", "NaN", "-inf",
                     "123456789012345678901234567890", "1" * 65, "0." + "0" * 62 + "1", "٣", ""]),
    st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{0,8})?", fullmatch=True))


@settings(max_examples=600, deadline=None)
@given(st.lists(DEC_TEXT, min_size=6, max_size=6), st.lists(st.tuples(DEC_TEXT, DEC_TEXT).map(list), max_size=3))
def test_decimal_strings_canonical_or_not_give_the_definitions_line(vals, levels):
    import msgpack
    from proto.codec import MAJOR
    tick = b"md.tick.X\x00" + msgpack.packb([MAJOR, 0, "Tick", 7, "src", 3, 11, 12, ["X"] + vals])
    book = b"md.book.X\x00" + msgpack.packb([MAJOR, 0, "Book", 7, "src", 3, 11, 12, ["X", levels, levels[:1]]])
    for frame in (tick, book):
        a, b = _store_view(frame)
        assert a == b


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_give_the_same_answer_as_decode(data):
    import proto
    D = Decimal
    msg = data.draw(st.sampled_from([
        proto.Tick("BTC-USD", D("65000.01"), D("65000"), D("0.5"), D("65000.02"), D("0.25"), D("9000.12")),
        proto.Book("ETH-USD", [[D("3200.1"), D("2")], [D("3200"), D("0.001")]], [[D("3200.2"), D("0.5")]]),
        proto.FeedStatus("BTC-USD", True, "OK", "", 0.25)]))
    good = _encoder().encode("md.x", msg)
    i = data.draw(st.integers(0, len(good) - 1))
    mutated = good[:i] + bytes([data.draw(st.integers(0, 255))]) + good[i + 1:]
    for f in (good, mutated, good[:data.draw(st.integers(0, len(good)))]):
        a, b = _store_view(f)
        assert a == b


def test_market_data_takes_the_line_path():
    import proto
    if jsonl.decode_for_store is proto.decode:
        import pytest
        pytest.skip("C extension not built or TICKMESH_PURE_PYTHON set")
    D = Decimal
    for m in (proto.Tick("BTC-USD", D("65000.01"), D("65000"), D("0.5"), D("65000.02"), D("0.25"), D("9000.12")),
              proto.Trade("BTC-USD", "t1", D("65000.01"), D("0.5"), "BUY"),
              proto.Book("BTC-USD", [[D("65000.01"), D("0.5")]], [[D("65000.02"), D("2")]])):
        env = jsonl.decode_for_store(_encoder().encode("md.x", m))
        assert type(env.msg) is jsonl.Line


def _pack_alt(obj, rng):
    """msgpack of ``obj`` with encodings a foreign packer may choose (larger int, str and array
    headers than needed, float32), all valid: the store path must agree with decode on them."""
    import struct
    if obj is None:
        return b"\xc0"
    if obj is True or obj is False:
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 2**8 and rng.random() < 0.5:
            return rng.choice([b"\xcc" + struct.pack(">B", obj), b"\xcd" + struct.pack(">H", obj),
                               b"\xd0" + struct.pack(">b", obj) if obj < 128 else b"\xcc" + struct.pack(">B", obj)])
        import msgpack
        return msgpack.packb(obj)
    if isinstance(obj, float):
        if abs(obj) < 3e38 and rng.random() < 0.5:
            return b"\xca" + struct.pack(">f", obj)
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        if len(raw) < 256 and rng.random() < 0.5:
            return b"\xd9" + bytes([len(raw)]) + raw
        import msgpack
        return msgpack.packb(obj)
    if isinstance(obj, list):
        head = rng.choice([b"\xdc" + len(obj).to_bytes(2, "big")] +
                          ([bytes([0x90 | len(obj)])] if len(obj) < 16 else []))
        return head + b"".join(_pack_alt(x, rng) for x in obj)
    raise AssertionError(obj)


@settings(max_examples=400, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from(["Tick", "Book", "Trade", "FeedStatus"]),
       st.sampled_from(["marketdata", "mkt\u00e9", "a\"b", ""]), st.sampled_from([b"", b"\x00", b"\xc0"]))
def test_foreign_but_valid_encodings_give_the_definitions_line(rng, tag, source, tail):
    from proto.codec import MAJOR
    bodies = {"Tick": ["BTC-USD", "65000.01", "65000", "0.5", "65000.02", "0.25", "9000.12"],
              "Book": ["ETH-USD", [["3200.1", "2"], ["3200", "0.001"]], [["3200.2", "0.5"]]],
              "Trade": ["BTC-USD", "t-1", "65000.5", "0.01", rng.choice(["BUY", "SELL", "x\u00e9"])],
              "FeedStatus": ["BTC-USD", rng.choice([True, False]), "OK", "", rng.choice([0.25, 3.0, 1e300])]}
    env = [MAJOR, rng.choice([0, 1]), tag, rng.choice([1, 2**40, 2**64 - 1]), source, rng.choice([1, 200, 70000]),
           1_700_000_000_000_000_000, 1_700_000_000_000_000_001, bodies[tag]]
    frame = b"md.x\x00" + _pack_alt(env, rng) + tail
    a, b = _store_view(frame)
    assert a == b


JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), TEXT, DEC.map(str),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.sampled_from(["1E+3", "-0", "NaN", " 1", "1.50", "65000.01"]))
FIELD_VALUE = st.one_of(JSON_SCALAR, st.lists(st.one_of(JSON_SCALAR, st.lists(JSON_SCALAR, max_size=3)), max_size=3),
                        st.dictionaries(TEXT, JSON_SCALAR, max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(REGISTRY)), st.data())
def test_reading_a_line_takes_the_definitions_path_whatever_the_body(tag, data):
    """proto.jsonl.loads reads the common line by a short path (every field present, the record's
    own decoder); any body, good or bad, gives what the definition gives: record_from_plain's record,
    or a DecodeError with its message."""
    import json as _json
    from proto.errors import DecodeError
    cls = REGISTRY[tag]
    if data.draw(st.booleans()):            # a valid record's line, then perhaps one field spoiled
        body = codec.to_plain(data.draw(record_strategy(cls)))
        if data.draw(st.booleans()):
            body[data.draw(st.sampled_from(cls._fields))] = data.draw(FIELD_VALUE)
    else:
        body = {f: data.draw(FIELD_VALUE) for f in cls._fields}
    if data.draw(st.booleans()):
        body.pop(data.draw(st.sampled_from(cls._fields)))
    line = _json.dumps({"topic": "t", "type": tag, "source": "s", "seq": 1, "msg_id": 2, "ts_event": 3,
                        "ts_recv": 4, "body": body}, allow_nan=True)
    try:
        want = ("ok", Envelope("t", 2, "s", 1, 3, 4, codec.record_from_plain(tag, _json.loads(line)["body"])))
    except DecodeError as e:
        want = ("err", f"{e}")
    try:
        got = ("ok", jsonl.loads(line))
    except DecodeError as e:
        got = ("err", f"{e}")
    assert repr(got) == repr(want)          # exact: Decimal("1.50") is not Decimal("1.5"), NaN is NaN


def test_reading_a_line_names_what_json_names():
    import json as _json

    import pytest

    from proto.errors import DecodeError
    good = jsonl.dumps(Envelope("md.tick.BTC-USD", 1, "marketdata", 1, 2, 3, REGISTRY["Trade"](
        "BTC-USD", "7", Decimal("65000.01"), Decimal("0.5"), "BUY")))
    assert jsonl.loads(good) == jsonl.loads(" " + good + " \n") == jsonl.loads(good + "\n")
    for bad in ("", "  ", "{", good + " x", good + good, "nul", "{'a': 1}", '{"a":1,}'):
        with pytest.raises(ValueError) as want:
            _json.loads(bad)
        with pytest.raises(DecodeError) as got:
            jsonl.loads(bad)
        assert str(got.value) == f"not JSON: {want.value}"
    for not_event in ("[1]", "1", '{"type":1}', "{}"):
        with pytest.raises(DecodeError, match="not an event line"):
            jsonl.loads(not_event)
