"""tools.replay over real sockets: a store file republished from the replay slot into a running
store node (the CLI, as a real process), readiness by subscription instead of sleeping, pacing,
topic filters, and refusing to replay into nobody."""
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import zmq

import proto
from proto import jsonl, topics
from proto.codec import Envelope
from nodes.client import RequestClient
from nodes.store import StoreNode
from nodes.store.config import StoreConfig
from nodes.strategy import rl
from tests.conftest import ROOT, make_mesh
from tools.replay import Replayer, ReplayError, load_events


def recorded_file(path, n=200):
    """A store file: synthetic ticks, an order and a PnL, and a _gap line (an incomplete spot)."""
    envs = rl.synthetic_ticks(5, n, product="BTC-USD", dt_ns=20_000_000)
    order = proto.Order("c-1", "v-1", "BTC-USD", "BUY", "MARKET", "GTC", Decimal("0.001"), None, None, False,
                        False, "FILLED", Decimal("0.001"), Decimal("100.01"), Decimal("0.0006"), Decimal("0.001"),
                        Decimal("100.01"), "OK", "", "sma", "paper", 1, 2, 3)
    pnl = proto.PnL(Decimal("-0.0006"), Decimal("0.01"), Decimal("0.0094"), Decimal("10000.0094"),
                    Decimal("0.0006"), "2026-01-01")
    ts = envs[-1].ts_recv
    envs.append(Envelope(topics.ORDER_FILLED, 9001, "execution", 1, ts + 1, ts + 2, order))
    envs.append(Envelope(topics.PNL, 9002, "execution", 1, ts + 3, ts + 4, pnl))
    with open(path, "w") as f:
        f.write('{"type":"_open","ts":0,"format":"tickmesh.jsonl/1"}\n')
        for i, e in enumerate(envs):
            f.write(jsonl.dumps(e) + "\n")
            if i == 10:
                f.write('{"type":"_gap","source":"marketdata","topic":"md.tick.BTC-USD","missing":2,"ts":0}\n')
    return envs


def conf_file(tmp, mesh):
    p = tmp / "mesh.toml"
    p.write_text(f'[mesh]\ntransport = "{mesh.transport}"\nbase_port = {mesh.base_port}\n'
                 f'ipc_dir = "{mesh.ipc_dir}"\nstate_dir = "{mesh.state_dir}"\nheartbeat_s = 0.2\n')
    return p


