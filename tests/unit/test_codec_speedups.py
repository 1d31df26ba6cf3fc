"""proto._speedups (the C envelope decoder and frame packer) against the pure Python codec: the same
frames accepted with the same envelopes, the same frames refused with the same messages, and the
same bytes on the wire."""
import functools
import os
from decimal import Decimal

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

import proto
from proto import DecodeError, EncodeError, codec
from tests.unit.test_store_lines import record_strategy

if os.environ.get("CI") == "true":    # CI builds it: missing there is a failure, not a skip
    from proto import _speedups as sp
else:
    sp = pytest.importorskip("proto._speedups", reason="C extension not built (no compiler at install)")
pytestmark = pytest.mark.skipif(not codec.SPEEDUPS, reason="TICKMESH_PURE_PYTHON set")


def both(frame):
    """(result or error message) of the C and the Python decoders."""
    out = []
    for fn in (codec.decode, codec.decode_py):
        try:
            out.append(("ok", fn(frame)))
        except DecodeError as e:
            out.append(("err", str(e)))
    return out


def test_the_c_paths_are_the_ones_in_use():
    assert codec.decode is sp.decode
    assert codec._pack_frame is sp.pack_frame


def test_every_message_type_decodes_identically():
    from tests.unit.test_proto_codec import sample_records
    enc = proto.Encoder("src")
    for tag, m in sample_records():
        frame = enc.encode("t." + tag, m)
        c, p = both(frame)
        assert c == p and c[0] == "ok", tag
        assert type(c[1]) is proto.Envelope and type(c[1].msg) is type(m)


BAD = [
    b"", b"garbage", b"\x00abc", b"t\x00\xc1\xc1", b"\xff\xfe\x00abc",
    b"t\x00" + msgpack.packb([codec.MAJOR + 1, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["1"] * 6]),
    b"t\x00" + msgpack.packb([True, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["1"] * 6]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", True, "s", 1, 1, 1, ["B"] + ["1"] * 6]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Nope", 1, "s", 1, 1, 1, []]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["x"] * 6]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["1"] * 5]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["1"] * 6 + ["extra"]]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ("B",) + ("1",) * 6, "x"]),
    b"t\xc3\xa9\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["1"] * 6]),
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, ["B"] + ["1"] * 6]) + b"\x01",
    b"t\x00" + msgpack.packb([codec.MAJOR, 0, "Tick", 1, "s", 1, 1, 1, {"a": 1}]),
    b"t\x00" + b"\x00" * (codec.MAX_FRAME + 1),
]


@pytest.mark.parametrize("frame", BAD)
def test_bad_and_unusual_frames_get_the_same_answer(frame):
    c, p = both(frame)
    assert c == p


def test_non_bytes_input_takes_the_same_path():
    good = proto.encode("md.tick.X", proto.Tick("X", *[Decimal("1.25")] * 6))
    for f in (bytearray(good), memoryview(good)):
        c, p = both(f)
        assert c == p and c[0] == "ok"


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_and_cut_frames_get_the_same_answer(data):
    msg = data.draw(st.sampled_from([
        proto.Tick("BTC-USD", *[Decimal("65000.5")] * 6),
        proto.Book("ETH-USD", [[Decimal("3200.1"), Decimal("2")]], [[Decimal("3200.2"), Decimal("0.5")]]),
        proto.Reply(True, "OK", "", {"x": Decimal("1.5"), "n": [1, 2]}),
    ]))
    good = proto.encode(data.draw(st.sampled_from(["md.tick.BTC-USD", "t", "md.tick.ETH-USD"])), msg)
    i = data.draw(st.integers(0, len(good) - 1))
    b = data.draw(st.integers(0, 255))
    for f in (good, good[:i] + bytes([b]) + good[i + 1:], good[:data.draw(st.integers(0, len(good)))]):
        c, p = both(f)
        assert c == p


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_gets_the_same_answer(data):
    for f in (data, b"md.tick.X\x00" + data):
        c, p = both(f)
        assert c == p


def test_topic_and_source_reuse_never_mixes_frames_up():
    enc_a, enc_b = proto.Encoder("alpha"), proto.Encoder("beta")
    for i in range(50):
        enc, topic = (enc_a, "md.tick.A") if i % 3 else (enc_b, "md.tick.BB")
        env = codec.decode(enc.encode(topic, proto.Tick(topic[-2:], *[Decimal(i + 1)] * 6)))
        assert (env.source, env.topic) == (("alpha", "md.tick.A") if i % 3 else ("beta", "md.tick.BB"))
        assert env.msg.price == Decimal(i + 1)
    # a topic longer than the reuse buffer still decodes
    long = "t." + "x" * 300
    assert codec.decode(enc_a.encode(long, proto.Query("status", ""))).topic == long


