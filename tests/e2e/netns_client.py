"""Helpers that tests/e2e/test_netns.py runs *inside* a network namespace (``ip netns exec NS python
-m tests.e2e.netns_client MODE``), with the mesh's TICKMESH_CONF. Each prints one JSON line.

* ``client``: the legitimate client (CURVE key "tests"): waits until execution answers, submits
  market orders until one is filled (transient refusals while risk warms up are retried with a new
  id), sells it back, and has the store flush.
* ``intruder KEYFILE``: a host whose key pair is not in the mesh's ``public/`` directory, plus a
  client with no CURVE at all, each trying to subscribe to execution's and risk's events and to send
  requests; a control subscriber with a known key (``tap``) on the same host proves the network path
  and that events were flowing while the others got nothing.
"""
import json
import sys
import time
from decimal import Decimal

import zmq
import zmq.auth

import proto
from nodes import config, security
from nodes.client import RequestClient, RequestTimeout

TRANSIENT = {"FEED_STALE", "NO_MARKET_DATA", "FEED_GAP", "RISK_UNAVAILABLE", "TIMEOUT"}


def client(mesh) -> dict:
    out = {"orders": [], "refusals": []}
    deadline = time.monotonic() + 40
    with RequestClient.for_node(mesh, "execution", source="tests", timeout_ms=1000) as ex:
        while True:                                  # execution up (its risk client may not be yet)
            try:
                ex.call(proto.Query("ping", "x"))
                break
            except RequestTimeout:
                if time.monotonic() > deadline:
                    raise
        for side in ("BUY", "SELL"):
            n = 0
            while True:
                n += 1
                coid = f"netns-{side.lower()}-{n}"
                try:
                    r = ex.request(proto.OrderIntent("BTC-USD", side, "MARKET", size=Decimal("0.001"),
                                                     client_order_id=coid, strategy="netns"))
                except RequestTimeout:
                    r = proto.Reply(False, "TIMEOUT", "no reply")
                if r.ok and r.data.status == "FILLED":
                    out["orders"].append(proto.to_plain(r.data))
                    break
                out["refusals"].append([coid, r.code, r.reason])
                if r.code not in TRANSIENT or time.monotonic() > deadline:
                    out["error"] = f"{coid}: {r.code}: {r.reason}"
                    return out
                time.sleep(0.1)                      # state polling: risk is still warming up
        out["positions"] = proto.to_plain(ex.call(proto.Query("positions")))
    with RequestClient.for_node(mesh, "store", source="tests", timeout_ms=3000) as st:
        out["store"] = proto.to_plain(st.call(proto.Query("store", "flush")))
    return out


def _sub(ctx, endpoint, keys=None):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = keys
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s


def _count(sock) -> int:
    n = 0
    while sock.poll(0):
        sock.recv()
        n += 1
    return n


def intruder(mesh, keyfile: str) -> dict:
    ctx = zmq.Context()
    pub, sec = zmq.auth.load_certificate(keyfile)
    known_pub, known_sec = security._load_pair(mesh, "tap")
    out = {"control": 0, "intruder": 0, "plain": 0, "requests": {}}
    socks = {}
    try:
        for node in ("execution", "risk"):
            server = security._load_public(mesh, node)
            ep = mesh.endpoint(node, "pub")
            socks[("control", node)] = _sub(ctx, ep, (known_pub, known_sec, server))
            socks[("intruder", node)] = _sub(ctx, ep, (pub, sec, server))
            socks[("plain", node)] = _sub(ctx, ep)
        # listen until the control subscriber has seen several heartbeats from both nodes (and at
        # least two seconds): the others were connected, asking, the whole time
        poller = zmq.Poller()
        for s in socks.values():
            poller.register(s, zmq.POLLIN)
        start = time.monotonic()
        seen = {"execution": 0, "risk": 0}
        while time.monotonic() - start < 15:
            ready = dict(poller.poll(100))
            for (who, node), s in socks.items():
                if s in ready:
                    n = _count(s)
                    out[who] += n
                    if who == "control":
                        seen[node] += n
            if min(seen.values()) >= 5 and time.monotonic() - start >= 2:
                break
        out["control_by_node"] = seen
        for node in ("execution", "risk"):
            server = security._load_public(mesh, node)

            def keys(s, server=server):
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server
            for who, secure in (("intruder", keys), ("plain", None)):
                c = RequestClient(mesh.endpoint(node, "rep"), context=ctx, timeout_ms=500, secure=secure)
                try:
                    r = c.request(proto.Query("status"))
                    out["requests"][f"{who}-{node}"] = f"ANSWERED {r.code}"
                except RequestTimeout:
                    out["requests"][f"{who}-{node}"] = "timeout"
                finally:
                    c.close()
        # and the known key is answered from this host
        with RequestClient.for_node(mesh, "execution", source="tap", context=ctx, timeout_ms=3000) as ok:
            out["requests"]["known-execution"] = ok.call(proto.Query("ping", "pong"))
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mesh = config.load().mesh
    if argv[0] == "client":
        out = client(mesh)
    elif argv[0] == "intruder":
        out = intruder(mesh, argv[1])
    else:
        print(f"unknown mode {argv[0]!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