def test_cli_replays_a_file_into_a_running_mesh(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    src = short_tmp / "recorded.jsonl"
    envs = recorded_file(src)
    store = StoreNode(mesh, StoreConfig(flush_interval_s=0.05, dir=str(short_tmp / "out")), context=ctx).start()
    try:
        p = subprocess.run([sys.executable, "-m", "tools.replay", str(src), "--conf", str(conf_file(short_tmp, mesh)),
                            "--wait-for", "store", "--speed", "max"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert f"{len(envs)} events" in p.stderr and "1 bus gap line(s) (2 events missing)" in p.stderr
        with RequestClient(mesh.endpoint("store", "rep"), context=ctx, timeout_ms=3000) as c:
            q = c.call(proto.Query("store", "flush"))
    finally:
        store.stop()
    out = []
    for f in sorted(Path(q["dir"]).glob("*.jsonl")):
        out += list(jsonl.read(f))
    # everything arrived (no slow-joiner loss), in order, from the replay slot, bodies exact
    assert len(out) == len(envs) == q["events_stored"]
    assert all(e.source == "replay" for e in out)
    assert [(e.topic, e.ts_event, proto.to_plain(e.msg)) for e in out] == \
        [(e.topic, e.ts_event, proto.to_plain(e.msg)) for e in envs]
    assert [e.seq for e in out if e.topic == "md.tick.BTC-USD"] == list(range(1, 201))
    assert out[-1].msg.realized == Decimal("-0.0006") and out[0].ts_recv != envs[0].ts_recv


def _sub(ctx, mesh, prefixes=("",)):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    for p in prefixes:
        s.setsockopt(zmq.SUBSCRIBE, p.encode())
    s.connect(mesh.endpoint("replay", "pub"))
    return s


def _recv_all(sock, n, timeout=5.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(got)} of {n}"
        if sock.poll(int(left * 1000) + 1):
            got.append(proto.decode(sock.recv()))
    return got


def test_waits_for_the_subscription_then_paces_and_filters(short_tmp, ctx):
    mesh = make_mesh("inproc", short_tmp)
    src = short_tmp / "recorded.jsonl"
    recorded_file(src, n=10)                           # ticks 20 ms apart (recorded ts_recv)
    events, meta = load_events(src, ["md.tick."])
    assert len(events) == 10 and [m["type"] for m in meta] == ["_open", "_gap"]
    sub = _sub(ctx, mesh, ["md."])                     # connected before the bind (inproc allows it)
    r = Replayer(mesh, events, context=ctx, speed=1.0, subscribers=1, wait_timeout=5)
    t0 = time.monotonic()
    out = r.run()
    took = time.monotonic() - t0
    got = _recv_all(sub, 10)
    sub.close(linger=0)
    assert out["published"] == 10 and [e.msg for e in got] == [e.msg for e in events]
    assert took >= 9 * 0.020                           # recorded pace: never faster than recorded
    assert r.subs.get(b"md.") == 1


def test_keep_ts_recv_and_max_speed(short_tmp, ctx):
    mesh = make_mesh("ipc", short_tmp)
    src = short_tmp / "recorded.jsonl"
    envs = recorded_file(src, n=500)
    os.makedirs(mesh.ipc_path(), exist_ok=True)
    events, _ = load_events(src, ["pnl", "order."])
    sub = _sub(ctx, mesh)
    r = Replayer(mesh, events, context=ctx, speed=0.0, keep_ts_recv=True, subscribers=1)
    r.run()
    got = _recv_all(sub, 2)
    sub.close(linger=0)
    assert [(e.topic, e.ts_recv) for e in got] == [(e.topic, e.ts_recv) for e in envs[-2:]]


def test_refuses_to_replay_into_nobody(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    src = short_tmp / "recorded.jsonl"
    recorded_file(src, n=5)
    conf = conf_file(short_tmp, mesh)
    p = subprocess.run([sys.executable, "-m", "tools.replay", str(src), "--conf", str(conf),
                        "--wait-timeout", "0.3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "only 0 of 1 subscribers" in p.stderr
    p = subprocess.run([sys.executable, "-m", "tools.replay", str(src), "--conf", str(conf), "--wait-for",
                        "risk", "--wait-timeout", "0.3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "no heartbeat from risk" in p.stderr
    events, _ = load_events(src)
    try:
        Replayer(mesh, events, context=ctx, subscribers=1, wait_timeout=0.2).run()
        raise AssertionError("replayed into nobody")
    except ReplayError as e:
        assert "subscribers" in str(e)


def test_replay_over_curve_into_a_store(short_tmp, ctx):
    """With mesh.curve the replay slot is a CURVE server like any node's PUB (and a client of the
    nodes it waits for)."""
    from nodes import security
    from nodes.config import NODES
    security.generate(short_tmp / "keys", NODES)
    mesh = make_mesh("tcp", short_tmp, curve=True, keys_dir=str(short_tmp / "keys"))
    src = short_tmp / "recorded.jsonl"
    envs = recorded_file(src, n=50)
    store = StoreNode(mesh, StoreConfig(flush_interval_s=0.05), context=ctx).start()
    try:
        events, _ = load_events(src)
        out = Replayer(mesh, events, context=ctx, wait_for=["store"]).run()
        assert out["published"] == len(envs) and out["drained"]
        with RequestClient.for_node(mesh, "store", context=ctx, timeout_ms=3000, source="replay") as c:
            q = c.call(proto.Query("store", "flush"))
    finally:
        store.stop()
    got = [e for f in sorted(Path(q["dir"]).glob("*.jsonl")) for e in jsonl.read(f)]
    assert [e.msg for e in got] == [e.msg for e in envs]