# --- the frame packer ---------------------------------------------------------------------------

plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
              st.text(max_size=300), st.binary(max_size=300)),
    lambda inner: st.one_of(st.lists(inner, max_size=20), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=10), inner, max_size=20)),
    max_leaves=60)


@settings(max_examples=500, deadline=None)
@given(plain)
def test_pack_frame_writes_msgpacks_exact_bytes(v):
    assert sp.pack_frame(b"topic\x00", v) == b"topic\x00" + msgpack.packb(v, use_bin_type=True)


@pytest.mark.parametrize("size", [0, 15, 16, 31, 32, 255, 256, 65535, 65536])
def test_pack_frame_length_boundaries(size):
    for v in ("a" * size, b"b" * size, [0] * size, {str(i): i for i in range(size)}):
        assert sp.pack_frame(b"", v) == msgpack.packb(v, use_bin_type=True)


@pytest.mark.parametrize("v", [2**64, -2**63 - 1, msgpack.ExtType(1, b"x"), "\ud800", Decimal(1), True.__class__,
                               [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])
def test_pack_frame_refuses_what_it_does_not_pack(v):
    with pytest.raises(sp.Unsupported):
        sp.pack_frame(b"", v)


def test_encoder_falls_back_to_msgpack_for_ext_types_and_keeps_sequences():
    enc = proto.Encoder("s")
    r = proto.Reply(True, "OK", "", {"d": Decimal("1.5"), "rec": proto.Query("a", "b")})   # ext types
    f1 = enc.encode("r", r)
    f2 = enc.encode("r", proto.Query("x", ""))
    e1, e2 = codec.decode(f1), codec.decode(f2)
    assert e1.msg == r and (e1.seq, e2.seq) == (1, 2)
    with pytest.raises(EncodeError):
        enc.encode("r", proto.Reply(True, "OK", "", {"n": 2**70}))       # too big for msgpack
    assert codec.decode(enc.encode("r", proto.Query("y", ""))).seq == 3     # nothing went out: no gap


def test_encoder_output_is_the_python_encoders_bytes():
    t = proto.Tick("BTC-USD", Decimal("65000.01"), Decimal("65000"), Decimal("0.5"), Decimal("65000.02"),
                   Decimal("0.25"), Decimal("9000.12"))
    frame = proto.Encoder("marketdata").encode("md.tick.BTC-USD", t, ts_event=5, ts_recv=6)
    i = frame.index(b"\x00")
    obj = msgpack.unpackb(frame[i + 1:])
    assert frame[i + 1:] == msgpack.packb(obj, use_bin_type=True)
    assert obj[2] == "Tick" and obj[4] == "marketdata" and obj[5:8] == [1, 5, 6]


def test_the_pure_python_codec_passes_the_codec_suite_on_its_own():
    """Without the extension (TICKMESH_PURE_PYTHON=1, as on a machine with no compiler) the codec
    suite passes too: the Python decoder and the msgpack packer path of the Encoder."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TICKMESH_PURE_PYTHON="1")
    check = "import proto.codec as c, sys; sys.exit(0 if not c.SPEEDUPS and c._pack_frame is None else 1)"
    assert subprocess.run([sys.executable, "-c", check], cwd=root, env=env, timeout=60).returncode == 0
    cp = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "tests/unit/test_proto_codec.py"], cwd=root, env=env, capture_output=True,
                        text=True, timeout=300)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]


LEVEL_VALUES = st.one_of(st.sampled_from(["1", "0.5", "65000.01", "1E-8", "-0", "NaN", "inf", "12abc", "", " 1"]),
                         st.text(max_size=6), st.integers(), st.none(), st.floats(), st.lists(st.text(), max_size=2))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(st.one_of(st.lists(LEVEL_VALUES, min_size=0, max_size=3),
                                    st.tuples(LEVEL_VALUES, LEVEL_VALUES), LEVEL_VALUES), max_size=6),
                 LEVEL_VALUES))
def test_book_levels_decode_the_same_in_c_and_python(v):
    from proto import messages
    assert messages._levels_in is not messages._levels_in_py
    out = []
    for fn in (messages._levels_in, messages._levels_in_py):
        try:
            out.append(("ok", fn(v, "Book.bids")))
        except DecodeError as e:
            out.append(("err", str(e)))
    assert out[0] == out[1]
    if out[0][0] == "ok":
        assert all(type(x) is Decimal and x.is_finite() for lv in out[0][1] for x in lv)


def test_book_level_cache_misses_in_c_keep_the_cache_contract():
    """A miss on a canonical decimal string is parsed and inserted by the C loop itself (no
    ``__missing__`` call per level); a full cache is still cleared, and what is not canonical still
    takes ``__missing__``: valid ones cached, bad ones a named error."""
    from proto import jsonl, messages  # noqa: F401 - jsonl configures the C side's Decimal
    cache = messages.DECIMALS
    cache.clear()
    side = [["65000.01", "0.30633115"], ["64999.99", "1E-8"]]
    out = messages._levels_in(side, "Book.bids")
    assert [[str(p), str(s)] for p, s in out] == [["65000.01", "0.30633115"], ["64999.99", "1E-8"]]
    assert all(type(x) is Decimal for lv in out for x in lv)
    assert {"65000.01", "0.30633115", "64999.99", "1E-8"} <= set(cache)
    assert out[0][0] is cache["65000.01"]                   # the cached object, shared
    for k in range(cache.MAX - len(cache)):
        cache[f"k{k}"] = Decimal(k)
    assert len(cache) == cache.MAX
    messages._levels_in([["1.5", "2.5"]], "Book.asks")      # full: __missing__ clears it first
    assert len(cache) == 2 and set(cache) == {"1.5", "2.5"}
    with pytest.raises(DecodeError, match="Book.asks"):
        messages._levels_in([["1.5", "NaN"]], "Book.asks")
    cache.clear()


BODY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=8),
                       st.sampled_from(["1", "0.5", "65000.01", "1E-8", "-0", "NaN", "inf", " 1", "1.50"]),
                       st.lists(st.lists(st.sampled_from(["1", "0.5", "65000.01", "x", 1]), max_size=3), max_size=3))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(proto.REGISTRY)), st.data())
def test_records_decode_in_c_as_the_python_decoder_decodes_them(tag, data):
    """A record of plain fields is built by proto._speedups.record_in: whatever it accepts, the
    generated Python decoder accepts with the identical record (repr: Decimal("1.50") is not
    Decimal("1.5")); whatever the Python decoder refuses, it refuses."""
    from proto import jsonl, messages  # noqa: F401 - jsonl configures the C side's Decimal
    cls = proto.REGISTRY[tag]
    if messages.field_kinds(cls) is None:
        assert not isinstance(cls._decode_fast, functools.partial)
        return
    assert isinstance(cls._decode_fast, functools.partial)          # the C path is the one in use
    n = len(cls._fields)
    if data.draw(st.booleans()):
        body = cls._encode(data.draw(record_strategy(cls)))
        if data.draw(st.booleans()):
            body[data.draw(st.integers(0, n - 1))] = data.draw(BODY_VALUE)
    else:
        body = [data.draw(BODY_VALUE) for _ in range(n)]
    try:
        want = ("ok", repr(cls._decode(list(body))))
    except DecodeError:
        want = ("err",)
    try:
        got = ("ok", repr(cls._decode_fast(list(body))))
    except Exception:  # noqa: BLE001 - any refusal sends the caller to the Python decoder
        got = ("err",)
    if got[0] == "ok":                      # a refusal is allowed (its callers fall back)
        assert got == want
    if want[0] == "err":
        assert got[0] == "err"


FIELD_OUT = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6),
                      st.decimals(allow_nan=True, allow_infinity=True),
                      st.lists(st.tuples(st.decimals(allow_nan=True), st.decimals(allow_nan=True)), max_size=3),
                      st.lists(st.lists(st.decimals(allow_nan=False, allow_infinity=False), max_size=3), max_size=2))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(proto.REGISTRY)), st.data())
def test_records_encode_in_c_as_the_python_encoder_encodes_them(tag, data):
    """proto._speedups.record_out gives the generated Python encoder's body, or its exception with
    the same message (it hands anything unusual to that encoder; Encoder.encode turns a TypeError or
    ValueError of a malformed record into an EncodeError either way)."""
    from proto import jsonl, messages  # noqa: F401 - jsonl configures the C side's Decimal
    cls = proto.REGISTRY[tag]
    if messages.field_kinds(cls) is None:
        return
    assert isinstance(cls._encode, functools.partial)                # the C path is the one in use
    python = cls._encode.args[0]
    rec = data.draw(record_strategy(cls))
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(cls._fields) - 1))
        rec = rec._replace(**{cls._fields[i]: data.draw(FIELD_OUT)})
    out = []
    for fn in (cls._encode, python):
        try:
            out.append(("ok", repr(fn(rec))))
        except Exception as e:  # noqa: BLE001 - EncodeError, or what the Python encoder lets through
            out.append(("err", type(e).__name__, str(e)))
    assert out[0] == out[1]
