"""The store node over real sockets: what it stores, gap lines, overload accounting, and a real
process killed with SIGKILL (loses at most the unflushed tail) or stopped with SIGTERM."""
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import zmq

import proto
from proto import jsonl, topics
from nodes.client import RequestClient
from nodes.store import StoreNode
from nodes.store.config import StoreConfig
from tests.conftest import ROOT, make_mesh, wait_until

PROBE = "PROBE-USD"


def bind_pub(ctx, mesh, node):
    if mesh.transport == "ipc":
        os.makedirs(mesh.ipc_path(), exist_ok=True)
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.bind(mesh.endpoint(node, "pub", bind=True))
    return s


def tick(i, product="BTC-USD"):
    return proto.Tick(product, Decimal("65000.10") + i, Decimal("65000.00"), Decimal("0.50000000"),
                      Decimal("65000.20"), Decimal("1.25"), Decimal("1234.5678"))


def wait_subscribed(node, pub, enc, timeout=5.0):
    """Slow joiner: probe ticks until the store has received one from this publisher."""
    def seen():
        if any(src == enc.source for src, _ in list(node._seqs)):
            return True
        pub.send(enc.encode(topics.tick(PROBE), tick(0, PROBE)))
        return False
    wait_until(seen, timeout, interval=0.002, what=f"a probe from {enc.source}")


def stored_events(directory):
    events, meta = [], []
    for f in sorted(Path(directory).glob("*.jsonl")):
        for item in jsonl.read(f, with_meta=True):
            (meta if type(item) is dict else events).append(item)
    return [e for e in events if getattr(e.msg, "product", None) != PROBE], meta


def query(ctx, mesh, arg=""):
    with RequestClient(mesh.endpoint("store", "rep"), context=ctx, timeout_ms=3000) as c:
        return c.call(proto.Query("store", arg))


def test_stores_subscribed_topics_exactly(mesh, ctx, collector):
    md, ex = bind_pub(ctx, mesh, "marketdata"), bind_pub(ctx, mesh, "execution")
    hb = collector(mesh, ["store"], [topics.heartbeat("store")])
    node = StoreNode(mesh, StoreConfig(flush_interval_s=0.05), context=ctx).start()
    try:
        emd, eex = proto.Encoder("marketdata"), proto.Encoder("execution")
        wait_subscribed(node, md, emd)
        wait_subscribed(node, ex, eex)
        sent = []
        for i in range(50):
            sent.append(emd.encode(topics.tick("BTC-USD"), tick(i), ts_event=1000 + i, ts_recv=2000 + i))
        order = proto.Order("c-1", "v-1", "BTC-USD", "BUY", "MARKET", "GTC", Decimal("0.001"), None, None,
                            False, False, "FILLED", Decimal("0.001"), Decimal("65000.12"), Decimal("0.39"),
                            Decimal("0.001"), Decimal("65000.12"), "OK", "", "sma", "paper", 1, 2, 3)
        sent.append(eex.encode(topics.ORDER_FILLED, order))
        sent.append(eex.encode(topics.fill("BTC-USD"), proto.Fill("f-1", "c-1", "BTC-USD", "BUY",
                                                                 Decimal("65000.12"), Decimal("0.001"),
                                                                 Decimal("0.390000720"), "TAKER", "paper")))
        sent.append(eex.encode(topics.PNL, proto.PnL(Decimal("-0.39"), Decimal("0"), Decimal("-0.39"),
                                                     Decimal("9999.61"), Decimal("0.39"), "2026-11-28")))
        for f in sent[:50]:
            md.send(f)
        for f in sent[50:]:
            ex.send(f)
        # not subscribed by default: heartbeats, alerts
        ex.send(eex.encode(topics.heartbeat("execution"), proto.Heartbeat("execution", 1, "RUNNING", 0, 0.0, {}, "h")))
        ex.send(eex.encode(topics.alert("x"), proto.AlertEvent("k", "info", "t", "x", False, [])))
        wait_until(lambda: node._seqs.get(("marketdata", "md.tick.BTC-USD")) == 50
                   and node._seqs.get(("execution", "pnl")) == 1, 5, what="all events received")
        q = query(ctx, mesh, "flush")
        assert q["flushed"] and q["events_dropped"] == 0 and q["writer_alive"]
        events, meta = stored_events(q["dir"])
        # per publisher in order (two publishers' streams interleave in arrival order)
        key = lambda e: (e["source"], e["topic"], e["seq"])   # noqa: E731
        assert sorted((proto.envelope_to_plain(e) for e in events), key=key) == \
            sorted((proto.envelope_to_plain(proto.decode(f)) for f in sent), key=key)
        assert [e.seq for e in events if e.source == "marketdata"] == list(range(1, 51))
        first = [e for e in events if e.source == "marketdata"][0]
        assert first.ts_event == 1000 and first.ts_recv == 2000
        assert str([e for e in events if e.type == "Fill"][0].msg.fee) == "0.390000720"
        assert meta[0]["type"] == "_open" and meta[0]["transport"] == mesh.transport
        assert q["events_stored"] == q["events_in"] and q["events_stored"] >= len(events) + 2  # + probes
        beat = hb.wait_for(lambda e: e.msg.counters.get("events_stored", 0) >= 53, 5)
        assert beat.msg.node == "store"
    finally:
        node.stop()
    _, meta = stored_events(q["dir"])
    assert meta[-1]["type"] == "_close"


