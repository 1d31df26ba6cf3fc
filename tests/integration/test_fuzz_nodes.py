"""Fuzzing every node's SUB input and request socket with random and mutated frames.

Every node must stay up, keep answering valid requests correctly and count what it dropped.
The default suite runs a few hundred cases per socket; ``pytest -m long`` runs 10,000.
"""
import os
import time
from decimal import Decimal

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

import proto
from nodes import config as _config
from nodes.client import RequestClient
from nodes.offline import available_nodes
from proto.codec import MAJOR
from tests.conftest import make_mesh

NODES = [(n, c) for n, c in available_nodes()]
DEFAULT_CASES = int(os.environ.get("TICKMESH_FUZZ_CASES", "300"))
LONG_CASES = 10_000

TOPICS = ["md.tick.BTC-USD", "md.trade.BTC-USD", "md.book.BTC-USD", "md.status.BTC-USD", "md.gap",
          "order.new", "order.filled", "order.rejected", "fill.BTC-USD", "position.BTC-USD", "pnl",
          "risk.killswitch", "risk.state", "node.heartbeat.execution", "node.process", "alert.x"]

bad_money = st.sampled_from(["NaN", "-NaN", "Infinity", "-inf", "sNaN", "1e999999999", "-0", "0", "-1",
                             "1E+30", "1E-30", "", " ", "1,5", "0x10", "١٢", "9" * 80, "-65000.01"])
any_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                       st.text(max_size=20), st.binary(max_size=20), bad_money)


@st.composite
def envelope_like(draw):
    """A structurally plausible envelope with hostile contents."""
    tag = draw(st.sampled_from(list(proto.REGISTRY) + ["Nope", "", "Tick\x00"]))
    cls = proto.REGISTRY.get(tag)
    n = len(cls._fields) if cls else 3
    body = draw(st.lists(any_scalar, min_size=max(0, n - 2), max_size=n + 2))
    major = draw(st.sampled_from([MAJOR, MAJOR, MAJOR + 1, 0, -1, "1"]))
    env = [major, draw(st.integers(0, 99)), tag, draw(any_scalar), draw(any_scalar), draw(any_scalar),
           draw(any_scalar), draw(any_scalar), body]
    if draw(st.booleans()):
        env = env[:draw(st.integers(0, 9))]
    return msgpack.packb(env, use_bin_type=True)


def _valid_frames():
    t = proto.Tick("BTC-USD", Decimal("65000.01"), Decimal("65000"), Decimal("1"), Decimal("65000.02"),
                   Decimal("1"), Decimal("10"))
    o = proto.OrderIntent("BTC-USD", "BUY", "LIMIT", size=Decimal("0.01"), limit_price=Decimal("65000"))
    return [proto.encode("md.tick.BTC-USD", t), proto.encode("req", o), proto.encode("req", proto.Query("status"))]


VALID = _valid_frames()
FUZZ_ENC = proto.Encoder("fuzz")    # made once: Encoder draws a random id base
hostile_decimal = st.one_of(st.sampled_from([Decimal("-1"), Decimal("0"), Decimal("-0"), Decimal("1E+30"),
                                             Decimal("1E-30"), Decimal("-65000.01"), Decimal("1E+999")]),
                            st.decimals(allow_nan=False, allow_infinity=False))


@st.composite
def hostile_record(draw):
    """A well-formed, decodable record whose values are absurd (negative/zero/huge money, odd strings)."""
    import typing
    from proto.messages import DecMap, IntMap, Levels
    cls = draw(st.sampled_from(list(proto.REGISTRY.values())))
    hints = typing.get_type_hints(cls)
    vals = []
    for f in cls._fields:
        tp = hints[f]
        args = typing.get_args(tp)
        if type(None) in args:
            if draw(st.booleans()):
                vals.append(None)
                continue
            tp = [a for a in args if a is not type(None)][0]
        if tp is Decimal:
            vals.append(draw(hostile_decimal))
        elif tp is str:
            vals.append(draw(st.sampled_from(["BTC-USD", "ETH-USD", "", "BUY", "SELL", "MARKET", "LIMIT", "x" * 300,
                                              "engage", "release", "status", "orders", "positions", "\u0000"])))
        elif tp is int:
            vals.append(draw(st.integers(-2**63, 2**63 - 1)))
        elif tp is bool:
            vals.append(draw(st.booleans()))
        elif tp is float:
            vals.append(draw(st.floats()))
        elif tp is Levels:
            vals.append(draw(st.lists(st.lists(hostile_decimal, min_size=2, max_size=2), max_size=5)))
        elif tp is DecMap:
            vals.append(draw(st.dictionaries(st.text(max_size=8), hostile_decimal, max_size=3)))
        elif tp is IntMap:
            vals.append(draw(st.dictionaries(st.text(max_size=8), st.integers(-10, 10**12), max_size=3)))
        elif tp is list:
            vals.append(draw(st.lists(st.text(max_size=8), max_size=3)))
        else:
            vals.append(draw(st.one_of(st.none(), st.integers(), st.text(max_size=8))))
    return cls(*vals)


