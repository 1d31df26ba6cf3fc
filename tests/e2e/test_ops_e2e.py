"""End to end under a real supervisord: the repository's supervisord.conf (copied verbatim into a temp
directory, so %(here)s puts sockets, logs and pid file there), `make up` / `make down`, the fake
Coinbase exchange, a fake Slack/Teams sink, and the operator tools as subprocesses.

Steps: every program RUNNING and every node's heartbeat seen (`tickmesh ctl status`); a paper order
through `tickmesh ctl order` seen filled in `tickmesh tap` and in the metrics endpoint; `kill -9` of
the execution node, restarted by supervisord with its position intact (and the process-exit alert at
the sink); the kill switch engaged through ctl and its alert at the fake Slack and Teams; `make down`
leaves no process behind.
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.harness import BIN, PROGRAMS, SupervisedMesh, wait
from tests.integration.ops_sink import Sink

pytestmark = pytest.mark.e2e


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

[marketdata]
source = "coinbase"
ws_url = "{ws_url}"

[strategy]
plugins = ["sma"]
products = ["ETH-USD"]

[metrics]
port = {m.metrics_port}

[alerts]
cooldown_s = 0.0
node_timeout_s = 3.0
backoff_base_s = 0.05
""", SLACK_WEBHOOK_URL=sink.url + "/slack/services/T0/B0/e2e",
                         TEAMS_WEBHOOK_URL=sink.url + "/teams/webhookb2/e2e")

    def ctl(self, *args, timeout=20):
        return subprocess.run([sys.executable, "-m", "tools.ctl", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)


class Tap:
    """`tickmesh tap --json` as a subprocess, its lines on a queue."""

    def __init__(self, mesh: Mesh, *topics):
        args = [sys.executable, "-m", "tools.tap", "--json"] + [a for t in topics for a in ("--topic", t)]
        self.p = subprocess.Popen(args, env=mesh.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.q = queue.Queue()
        self.seen = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(json.loads(line))

    def wait_for(self, pred, timeout):
        """The first event so far (or to come) matching ``pred``."""
        for ev in self.seen:
            if pred(ev):
                return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("tap: no matching event")
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                raise AssertionError("tap: no matching event") from None
            self.seen.append(ev)
            if pred(ev):
                return ev

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait(5)




def test_mesh_under_supervisord(record_property):
    if shutil.which("make") is None or not (BIN / "supervisord").exists():
        pytest.skip("make and supervisord (in the venv) are needed")
    from tools.fakecoinbase import FakeCoinbaseWS
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tm-e2e-", dir="/tmp"))
    fake = FakeCoinbaseWS("127.0.0.1", 0, rate_hz=20.0).start()
    sink = Sink().start()
    mesh = Mesh(tmp, fake.url, sink)
    tap = None
    timings = {}
    try:
        r = mesh.make("up")
        assert r.returncode == 0, r.stdout + r.stderr
        # 1. every program RUNNING, every node's heartbeat seen
        wait(lambda: all(mesh.status().get(p, ("",))[0] == "RUNNING" for p in PROGRAMS + ("supervisor",)),
             30, "all programs RUNNING")
        seen = []

        def all_up():
            seen[:] = [mesh.ctl("status")]
            return seen[0].returncode == 0 and seen[0]
        try:
            st = wait(all_up, 20, "ctl status: all up")
        except AssertionError:
            raise AssertionError(f"ctl status: {seen[0].stdout}{seen[0].stderr}") from None
        for n in PROGRAMS + ("supervisor",):
            assert re.search(rf"^{n}\s+up\s+RUNNING", st.stdout, re.M), st.stdout
        timings["up"] = time.monotonic() - t_start

        # 2. a paper order through ctl, seen filled in the tap and in metrics
        tap = Tap(mesh, "order.", "fill.", "node.heartbeat.execution")
        tap.wait_for(lambda e: e["topic"] == "node.heartbeat.execution", 10)     # the tap is subscribed
        wait(lambda: (json.loads(mesh.ctl("--json", "query", "risk", "risk").stdout or "{}")
                      .get("data", {}).get("feeds", {}).get("BTC-USD", {}).get("healthy")),
             20, "risk sees a healthy BTC-USD feed from the fake exchange")
        r = mesh.ctl("order", "buy", "BTC-USD", "0.01", "--id", "e2e-order-1")
        assert r.returncode == 0 and "e2e-order-1 FILLED" in r.stdout, r.stdout + r.stderr
        filled = tap.wait_for(lambda e: e["topic"] == "order.filled" and e["body"]["client_order_id"] == "e2e-order-1", 5)
        assert Decimal(filled["body"]["filled_size"]) == Decimal("0.01")

        def filled_by_fills(_ev):       # the paper venue may fill in several pieces (walking the book)
            return sum((Decimal(e["body"]["size"]) for e in tap.seen
                        if e["topic"] == "fill.BTC-USD" and e["body"]["client_order_id"] == "e2e-order-1"),
                       Decimal(0)) == Decimal("0.01")
        tap.wait_for(filled_by_fills, 5)
        wait(lambda: mesh.scrape().get(("tickmesh_orders_total",
                                        frozenset({"status": "FILLED", "product": "BTC-USD"}.items())), 0) >= 1,
             10, "metrics: a filled BTC-USD order")
        wait(lambda: mesh.scrape().get(("tickmesh_position_base", frozenset({"product": "BTC-USD"}.items()))) == 0.01,
             10, "metrics: BTC-USD position 0.01")
        before = {p["product"]: p for p in json.loads(mesh.ctl("--json", "positions").stdout)["data"]}
        assert Decimal(before["BTC-USD"]["qty"]) == Decimal("0.01")
        timings["order"] = time.monotonic() - t_start

        # 3. kill -9 execution: supervisord restarts it, positions intact, the exit is alerted
        old_pid = mesh.status()["execution"][1]
        os.kill(old_pid, signal.SIGKILL)
        wait(lambda: (lambda s: s[0] == "RUNNING" and s[1] not in (None, old_pid))(mesh.status()["execution"]),
             20, "execution restarted by supervisord")
        after = wait(lambda: (lambda r: r.returncode == 0 and json.loads(r.stdout))(mesh.ctl("--json", "positions")),
                     10, "restarted execution answering")
        after = {p["product"]: p for p in after["data"]}
        assert after["BTC-USD"]["qty"] == before["BTC-USD"]["qty"]
        assert after["BTC-USD"]["avg_cost"] == before["BTC-USD"]["avg_cost"]
        sink.wait_for(lambda reqs: any("Process execution exited unexpectedly" in (r.json or {}).get("text", "")
                                       for r in reqs), 10, "process-exit alert at the Slack sink")
        timings["restart"] = time.monotonic() - t_start

        # 4. the kill switch engaged through ctl: its alert at the fake Slack and Teams
        #    (risk may already have engaged it automatically when execution died: release first)
        r = mesh.ctl("killswitch", "release", "--reason", "e2e: execution is back")
        assert r.returncode in (0, 1), r.stderr
        r = mesh.ctl("killswitch", "engage", "--reason", "e2e manual engage")
        assert r.returncode == 0 and "engaged" in r.stdout, r.stdout + r.stderr
        reqs = sink.wait_for(lambda reqs: any("e2e manual engage" in json.dumps(r.json) for r in reqs
                                              if r.path.startswith("/teams/"))
                             and any("e2e manual engage" in json.dumps(r.json) for r in reqs
                                     if r.path.startswith("/slack/")), 10, "kill-switch alert at Slack and Teams")
        slack = [r.json for r in reqs if r.path.startswith("/slack/") and "e2e manual engage" in json.dumps(r.json)][-1]
        teams = [r.json for r in reqs if r.path.startswith("/teams/") and "e2e manual engage" in json.dumps(r.json)][-1]
        assert slack["text"].startswith("[tickmesh] CRITICAL: Kill switch ENGAGED") and slack["blocks"]
        assert teams["@type"] == "MessageCard" and teams["title"] == "tickmesh CRITICAL: Kill switch ENGAGED"
        wait(lambda: mesh.scrape().get(("tickmesh_killswitch_engaged", frozenset())) == 1.0, 10,
             "metrics: kill switch engaged")
        timings["killswitch"] = time.monotonic() - t_start
        assert tap.stop() == 0
        tap = None
    finally:
        if tap is not None:
            tap.stop()
        down = mesh.make("down")
        left = mesh.our_processes()
        if left:                                 # clean up what we started, then fail below
            for pid, _ in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        sink.close()
        fake.stop()
    # 5. `make down` leaves no process behind
    assert down.returncode == 0, down.stdout + down.stderr
    assert left == [], left
    assert not (tmp / "var" / "supervisord.pid").exists()
    timings["down"] = time.monotonic() - t_start
    record_property("timings", timings)
    print("e2e timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
    shutil.rmtree(tmp, ignore_errors=True)