def test_bus_gaps_become_gap_lines(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    md = bind_pub(ctx, mesh, "marketdata")
    node = StoreNode(mesh, StoreConfig(flush_interval_s=0.05), context=ctx).start()
    try:
        enc = proto.Encoder("marketdata")
        wait_subscribed(node, md, enc)
        frames = [enc.encode(topics.tick("BTC-USD"), tick(i)) for i in range(10)]
        for i, f in enumerate(frames):
            if i not in (3, 4, 5):          # three events lost on the way
                md.send(f)
        wait_until(lambda: node._seqs.get(("marketdata", "md.tick.BTC-USD")) == 10, 5, what="last event")
        q = query(ctx, mesh, "flush")
    finally:
        node.stop()
    f = sorted(Path(q["dir"]).glob("*.jsonl"))[0]
    probe = topics.tick(PROBE)
    lines = list(jsonl.read(f, with_meta=True))
    seq = [(i["type"] if type(i) is dict else i.seq) for i in lines
           if (type(i) is dict and i.get("topic") != probe) or (type(i) is not dict and i.msg.product != PROBE)]
    assert seq == ["_open", 1, 2, 3, "_gap", 7, 8, 9, 10, "_close"]
    gap = [i for i in lines if type(i) is dict and i["type"] == "_gap" and i["topic"] != probe][0]
    assert gap["missing"] == 3 and gap["source"] == "marketdata" and gap["topic"] == "md.tick.BTC-USD"
    # the probes the store missed before it was subscribed are marked too (joined late)
    first_probe = next(i for i in lines if type(i) is not dict and i.msg.product == PROBE)
    late = [i for i in lines if type(i) is dict and i["type"] == "_gap" and i["topic"] == probe]
    assert sum(g["missing"] for g in late) == first_probe.seq - 1
    assert q["gap_lines"] == 1 + len(late)


def test_events_published_between_two_store_runs_are_a_marked_gap(short_tmp, ctx):
    """A store restarted (crash or not) picks up, per publisher and topic, where its files end: what
    a publisher that kept running published meanwhile is a _gap line at the start of the new file
    (found by tests/e2e/test_faults.py: a hole between two files was unmarked)."""
    mesh = make_mesh("tcp", short_tmp)
    md = bind_pub(ctx, mesh, "marketdata")
    enc = proto.Encoder("marketdata")
    frames = [enc.encode(topics.tick("BTC-USD"), tick(i)) for i in range(12)]
    node = StoreNode(mesh, StoreConfig(flush_interval_s=0.05), context=ctx).start()
    try:
        wait_subscribed(node, md, enc)
        for f in frames[:4]:                    # seq 1..4 stored
            md.send(f)
        wait_until(lambda: node._seqs.get(("marketdata", "md.tick.BTC-USD")) == 4, 5, what="first run")
    finally:
        node.stop()
    for f in frames[4:7]:                       # seq 5..7: nobody listens
        md.send(f)
    node = StoreNode(mesh, StoreConfig(flush_interval_s=0.05), context=ctx).start()
    try:
        wait_subscribed(node, md, enc)
        for f in frames[7:]:                    # seq 8..12
            md.send(f)
        wait_until(lambda: node._seqs.get(("marketdata", "md.tick.BTC-USD")) == 12, 5, what="second run")
        q = query(ctx, mesh, "flush")
        # (probes lost to the slow joiner of the second run may add a gap of their own)
        assert node.counters["gaps"] >= 3 and node.bus_gaps["marketdata"] >= 3
        assert node.extra_counters()["store_restart_gaps"] >= 3
    finally:
        node.stop()
    second = sorted(Path(q["dir"]).glob("*.jsonl"))[-1]
    probe = topics.tick(PROBE)
    seq = [(i["type"] if type(i) is dict else i.seq) for i in jsonl.read(second, with_meta=True)
           if (i.get("topic") != probe if type(i) is dict else i.msg.product != PROBE)]
    assert seq == ["_open", "_gap", 8, 9, 10, 11, 12, "_close"]
    gap = [i for i in jsonl.read(second, with_meta=True) if type(i) is dict and i["type"] == "_gap"
           and i["topic"] != probe][0]
    assert (gap["source"], gap["topic"], gap["missing"]) == ("marketdata", "md.tick.BTC-USD", 3)


def test_overload_drops_are_counted_and_recorded_never_silent(short_tmp, ctx):
    mesh = make_mesh("inproc", short_tmp)
    md = bind_pub(ctx, mesh, "marketdata")
    # a writer that wakes only every 5 s and a queue of 200: a burst must overflow it
    node = StoreNode(mesh, StoreConfig(flush_interval_s=5.0, queue_max=200, batch_max=10**6),
                     context=ctx).start()
    try:
        enc = proto.Encoder("marketdata")
        wait_subscribed(node, md, enc)
        n = 5000
        for i in range(n):
            md.send(enc.encode(topics.tick("BTC-USD"), tick(i)))
        wait_until(lambda: node._seqs.get(("marketdata", "md.tick.BTC-USD")) == n, 10, what="burst received")
        q = query(ctx, mesh, "flush")
        received = node.events_in
    finally:
        node.stop()
    assert node.counters["gaps"] == 0                       # the bus lost nothing: the store dropped
    assert q["events_dropped"] > 0
    assert q["events_stored"] + q["events_dropped"] == received       # every event accounted for
    events, meta = stored_events(q["dir"])
    lags = [m for m in meta if m["type"] == "_lag"]
    assert lags and sum(m["dropped"] for m in lags) == q["events_dropped"]
    assert 0 < len(events) < n


def _conf_file(tmp, mesh, extra=""):
    p = tmp / "mesh.toml"
    p.write_text(f'[mesh]\ntransport = "{mesh.transport}"\nbase_port = {mesh.base_port}\n'
                 f'ipc_dir = "{mesh.ipc_dir}"\nstate_dir = "{mesh.state_dir}"\nheartbeat_s = 0.2\n'
                 f'[store]\nflush_interval_s = 0.05\n{extra}')
    return p


def _spawn(conf):
    return subprocess.Popen([sys.executable, "-m", "nodes.store", "--conf", str(conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_process_crash_loses_at_most_the_unflushed_tail(short_tmp, ctx, collector, how):
    mesh = make_mesh("tcp", short_tmp)
    conf = _conf_file(short_tmp, mesh)
    md = bind_pub(ctx, mesh, "marketdata")
    hb = collector(mesh, ["store"], [topics.heartbeat("store")])
    proc = _spawn(conf)
    try:
        hb.wait_for(lambda e: e.msg.state == "RUNNING", 15)
        enc = proto.Encoder("marketdata")
        status = lambda: query(ctx, mesh)["events_stored"]   # noqa: E731
        deadline = time.monotonic() + 5
        while status() == 0:                                   # slow joiner: probe until stored
            assert time.monotonic() < deadline
            md.send(enc.encode(topics.tick(PROBE), tick(0, PROBE)))
        for i in range(300):
            md.send(enc.encode(topics.tick("BTC-USD"), tick(i)))
        deadline = time.monotonic() + 5
        while True:          # what the store reports as flushed is on disk when it dies
            q = query(ctx, mesh, "flush")
            if len(stored_events(q["dir"])[0]) == 300:
                break
            assert time.monotonic() < deadline, q
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, how))
        rc = proc.wait(timeout=5)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events, meta = stored_events(q["dir"])
    assert [e.seq for e in events] == list(range(1, 301))
    if how == "SIGKILL":
        assert rc == -signal.SIGKILL and meta[-1]["type"] != "_close"   # cut, but nothing flushed lost
        # a restart never appends to the cut file: it opens the next one
        proc2 = _spawn(conf)
        try:
            hb.wait_for(lambda e: e.msg.state == "RUNNING" and e.msg.pid == proc2.pid, 15)
            deadline = time.monotonic() + 5
            while status() == 0:                               # its first event opens a file
                assert time.monotonic() < deadline
                md.send(enc.encode(topics.tick(PROBE), tick(0, PROBE)))
        finally:
            proc2.send_signal(signal.SIGTERM)
            proc2.wait(timeout=5)
        names = sorted(p.name for p in Path(q["dir"]).glob("*.jsonl"))
        assert len(names) == 2 and names[1].endswith("-0001.jsonl")
    else:
        assert rc == 0 and meta[-1]["type"] == "_close" and meta[-1]["reason"] == "stop"
        assert took < 2.0, f"SIGTERM stop took {took:.2f} s"
