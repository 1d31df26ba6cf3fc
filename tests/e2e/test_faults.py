"""Fault injection under a real supervisord, during a paper session fed by the fake Coinbase exchange.

The repository's supervisord.conf runs in a temp copy (``make up SUPERVISOR_CONF=...``) against
``python -m tools.fakecoinbase`` (a separate process; faults over its HTTP control port) with the
SMA strategy tuned to trade every few ticks, Slack alerts going to a local sink. In order:

1. the fake exchange skips sequence numbers, then drops the connection: marketdata counts the gap
   (``md.gap``, heartbeat ``feed_gaps``, ``tickmesh_feed_gaps_total``) and the reconnect
   (``feed_reconnects``, ``tickmesh_feed_reconnects_total``), and orders flow again;
2. ``kill -9`` of every node in turn (marketdata, risk, execution, store, strategy, metrics, alerts):
   supervisord restarts it, orders flow again, the kill switch is what it was (execution's death
   engages it -- by design -- and it is released once execution is back), and an alert for every
   death reaches the Slack sink;
3. ``supervisorctl stop`` of risk while orders flow: execution learns it at once (risk's last
   heartbeat says STOPPED), every order sent to it in that window is rejected RISK_UNAVAILABLE and
   none is sent to the venue, and the strategy stops submitting (execution is no longer ready);
   then risk is started again and orders flow;
4. the store is stalled for ten seconds (SIGSTOP, SIGCONT): market data keeps publishing
   (its heartbeat counters advance), execution keeps filling, and the events the store missed are
   counted (bus gaps in its heartbeat and in metrics) and marked in its files (``_gap`` lines);
5. the kill switch is engaged and risk is killed again: it comes back engaged, with the same record.

Then, from the files alone (the execution journal and the store): no order lost, none sent twice,
every order finished; every hole in the store is marked; positions and PnL replayed from the stored
fills (plus exactly the fills in the marked holes) equal execution's, and a replay of the journal
equals them too. Runtime: about a minute.
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
import zmq

import proto
from nodes import config
from nodes.client import RequestClient
from nodes.execution.journal import read_records, rebuild
from nodes.execution.positions import PositionBook
from proto import Code, KillSwitchCmd, OrderIntent, Query, jsonl
from tests.conftest import ROOT
from tests.e2e.harness import BIN, PROGRAMS, PY, SupervisedMesh, wait
from tests.integration.ops_sink import Sink

pytestmark = pytest.mark.e2e

NS = 1_000_000_000
# market steps per second of the fake exchange: with every level2 change published as a whole book,
# enough traffic (~1 MB/s) that a subscriber stalled for ten seconds overflows the kernel's socket
# buffers and the high-water marks (at 50 steps/s the buffers absorbed it all: no gap to see)
RATE_HZ = 200


class Bus:
    """A passive subscriber to every publisher of the mesh (what `tickmesh tap` does), in a thread:
    every event is kept, and ``wait_for`` waits on a condition variable with a deadline."""

    def __init__(self, mesh, prefixes):
        self.mesh, self.prefixes = mesh, prefixes
        self.events = []
        self.cv = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._t = threading.Thread(target=self._run, name="bus", daemon=True)
        self._t.start()
        assert self._ready.wait(5)

    def _run(self):
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        for p in self.prefixes:
            s.setsockopt(zmq.SUBSCRIBE, p.encode())
        for n in config.NODES:
            s.connect(self.mesh.endpoint(n, "pub"))
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not s.poll(100):
                    continue
                got = []
                while True:
                    try:
                        got.append(proto.decode(s.recv(zmq.NOBLOCK)))
                    except zmq.Again:
                        break
                with self.cv:
                    self.events.extend(got)
                    self.cv.notify_all()
        finally:
            s.close(linger=0)
            ctx.term()

    def mark(self) -> int:
        with self.cv:
            return len(self.events)

    def wait_for(self, pred, timeout, what, since=0):
        deadline = time.monotonic() + timeout
        i = since
        with self.cv:
            while True:
                while i < len(self.events):
                    e = self.events[i]
                    i += 1
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"bus: {what}: not seen within {timeout} s")
                self.cv.wait(left)

    def select(self, pred, since=0) -> list:
        with self.cv:
            return [e for e in self.events[since:] if pred(e)]

    def heartbeat(self, node, since=0, pred=lambda hb: True, timeout=15, what=None):
        return self.wait_for(lambda e: e.topic == f"node.heartbeat.{node}" and pred(e.msg), timeout,
                             what or f"heartbeat of {node}", since).msg

    def close(self):
        self._stop.set()
        self._t.join(2)


class FakeExchange:
    """``python -m tools.fakecoinbase`` in its own process; faults over its HTTP control port."""

    def __init__(self, rate_hz):
        self.p = subprocess.Popen([PY, "-m", "tools.fakecoinbase", "--port", "0", "--rate-hz", str(rate_hz),
                                   "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.p.stdout], daemon=True).start()
        deadline = time.monotonic() + 15
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("the fake exchange did not start") from None
            m = re.search(r"on (ws://127\.0\.0\.1:(\d+))", line)
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                break

    def fault(self, kind, **q):
        qs = "&".join(f"{k}={v}" for k, v in q.items())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_fake/{kind}" + (f"?{qs}" if qs else ""),
                                    timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)


class Mesh(SupervisedMesh):
    def __init__(self, tmp: Path, ws_url: str, sink: Sink):
        super().__init__(tmp, lambda m: f"""
