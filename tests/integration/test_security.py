"""CurveZMQ on tcp: known keys get through, unknown keys get nothing."""
import threading
import time
from decimal import Decimal

import pytest
import zmq

import proto
from nodes import security
from nodes.client import RequestClient, RequestTimeout
from nodes.runtime import Node
from tests.conftest import make_mesh

TICK = proto.Tick("BTC-USD", *[Decimal("1.5")] * 6)


class Pub(Node):
    name = "marketdata"


class Sub(Node):
    name = "risk"
    subscriptions = ("md.",)

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.got = threading.Event()
        self.on(proto.Tick, lambda env: self.got.set())


@pytest.fixture
def curve_mesh(short_tmp):
    keys = short_tmp / "keys"
    from nodes.config import NODES
    security.generate(keys, list(NODES) + ["ctl"])
    # an intruder with a valid key pair that is not in the mesh's public/ directory
    security.generate(short_tmp / "other", ["ctl", "risk"])
    return make_mesh("tcp", short_tmp, curve=True, keys_dir=str(keys)), short_tmp


def test_known_keys_subscribe_and_request(curve_mesh, ctx):
    mesh, _ = curve_mesh
    pub = Pub(mesh, context=ctx).start()
    sub = Sub(mesh, context=ctx).start()
    try:
        deadline = time.monotonic() + 5
        while not sub.got.wait(0.01):
            assert time.monotonic() < deadline, "encrypted subscription never delivered"
            pub.call_soon(pub.publish, "md.tick.BTC-USD", TICK)
        with RequestClient.for_node(mesh, "risk", context=ctx, source="ctl", timeout_ms=2000) as c:
            assert c.call(proto.Query("ping", "hi")) == "hi"
    finally:
        sub.stop()
        pub.stop()


def test_unknown_key_can_neither_subscribe_nor_request(curve_mesh, ctx):
    mesh, tmp = curve_mesh
    pub = Pub(mesh, context=ctx).start()
    server_pub = security._load_public(mesh, "marketdata")
    server_rep = security._load_public(mesh, "risk")
    intruder_pub, intruder_sec = zmq.auth.load_certificate(str(tmp / "other" / "private" / "ctl.key_secret"))
    spy = ctx.socket(zmq.SUB)
    spy.setsockopt(zmq.LINGER, 0)
    spy.curve_publickey, spy.curve_secretkey, spy.curve_serverkey = intruder_pub, intruder_sec, server_pub
    spy.setsockopt(zmq.SUBSCRIBE, b"")
    spy.connect(mesh.endpoint("marketdata", "pub"))
    plain = ctx.socket(zmq.SUB)          # no CURVE at all
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.SUBSCRIBE, b"")
    plain.connect(mesh.endpoint("marketdata", "pub"))
    sub = Sub(mesh, context=ctx).start()     # a legitimate subscriber, to prove events flow
    try:
        deadline = time.monotonic() + 5
        while not sub.got.wait(0.01):
            assert time.monotonic() < deadline
            pub.call_soon(pub.publish, "md.tick.BTC-USD", TICK)
        for _ in range(20):
            pub.call_soon(pub.publish, "md.tick.BTC-USD", TICK)
        assert not spy.poll(500) and not plain.poll(100), "an unknown key received events"
        # requests with the unknown key: no reply, ever
        c = RequestClient(mesh.endpoint("risk", "rep"), context=ctx, timeout_ms=500,
                          secure=lambda s: _client_keys(s, intruder_pub, intruder_sec, server_rep))
        with pytest.raises(RequestTimeout):
            c.request(proto.Query("ping", "x"))
        c.close()
        # and the node still serves a known key afterwards
        with RequestClient.for_node(mesh, "risk", context=ctx, source="ctl", timeout_ms=2000) as ok:
            assert ok.call(proto.Query("ping", "y")) == "y"
    finally:
        spy.close(linger=0)
        plain.close(linger=0)
        sub.stop()
        pub.stop()


def _client_keys(s, pub, sec, server):
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server


def test_keys_tool_generates_pairs_with_private_permissions(short_tmp):
    from tools import keys
    assert keys.main(["generate", "--dir", str(short_tmp / "k")]) == 0
    import os
    priv = short_tmp / "k" / "private"
    assert oct(os.stat(priv).st_mode & 0o777) == "0o700"
    assert oct(os.stat(priv / "risk.key_secret").st_mode & 0o777) == "0o600"
    assert (short_tmp / "k" / "public" / "ctl.key").exists()
