"""The tap against real publishers on tcp, ipc and inproc: filters, JSON, record, restarts, SIGTERM."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest

import proto
from nodes.runtime import Node, NodeStartError
from proto import jsonl, topics
from tests.conftest import ROOT, make_mesh, wait_until
from tools.tap import Tap


class Ticker(Node):
    """A bare publisher in the marketdata slot: ticks and trades on a timer."""

    name = "marketdata"

    def __init__(self, mesh, interval=0.005, **kw):
        super().__init__(mesh, **kw)
        self.n = 0
        self.every(interval, self._tick)

    def _tick(self):
        self.n += 1
        px = Decimal("65000.00") + Decimal(self.n) / 100
        self.publish(topics.tick("BTC-USD"), proto.Tick("BTC-USD", px, px, Decimal("1"), px, Decimal("1"), Decimal("5")))
        self.publish(topics.trade("ETH-USD"), proto.Trade("ETH-USD", str(self.n), px, Decimal("0.1"), "BUY"))


def run_tap(tap):
    t = threading.Thread(target=tap.run, daemon=True)
    t.start()
    return t


def write_conf(mesh, path):
    path.write_text(f'[mesh]\ntransport = "{mesh.transport}"\nbase_port = {mesh.base_port}\n'
                    f'ipc_dir = "{mesh.ipc_dir}"\nstate_dir = "{mesh.state_dir}"\nheartbeat_s = {mesh.heartbeat_s}\n')
    return path


def test_filters_json_and_record(mesh, ctx, short_tmp):
    node = Ticker(mesh, context=ctx).start()
    rec = short_tmp / "tap.jsonl"
    out = io.StringIO()
    tap = Tap([mesh.endpoint("marketdata", "pub")], ["md.tick."], out=out, mode="json", count=30,
              duration=10, record=str(rec), context=ctx)
    t = run_tap(tap)
    try:
        t.join(10)
        assert not t.is_alive()
    finally:
        node.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) == 30
    objs = [json.loads(x) for x in lines]
    assert {o["topic"] for o in objs} == {"md.tick.BTC-USD"}          # the trade topic is filtered out
    assert all(isinstance(o["body"]["price"], str) for o in objs)
    seqs = [o["seq"] for o in objs]
    assert seqs == list(range(seqs[0], seqs[0] + 30))                   # contiguous: nothing lost
    recorded = list(jsonl.read(rec))
    assert [jsonl.dumps(e) for e in recorded] == lines
    meta = list(jsonl.read(rec, with_meta=True))
    assert meta[0]["type"] == "_open" and meta[-1]["type"] == "_close" and meta[-1]["events"] == 30


def test_human_lines_and_stats(mesh, ctx):
    node = Ticker(mesh, context=ctx).start()
    out = io.StringIO()
    lines_tap = Tap([mesh.endpoint("marketdata", "pub")], [""], out=out, count=10, duration=10, context=ctx)
    run_tap(lines_tap).join(10)
    stats_out = io.StringIO()
    stats_tap = Tap([mesh.endpoint("marketdata", "pub")], ["md.", "node."], out=stats_out, mode="stats",
                    duration=0.7, stats_interval=0.2, context=ctx)
    run_tap(stats_tap).join(5)
    node.stop()
    text = [x for x in out.getvalue().splitlines() if not x.startswith("-- heartbeats:")]   # the closing summary
    assert len(text) == 10 and any(" md.tick.BTC-USD " in x and "price=" in x for x in text)
    st = stats_out.getvalue()
    assert st.count("TOPIC") >= 3                      # refreshed while running, plus the final view
    assert "md.tick.BTC-USD" in st and "md.trade.ETH-USD" in st and "node.heartbeat.marketdata" in st
    tick = stats_tap.stats.topics["md.tick.BTC-USD"]
    assert tick.count > 20 and tick.gaps == 0


@pytest.mark.parametrize("transport", ["tcp", "ipc"])   # inproc never reconnects: the tap uses a tcp bridge there
def test_survives_a_publisher_restart(transport, short_tmp, ctx):
    mesh = make_mesh(transport, short_tmp)
    a = Ticker(mesh, interval=0.002, context=ctx).start()
    tap = Tap([mesh.endpoint("marketdata", "pub")], ["md.tick."], out=io.StringIO(), duration=15, context=ctx)
    t = run_tap(tap)
    try:
        wait_until(lambda: tap.seen >= 200, 5, what="events from the first publisher")
        a.stop()
        # a new incarnation (seq restarts at 1) on the same endpoint; libzmq releases the old
        # listener asynchronously, so the bind is retried until the port is free (bounded)
        started = []

        def restart():
            try:
                started.append(Ticker(mesh, interval=0.05, context=ctx).start())
            except NodeStartError:
                return False
            return True
        wait_until(restart, 5, interval=0.05, what="the publisher re-binding its endpoint")
        b = started[0]
        try:
            seen = tap.seen
            wait_until(lambda: tap.seen >= seen + 5, 8, what="events from the restarted publisher")
        finally:
            b.stop()
    finally:
        tap.stop()
        t.join(2)
    assert not t.is_alive()
    st = tap.stats.topics["md.tick.BTC-USD"]
    assert st.restarts == 1 and st.gaps == 0


def test_process_exits_cleanly_on_sigterm_and_records(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    conf = write_conf(mesh, short_tmp / "mesh.toml")
    node = Ticker(mesh, context=ctx).start()
    rec = short_tmp / "rec.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "tools.tap", "--conf", str(conf), "--json", "--topic", "md.trade.",
                          "--record", str(rec)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()                 # blocks until the tap printed an event
        assert json.loads(first)["type"] == "Trade"
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(3)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
        node.stop()
    assert rc == 0, p.stderr.read()
    assert took < 1.0
    meta = list(jsonl.read(rec, with_meta=True))
    assert meta[0]["type"] == "_open" and meta[-1]["type"] == "_close"
    assert all(e.msg.TAG == "Trade" for e in jsonl.read(rec))


def test_count_not_reached_exits_1_and_nothing_listening_is_fine(short_tmp):
    mesh = make_mesh("tcp", short_tmp)
    conf = write_conf(mesh, short_tmp / "mesh.toml")
    r = subprocess.run([sys.executable, "-m", "tools.tap", "--conf", str(conf), "--count", "1", "--duration", "0.3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "saw 0 of 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.tap", "--endpoint", "bogus://x", "--duration", "0.1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "tickmesh tap:" in r.stderr


@pytest.mark.parametrize("via", ["inproc-config"])
def test_inproc_config_asks_for_an_endpoint(short_tmp, via):
    mesh = make_mesh("inproc", short_tmp)
    conf = write_conf(mesh, short_tmp / "mesh.toml")
    env = dict(os.environ, TICKMESH_CONF=str(conf))
    r = subprocess.run([sys.executable, "-m", "tools.tap", "--duration", "0.1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--endpoint" in r.stderr
