"""``tickmesh top`` in a real terminal (tmux: send-keys, capture-pane) against a mesh under
supervisord fed by the fake exchange. One mesh for the three checks, in this order: the screen
after an order fills (and ``--once``/``--json`` beside it), after ``k`` engages the kill switch
(reason and confirmation typed in), and after a node is stopped (its row says down while the others
keep updating: an order refused after that appears on the screen). Then ``q`` quits.

Every wait polls capture-pane (or supervisorctl) against a deadline; a failure prints the last
screen and top's stderr.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.harness import BIN, PROGRAMS, SupervisedMesh, wait

pytestmark = pytest.mark.e2e
NODES = PROGRAMS + ("supervisor",)


class Tmux:
    """A private tmux server (its own socket) running one command in a WIDTHxHEIGHT pane."""

    def __init__(self, tmp: Path, env: dict):
        self.sock = str(tmp / "tmux.sock")
        self.env = dict(env, LANG="C.UTF-8", LC_ALL="C.UTF-8")
        self.err = tmp / "top.err"

    def tmux(self, *args, check=True):
        r = subprocess.run(["tmux", "-u", "-f", "/dev/null", "-S", self.sock, *args], env=self.env,
                           capture_output=True, text=True, timeout=10)
        if check and r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {r.returncode} {r.stderr}")
        return r

    def start(self, command: str, width=160, height=50):
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                  f"cd {ROOT} && exec {command} 2>{self.err}")

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "top", *keys)

    def type(self, text: str):
        self.tmux("send-keys", "-t", "top", "-l", text)

    def screen(self) -> str:
        r = self.tmux("capture-pane", "-p", "-t", "top", check=False)
        return r.stdout if r.returncode == 0 else f"(no pane: {r.stderr.strip()})"

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top", check=False).returncode == 0

    def wait_screen(self, pred, timeout, what) -> str:
        last = [""]

        def check():
            last[0] = self.screen()
            return pred(last[0]) and last[0]
        try:
            return wait(check, timeout, what, interval=0.2)
        except AssertionError:
            err = self.err.read_text() if self.err.exists() else ""
            raise AssertionError(f"{what}: not on the screen within {timeout} s\n{last[0]}\n--- top stderr:\n{err}") \
                from None

    def close(self):
        self.tmux("kill-server", check=False)


def row(screen: str, pattern: str) -> bool:
    return re.search(pattern, screen, re.M) is not None


def every_node_up(screen: str, but=()) -> bool:
    return all(row(screen, rf"^{n}\s+up\s+RUNNING") for n in NODES if n not in but)


def test_top_in_a_terminal(record_property):
    if shutil.which("make") is None or not (BIN / "supervisord").exists():
        pytest.skip("make and supervisord (in the venv) are needed")
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed (.ci/run installs it)")
        pytest.skip("tmux is needed (apt-get install tmux)")
    from tools.fakecoinbase import FakeCoinbaseWS
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tm-top-", dir="/tmp"))
    fake = FakeCoinbaseWS("127.0.0.1", 0, rate_hz=20.0).start()
    mesh = SupervisedMesh(tmp, lambda m: f"""
[mesh]
transport = "tcp"
base_port = {m.base_port}
state_dir = "{m.tmp}/state"
heartbeat_s = 0.5
request_timeout_ms = 3000
products = ["BTC-USD", "ETH-USD"]

[marketdata]
source = "coinbase"
ws_url = "{fake.url}"

[strategy]
plugins = ["sma"]
products = ["ETH-USD"]