[mesh]
transport = "tcp"
base_port = {m.base_port}
state_dir = "{m.tmp}/state"
heartbeat_s = 0.5
request_timeout_ms = 3000
products = ["BTC-USD", "ETH-USD"]
# small high-water marks: a subscriber stalled for ten seconds overflows them (and sees gaps)
hwm = 200

[marketdata]
source = "coinbase"
ws_url = "{ws_url}"
# every level2 change published as a whole book: enough traffic to overflow a stalled subscriber
book_publish_hz = 0.0
book_depth = 40

[strategy]
plugins = ["sma"]
cooldown_s = 0.2
reject_backoff_s = 0.2
max_backoff_s = 0.5
submit_timeout_ms = 1000

[strategy.params.sma]
fast = 2
slow = 4
threshold_bps = "0"

[store]
flush_interval_s = 0.05

[metrics]
port = {m.metrics_port}

[alerts]
cooldown_s = 0.0
node_timeout_s = 3.0
backoff_base_s = 0.05
""", SLACK_WEBHOOK_URL=sink.url + "/slack/services/T0/B0/faults")
        self.cfg = config.load(tmp / "mesh.toml", env={}, read_dotenv=False)
        self.mesh = self.cfg.mesh

    def request(self, node, msg, timeout_ms=3000):
        with RequestClient.for_node(self.mesh, node, source="ctl", timeout_ms=timeout_ms) as c:
            return c.request(msg)

    def killswitch(self):
        return self.request("risk", KillSwitchCmd("status")).data


def _is_fill(e, since_ns=0):
    return e.topic == "order.filled" and e.msg.created_ns > since_ns


def test_faults_under_supervisord(record_property):
    if shutil.which("make") is None or not (BIN / "supervisord").exists():
        pytest.skip("make and supervisord (in the venv) are needed")
    t0 = time.monotonic()
    timings = {}
    tmp = Path(tempfile.mkdtemp(prefix="tm-faults-", dir="/tmp"))
    fake = FakeExchange(rate_hz=RATE_HZ)
    sink = Sink().start()
    mesh = Mesh(tmp, fake.url, sink)
    bus = Bus(mesh.mesh, ["node.", "order.", "fill.", "md.gap", "md.status.", "risk.killswitch", "alert."])
    down = None
    checks = {}
    try:
        r = mesh.make("up")
        assert r.returncode == 0, r.stdout + r.stderr
        wait(lambda: all(mesh.status().get(p, ("",))[0] == "RUNNING" for p in PROGRAMS + ("supervisor",)),
             30, "every program RUNNING")
        for n in PROGRAMS + ("supervisor",):
            bus.heartbeat(n, what=f"first heartbeat of {n}")
        first = bus.wait_for(lambda e: _is_fill(e), 30, "the strategy's first filled order")
        bus.wait_for(lambda e: _is_fill(e, first.msg.created_ns), 10, "a second filled order")
        timings["up"] = time.monotonic() - t0

        # --- the kill switch record every restart must keep ----------------------------------------
        assert mesh.request("risk", KillSwitchCmd("engage", "e2e: baseline")).ok
        assert mesh.request("risk", KillSwitchCmd("release", "e2e: baseline over")).ok
        ks0 = mesh.killswitch()
        assert not ks0.engaged and ks0.reason == "e2e: baseline over" and ks0.since_ns > 0

        # --- 1. the exchange skips sequence numbers, then drops the connection ------------------------
        m = bus.mark()
        hb = bus.heartbeat("marketdata", m)
        gaps0, reconnects0 = hb.counters["feed_gaps"], hb.counters["feed_reconnects"]
        assert fake.fault("skip", n=3)["connections"]
        gap = bus.wait_for(lambda e: e.topic == "md.gap", 10, "md.gap after a sequence skip", m).msg
        assert gap.got - gap.expected == 3
        bus.heartbeat("marketdata", m, lambda h: h.counters["feed_gaps"] >= gaps0 + 1, what="feed_gaps counted")
        m = bus.mark()
        assert fake.fault("drop")["connections"]
        bus.heartbeat("marketdata", m, lambda h: h.counters["feed_reconnects"] >= reconnects0 + 1, timeout=15,
                      what="feed_reconnects counted")
        for p in mesh.mesh.products:
            bus.wait_for(lambda e: e.topic == f"md.status.{p}" and e.msg.healthy, 15, f"{p} healthy again", m)
        t_healthy = time.time_ns()
        bus.wait_for(lambda e: _is_fill(e, t_healthy), 15, "orders after the feed faults", m)
        scraped = wait(lambda: (lambda s: s if sum(v for (n, _), v in s.items() if n == "tickmesh_feed_gaps_total") >= 1
                                and sum(v for (n, _), v in s.items() if n == "tickmesh_feed_reconnects_total") >= 1
                                else None)(mesh.scrape()), 10, "metrics: feed gaps and reconnects")
        checks["feed_gaps_metric"] = sum(v for (n, _), v in scraped.items() if n == "tickmesh_feed_gaps_total")
        timings["feed_faults"] = time.monotonic() - t0

        # --- 2. kill -9 every node in turn ------------------------------------------------------------
        blackouts = []                          # (start_ns, end_ns) when the store was not listening
        killed = {}                             # program -> (pid, kill time)
        # a normal start refuses nothing for want of risk's state: strategy and execution waited
        # until they were ready (risk state, market data)
        assert not bus.select(lambda e: e.topic == "order.rejected" and e.msg.code == Code.RISK_UNAVAILABLE), \
            "orders refused RISK_UNAVAILABLE before any fault"
        for prog in PROGRAMS:
            st, old = mesh.status()[prog]
            assert st == "RUNNING" and old, (prog, st)
            m = bus.mark()
            t_kill = time.time_ns()
            if prog == "strategy":
                # killed while it holds a position, it must come back with it (restored from
                # execution), not flat
                def holding():
                    held = mesh.request("execution", Query("positions", "strategies")).data["strategies"].get("sma", {})
                    return held if any(held.values()) else None
                held_before = wait(holding, 30, "the strategy holding a position")
                t_kill = time.time_ns()
            os.kill(old, signal.SIGKILL)
            hb = bus.heartbeat(prog, m, lambda h: h.pid != old and h.state == "RUNNING", timeout=20,
                               what=f"{prog} restarted by supervisord")
            if prog == "strategy":
                def restored():
                    q = mesh.request("strategy", Query("strategy")).data
                    held = mesh.request("execution", Query("positions", "strategies")).data["strategies"].get("sma", {})
                    return q if q["counters"]["ready"] and q["positions"]["sma"] == {p: v for p, v in held.items()} \
                        else None
                q = wait(restored, 15, "the restarted strategy holding execution's view of its positions")
                checks["strategy_restored"] = {p: str(v) for p, v in q["positions"]["sma"].items()}
                checks["strategy_held_before_kill"] = {p: str(v) for p, v in held_before.items()}
            killed[prog] = (old, t_kill, time.time_ns())
            if prog == "store":
                blackouts.append((t_kill, time.time_ns()))
            if prog == "execution":
                # by design risk engages the kill switch when execution dies; release it once
                # execution is back (risk refuses while it still counts execution as down)
                ks = bus.wait_for(lambda e: e.topic == "risk.killswitch" and e.msg.engaged, 10,
                                  "kill switch engaged on execution's death", m).msg
                assert ks.source == "auto:execution_down", ks
                wait(lambda: mesh.request("risk", KillSwitchCmd("release", "e2e: execution is back")).ok, 15,
                     "kill switch released after execution's restart")
                ks0 = mesh.killswitch()
            else:
                assert mesh.killswitch() == ks0, prog          # the same record, since_ns included
            bus.wait_for(lambda e: _is_fill(e, t_kill), 20, f"orders filled after {prog}'s restart", m)
            timings[f"kill_{prog}"] = time.monotonic() - t0
        # every death alerted, naming the pid that died (supervisord's event for six of them; the
        # alert node's own death by its next run, at start)
        for prog, (pid, _, _) in killed.items():
            sink.wait_for(lambda reqs: any(f"Process {prog} exited unexpectedly" in (r.json or {}).get("text", "")
                                           and f"pid {pid}" in json.dumps(r.json) for r in reqs),
                          15, f"the alert for {prog}'s death")
        sink.wait_for(lambda reqs: any("Feed gap on" in (r.json or {}).get("text", "") for r in reqs), 5,
                      "the feed gap alert")
        wait(lambda: all(mesh.status()[p][0] == "RUNNING" for p in PROGRAMS), 15, "all RUNNING after the kills")

        # --- 3. risk stopped while orders flow: fail closed -------------------------------------------
        r = mesh.supervisorctl("stop", "tickmesh:risk")
        assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
        t_stopped = time.time_ns()
        m = bus.mark()
        for i in range(4):
            mine = mesh.request("execution", OrderIntent("BTC-USD", "BUY", "MARKET", size=Decimal("0.001"),
                                                         client_order_id=f"faults-risk-down-{i}"))
            assert not mine.ok and mine.code == Code.RISK_UNAVAILABLE and mine.data.status == "REJECTED", mine
            assert "risk" in mine.reason, mine
        # the strategy holds its orders back: execution says it is not ready
        bus.heartbeat("strategy", m, lambda h: h.counters["suppressed_not_ready"] > 0, timeout=15,
                      what="the strategy holding orders while risk is stopped")
        t_restart = time.time_ns()
        r = mesh.supervisorctl("start", "tickmesh:risk")
        assert r.returncode == 0, r.stdout + r.stderr
        bus.wait_for(lambda e: _is_fill(e, t_restart), 20, "orders filled after risk is back")
        assert not bus.select(lambda e: e.topic in ("order.accepted", "order.filled", "order.partially_filled")
                              and t_stopped < e.msg.created_ns < t_restart)
        assert mesh.killswitch() == ks0
        timings["risk_stopped"] = time.monotonic() - t0

        # --- 4. a subscriber stalled for ten seconds ----------------------------------------------------
        store_pid = mesh.status()["store"][1]
        m = bus.mark()
        md0 = bus.heartbeat("marketdata", m)
        store_hb0 = bus.heartbeat("store", m)
        t_stall = time.time_ns()
        os.kill(store_pid, signal.SIGSTOP)
        try:
            stall_end = time.monotonic() + 10.0
            mds = []
            while time.monotonic() < stall_end:       # the scenario: ten seconds of stall
                try:
                    mds.append(bus.heartbeat("marketdata", bus.mark(), timeout=stall_end - time.monotonic()))
                except AssertionError:
                    break
        finally:
            os.kill(store_pid, signal.SIGCONT)
        t_cont = time.time_ns()
        assert len(mds) >= 10, "marketdata stopped publishing heartbeats while the store was stalled"
        assert mds[-1].counters["published"] > md0.counters["published"] + 100
        filled_in_stall = bus.select(lambda e: _is_fill(e) and t_stall < e.msg.updated_ns < t_cont, m)
        assert filled_in_stall, "execution stopped filling while the store was stalled"
        sink.wait_for(lambda reqs: any("Node store is down" in (r.json or {}).get("text", "") for r in reqs), 10,
                      "node-down alert for the stalled store")
        hb = bus.heartbeat("store", bus.mark(), lambda h: h.counters["gaps"] > store_hb0.counters["gaps"],
                           what="the store counting the events it missed")
        blackouts.append((t_stall, time.time_ns()))
        checks["store_gaps_after_stall"] = hb.counters["gaps"]
        sink.wait_for(lambda reqs: any("Node store is up again" in (r.json or {}).get("text", "") for r in reqs), 10,
                      "node-up alert for the store")
        wait(lambda: mesh.scrape().get(("tickmesh_bus_gaps_total",
                                        frozenset({"node": "store", "publisher": "marketdata"}.items())), 0) > 0,
             10, "metrics: the store's bus gaps")
        timings["stall"] = time.monotonic() - t0

        # --- 5. engaged, then risk killed: it comes back engaged -------------------------------------
        assert mesh.request("risk", KillSwitchCmd("engage", "e2e: final")).ok
        ks_final = mesh.killswitch()
        assert ks_final.engaged and ks_final.source == "manual"
        old = mesh.status()["risk"][1]
        m = bus.mark()
        os.kill(old, signal.SIGKILL)
        bus.heartbeat("risk", m, lambda h: h.pid != old, timeout=20, what="risk restarted")
        assert mesh.killswitch() == ks_final
        # until the restarted risk's first snapshot reaches execution (its SUB reconnects on
        # ZeroMQ's schedule), orders fail closed with RISK_UNAVAILABLE: ask until the state is
        # there; every answer a refusal, the last KILL_SWITCH
        answers = []

        def risk_answered():
            a = mesh.request("execution", OrderIntent("ETH-USD", "BUY", "MARKET", size=Decimal("0.01"),
                                                      client_order_id=f"faults-engaged-{len(answers)}"))
            answers.append(a)
            return a if a.code != Code.RISK_UNAVAILABLE else None
        r = wait(risk_answered, 10, "execution holding the restarted risk's state")
        assert not any(a.ok for a in answers), answers
        assert not r.ok and r.code == Code.KILL_SWITCH, r
        # quiet: nothing working, the store flushed; execution's own view of positions and PnL
        wait(lambda: mesh.request("execution", Query("orders")).data == [], 10, "no working orders")
        positions = {p.product: p for p in mesh.request("execution", Query("positions")).data}
        pnl = mesh.request("execution", Query("pnl")).data
        flushed = mesh.request("store", Query("store", "flush")).data
        assert flushed["flushed"], flushed
        timings["final"] = time.monotonic() - t0
    finally:
        bus.close()
        down = mesh.make("down")
        left = mesh.our_processes()
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        sink.close()
        fake.stop()
    assert down.returncode == 0, down.stdout + down.stderr
    assert left == [], left

    # --- from the files alone -------------------------------------------------------------------------
    records = read_records(tmp / "state" / "execution" / "paper.journal")
    rb = rebuild(records)
    orders = rb.orders
    assert len(orders) > 30, len(orders)
    # none sent twice: "sent" turns on once per order, fills never repeat, never overfill
    sent_flips = Counter()
    last_sent = {}
    fill_ids = Counter()
    for rec in records:
        if rec["k"] not in ("order", "fill"):
            continue
        o = rec["o"]
        c = o["client_order_id"]
        if o["sent"] and not last_sent.get(c):
            sent_flips[c] += 1
        assert not (last_sent.get(c) and not o["sent"]), f"{c}: sent went back to false"
        last_sent[c] = o["sent"]
        if rec["k"] == "fill":
            fill_ids[rec["f"]["fill_id"]] += 1
    assert max(sent_flips.values()) == 1
    assert max(fill_ids.values()) == 1, [f for f, n in fill_ids.items() if n > 1]
    by_order = defaultdict(Decimal)
    for f, _ in rb.fills:
        by_order[f.client_order_id] += f.size
    for c, o in orders.items():
        assert o.status in ("FILLED", "CANCELLED", "REJECTED"), (c, o.status)        # every order finished
        assert by_order.get(c, Decimal(0)) == o.filled_size, c
        assert o.size is None or o.filled_size <= o.size, c
        if not o.sent:
            assert o.status == "REJECTED" and o.filled_size == 0, (c, o.status)
    # risk stopped: every order created in that window rejected RISK_UNAVAILABLE, never sent
    window = [o for o in orders.values() if t_stopped < o.created_ns < t_restart]
    assert len(window) >= 4 and all(o.status == "REJECTED" and o.code == Code.RISK_UNAVAILABLE and not o.sent
                                    and o.filled_size == 0 for o in window), window

    # the tap (our Bus, never stalled) saw no order the journal does not have, and its last word on
    # every order is the journal's, except for an order finished around execution's death (journaled,
    # then the process died before it published; or resolved by the new process at its start,
    # before our subscription to it was back)
    on_bus = {}
    for e in bus.events:
        if e.topic.startswith("order."):
            on_bus[e.msg.client_order_id] = e.msg
    assert set(on_bus) <= set(orders), set(on_bus) - set(orders)
    _, t_exec_kill, t_exec_back = killed["execution"]
    for c, o in on_bus.items():
        if (o.status, o.filled_size) != (orders[c].status, orders[c].filled_size):
            assert t_exec_kill - NS <= orders[c].updated_ns <= t_exec_back + NS, (c, o, orders[c])

    # the store: every file, its gap lines, its events
    files = sorted((tmp / "state" / "store").glob("*.jsonl"))
    assert len(files) >= 2                              # the store was killed once: a second file
    events, gap_lines = [], []
    for f in files:
        for x in jsonl.read(f, with_meta=True):
            if isinstance(x, dict):
                if x.get("type") == "_gap":
                    gap_lines.append(x)
            else:
                events.append(x)
    stored_orders = defaultdict(list)
    for e in events:
        if e.topic.startswith("order."):
            stored_orders[e.msg.client_order_id].append(e.msg)
    # no phantom: every order in the store is in the journal, and what the store saw last of it is
    # a state the journal went through
    assert set(stored_orders) <= set(orders), set(stored_orders) - set(orders)
    for c, seen in stored_orders.items():
        if seen[-1].status == orders[c].status:
            assert seen[-1].filled_size == orders[c].filled_size, c
    # every hole is marked: per (publisher, topic), in file order, consecutive stored events are
    # contiguous or a _gap line just before the later one says exactly how many are missing (bus
    # gaps while the store ran or stalled; what was published while no store ran; and the first
    # events of a publisher that restarted, sent before the store's subscription to the new process
    # was back: the runtime counts those as a gap from seq 1; and what a publisher sent before the
    # store first heard it: a "joined late" gap before the topic's first stored event).
    gap_missing = defaultdict(int)
    pending, last, unmarked = defaultdict(int), {}, Counter()
    for f in files:
        for x in jsonl.read(f, with_meta=True):
            if isinstance(x, dict):
                if x.get("type") == "_gap":
                    pending[(x["source"], x["topic"])] += x["missing"]
                    gap_missing[(x["source"], x["topic"])] += x["missing"]
                continue
            key = (x.source, x.topic)
            prev, marked = last.get(key), pending.pop(key, 0)
            last[key] = x.seq
            if prev is None:
                # the store's first event of this topic: what the publisher sent before the store
                # was subscribed (it started later, or restarted) is marked, exactly
                assert marked in (0, x.seq - 1), (key, x.seq, marked)
            elif x.seq > prev:
                assert x.seq - prev - 1 == marked, (key, prev, x.seq, marked)
            else:                               # the publisher restarted: its lost first events
                assert marked == x.seq - 1, (key, prev, x.seq, marked)     # are marked as a gap
                unmarked[key[0]] += x.seq - 1 - marked
    assert gap_lines and sum(gap_missing.values()) > 0
    assert set(unmarked) <= set(PROGRAMS), unmarked

    def in_store_hole(ts):
        return any(a - NS // 2 <= ts <= b + NS // 2 for a, b in blackouts)

    def at_exec_restart(ts):
        return t_exec_kill - NS <= ts <= t_exec_back + NS

    # fills: the stored ones are exactly the journal's (same fields), no duplicates; the ones missing
    # from the store were published inside a marked hole (the store dead or stalled), or by the
    # restarted execution before the store heard it
    journal_fills = {f.fill_id: (f, ts) for f, ts in rb.fills}
    stored_fills = [e for e in events if e.type == "Fill"]
    assert len({e.msg.fill_id for e in stored_fills}) == len(stored_fills)
    for e in stored_fills:
        assert journal_fills[e.msg.fill_id][0] == e.msg
    missing = [journal_fills[k] for k in journal_fills.keys() - {e.msg.fill_id for e in stored_fills}]
    for f, ts in missing:
        assert in_store_hole(ts) or at_exec_restart(ts), (f, ts, blackouts)
    missing_by_topic = Counter(f"fill.{f.product}" for f, ts in missing if not at_exec_restart(ts))
    for topic, n in missing_by_topic.items():
        assert gap_missing[("execution", topic)] >= n, (topic, n, dict(gap_missing))
    # orders missing entirely from the store: created and finished inside a hole, or around
    # execution's restart
    for c, o in orders.items():
        if c not in stored_orders:
            assert (any(a - NS // 2 <= o.created_ns and o.updated_ns <= b + NS // 2 for a, b in blackouts)
                    or at_exec_restart(o.updated_ns)), (c, o)

    # positions and PnL: a replay of the journal's fills equals execution's own numbers exactly; a
    # replay of the store differs from them by exactly the fills in its marked holes (and equals
    # them when there are none)
    starting = mesh.cfg.section("execution").starting_equity
    from_journal = PositionBook(starting)
    for f, ts in rb.fills:
        from_journal.apply_fill(f, ts)
    for prod, p in positions.items():
        q = from_journal.positions[prod]
        assert (q.qty, q.avg_cost, q.realized, q.fees) == (p.qty, p.avg_cost, p.realized_pnl, p.fees), (prod, q, p)
    assert from_journal.realized == pnl.realized and from_journal.fees == pnl.fees
    from_store = PositionBook.replay(events, starting)
    for prod, p in positions.items():
        q = from_store.positions.get(prod)
        lost = [f for f, _ in missing if f.product == prod]
        lost_qty = sum((f.size if f.side == "BUY" else -f.size for f in lost), Decimal(0))
        lost_fees = sum((f.fee for f in lost), Decimal(0))
        assert (q.qty if q else 0) + lost_qty == p.qty, (prod, q, p, lost)
        assert (q.fees if q else 0) + lost_fees == p.fees, (prod, q, p, lost)
        if not lost:
            assert (q.avg_cost, q.realized) == (p.avg_cost, p.realized_pnl), (prod, q, p)
    if not missing:
        assert from_store.realized == pnl.realized and from_store.fees == pnl.fees
    checks.update(orders=len(orders), fills=len(rb.fills), fills_missing_from_store=len(missing),
                  gap_lines=len(gap_lines), gap_events=sum(gap_missing.values()), risk_window_orders=len(window),
                  unmarked_at_publisher_restart=dict(unmarked))
    timings["total"] = time.monotonic() - t0
    record_property("timings", timings)
    record_property("checks", checks)
    print("faults timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
    print("faults checks:", checks)
    shutil.rmtree(tmp, ignore_errors=True)