@st.composite
def hostile_frame(draw):
    kind = draw(st.integers(0, 5))
    topic = draw(st.sampled_from(TOPICS)).encode()
    if kind == 5:   # decodable, but absurd: the node's logic must cope (reject, ignore or count)
        rec = draw(hostile_record())
        try:
            return FUZZ_ENC.encode(draw(st.sampled_from(TOPICS + ["req"])), rec)
        except proto.EncodeError:
            return topic + b"\x00"
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return topic + b"\x00" + draw(st.binary(max_size=200))
    if kind == 2:
        return topic + b"\x00" + draw(envelope_like())
    good = draw(st.sampled_from(VALID))
    if kind == 3:   # mutate bytes
        b = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    return good[:draw(st.integers(0, len(good) - 1))]     # truncated


def _cfg_for(name, mesh, tmp):
    cfg = _config.load(env={}, read_dotenv=False)
    cfg = cfg.replace("mesh", **{f.name: getattr(mesh, f.name) for f in mesh.__dataclass_fields__.values()})
    if name == "marketdata":
        cfg = cfg.replace("marketdata", source="synthetic")
    if name == "metrics":
        cfg = cfg.replace("metrics", port=0)
    if name == "alerts":
        cfg = cfg.replace("alerts", mode="log")     # conf/mesh.toml says live: never page from a test
    return cfg


@pytest.fixture(params=[n for n, _ in NODES], scope="module")
def running(request, tmp_path_factory):
    import tempfile
    import shutil
    from pathlib import Path
    name = request.param
    cls = dict(NODES)[name]
    tmp = Path(tempfile.mkdtemp(prefix="tmf-", dir="/tmp"))
    ctx = zmq.Context()
    mesh = make_mesh("inproc", tmp)
    node = cls.from_config(_cfg_for(name, mesh, tmp), context=ctx).start()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(mesh.endpoint("replay", "pub"))
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(mesh.endpoint(name, "rep"))
    client = RequestClient(mesh.endpoint(name, "rep"), context=ctx, timeout_ms=3000)
    yield name, node, pub, dealer, client
    client.close()
    dealer.close(linger=0)
    pub.close(linger=0)
    node.stop()
    ctx.term()
    shutil.rmtree(tmp, ignore_errors=True)


def _still_serving(name, node, client):
    assert node.alive, f"{name} died"
    st_ = client.call(proto.Query("status"))
    assert st_["state"] == "RUNNING"
    return st_["counters"]


def _fuzz_sub(running, cases):
    name, node, pub, dealer, client = running
    if not node.subscriptions:
        pytest.skip(f"{name} subscribes to nothing")
    before = node.counters["malformed"]

    @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(hostile_frame())
    def send(frame):
        pub.send(frame)
    send()
    pub.send_multipart([b"md.tick.BTC-USD", b"x", b"y"])
    counters = _still_serving(name, node, client)
    # the request above was answered after the SUB queue was drained: nothing left uncounted
    assert counters["malformed"] > before, f"{name} did not count malformed frames"


def _fuzz_rep(running, cases):
    name, node, pub, dealer, client = running
    before = node.counters["request_errors"]

    @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(hostile_frame(), st.lists(st.binary(max_size=30), min_size=2, max_size=4)))
    def send(frame):
        if isinstance(frame, list):
            dealer.send_multipart(frame)
        else:
            dealer.send(frame)
        # every request gets an answer or is dropped as malformed; drain replies without waiting long
        while dealer.poll(0):
            dealer.recv_multipart()
    send()
    counters = _still_serving(name, node, client)
    assert counters["request_errors"] > before
    assert client.call(proto.Query("ping", "after")) == "after"


def test_fuzz_sub_input(running):
    _fuzz_sub(running, DEFAULT_CASES)


def test_fuzz_request_socket(running):
    _fuzz_rep(running, DEFAULT_CASES)


@pytest.mark.long
def test_fuzz_sub_input_long(running):
    _fuzz_sub(running, LONG_CASES)


@pytest.mark.long
def test_fuzz_request_socket_long(running):
    _fuzz_rep(running, LONG_CASES)