[metrics]
port = {m.metrics_port}
""")

    def ctl(*args):
        return subprocess.run([sys.executable, "-m", "tools.ctl", *args], env=mesh.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=20)

    def top(*args):
        return subprocess.run([sys.executable, "-m", "tools.top", *args], env=mesh.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)

    term = Tmux(tmp, mesh.env)
    timings = {}
    try:
        r = mesh.make("up")
        assert r.returncode == 0, r.stdout + r.stderr
        wait(lambda: all(mesh.status().get(p, ("",))[0] == "RUNNING" for p in NODES), 30, "all programs RUNNING")
        term.start(f"{sys.executable} -m tools.top")
        term.wait_screen(lambda s: every_node_up(s) and "TRADING ACTIVE · kill switch released" in s
                         and row(s, r"^BTC-USD\s+OK\s"), 30, "every node up, trading active, BTC-USD feed OK")
        timings["up"] = time.monotonic() - t_start

        # 1. an order fills: its events, the position and the PnL on the screen
        wait(lambda: (json.loads(ctl("--json", "query", "risk", "risk").stdout or "{}")
                      .get("data", {}).get("feeds", {}).get("BTC-USD", {}).get("healthy")),
             20, "risk sees a healthy BTC-USD feed from the fake exchange")
        r = ctl("order", "buy", "BTC-USD", "0.01", "--id", "e2e-top-1")
        assert r.returncode == 0 and "e2e-top-1 FILLED" in r.stdout, \
            f"the order did not fill (the order path is being redesigned: report it): {r.stdout}{r.stderr}"
        s = term.wait_screen(lambda s: row(s, r"\se2e-top-1\s+FILLED\s+BTC-USD\s+BUY 0\.01 filled 0\.01 @ \d")
                             and row(s, r"\sBTC-USD\s+0\.01\s+\d+\.\d\d\s+\d+\.\d\d\s+-?\d+\.\d\d")
                             and row(s, r"PnL: realized -?\d+\.\d\d · unrealized -?\d+\.\d\d · daily -?\d+\.\d\d "
                                        r"· equity \d+\.\d\d"),
                             15, "the fill, the BTC-USD position and the PnL")
        assert row(s, r"\se2e-top-1\s+NEW\s+BTC-USD"), s
        timings["fill"] = time.monotonic() - t_start

        # --json and --once: the same state for scripts
        r = top("--json")
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert {n["node"]: n["up"] for n in snap["nodes"]} == {n: True for n in NODES}, snap["nodes"]
        pos = {p["product"]: p for p in snap["positions"]}
        assert Decimal(pos["BTC-USD"]["size"]) == Decimal("0.01") and snap["killswitch"]["engaged"] is False
        assert snap["trading"]["state"] == "ACTIVE" and snap["pnl"]["equity"] is not None
        r = top("--once", "--width", "100")
        assert r.returncode == 0, r.stderr
        assert "TRADING ACTIVE · kill switch released" in r.stdout.splitlines()[1], r.stdout
        assert max(len(ln) for ln in r.stdout.splitlines()) <= 100
        assert row(r.stdout, r"^BTC-USD\s+0\.01\s"), r.stdout
        timings["once"] = time.monotonic() - t_start

        # 2. k: reason, confirmation; the banner says so, risk agrees, the alert shows
        term.keys("k")
        term.wait_screen(lambda s: "ENGAGE the kill switch: reason" in s, 5, "the reason prompt")
        term.type("e2e drill")
        term.keys("Enter")
        term.wait_screen(lambda s: "ENGAGE the kill switch with reason 'e2e drill'? [y/N]" in s, 5, "the confirmation")
        term.keys("y")
        s = term.wait_screen(lambda s: "KILL SWITCH ENGAGED · trading HALTED" in s
                             and "manual: e2e drill (tickmesh top)" in s, 10, "the kill switch engaged")
        assert "kill switch engage done" in s, s
        r = ctl("--json", "killswitch", "status")
        ks = json.loads(r.stdout)["data"]
        assert ks["engaged"] is True and ks["reason"] == "e2e drill (tickmesh top)" and ks["source"] == "manual"
        term.wait_screen(lambda s: row(s, r"critical\s+Kill switch ENGAGED"), 10, "the kill-switch alert")
        timings["killswitch"] = time.monotonic() - t_start

        # 3. a node stopped: its row says so; the rest keeps updating (a refusal after it shows up)
        r = mesh.supervisorctl("stop", "tickmesh:store")
        assert r.returncode == 0, r.stdout + r.stderr
        term.wait_screen(lambda s: row(s, r"^store\s+DOWN \((stopped|supervisord: STOPPED)\)")
                         and every_node_up(s, but=("store",)), 10, "store down, every other node up")
        r = ctl("order", "buy", "BTC-USD", "0.01", "--id", "e2e-top-2")
        assert r.returncode == 1 and "KILL_SWITCH" in r.stdout + r.stderr, r.stdout + r.stderr
        s = term.wait_screen(lambda s: row(s, r"\se2e-top-2\s+\S+\s+BTC-USD\s.*KILL_SWITCH"), 10,
                             "the refused order, while store is down")
        assert row(s, r"^store\s+DOWN"), s
        hb = {}                   # NODE UP STATE PID UPTIME RESTARTS HB-AGE COUNTERS
        for line in s.splitlines():
            cells = re.split(r"\s{2,}", line.strip())
            if len(cells) >= 7 and cells[0] in NODES and cells[1] == "up":
                hb[cells[0]] = float(cells[6].rstrip("s"))
        assert set(hb) == set(NODES) - {"store"} and max(hb.values()) < 3.0, hb    # heartbeats still arriving
        timings["node_down"] = time.monotonic() - t_start

        term.keys("q")
        wait(lambda: not term.alive(), 5, "top quits on q")
        assert term.err.read_text() == ""
    finally:
        term.close()
        down = mesh.make("down")
        left = [(pid, cmd) for pid, cmd in mesh.our_processes() if "tools.top" not in cmd]
        for pid, _ in mesh.our_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        fake.stop()
    assert down.returncode == 0, down.stdout + down.stderr
    assert left == [], left
    timings["down"] = time.monotonic() - t_start
    record_property("timings", timings)
    print("top e2e timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
    shutil.rmtree(tmp, ignore_errors=True)
