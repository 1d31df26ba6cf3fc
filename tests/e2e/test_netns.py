"""The mesh across two hosts, with CURVE: two network namespaces joined by a veth pair stand in for
two machines.

    namespace A (10.231.47.1)                 namespace B (10.231.47.2)
    marketdata (synthetic source), risk       execution, store, metrics, the test's client

Every node is ``ip netns exec NS python -m nodes.X`` with one TICKMESH_CONF whose ``mesh.hosts``
gives each node its namespace's address and ``curve = true`` with keys from
``nodes.security.generate``. Orders submitted in B (execution) are checked by risk in A over the
veth, filled by the paper venue on market data from A, and stored in B (with the market data and
risk decisions that crossed the link). A host without keys -- a client in A whose key pair is not
in ``public/``, and one with no CURVE at all -- gets no event and no reply, while a known key on the
same host does. Needs root and ``ip`` (CI runs as root); skipped otherwise. Everything it creates
(namespaces, the veth pair, processes) is removed in a ``finally``.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest
import zmq

from nodes import security
from nodes.config import NODES
from nodes.execution.journal import read_records, rebuild
from proto import jsonl
from tests.conftest import ROOT, free_base_port

pytestmark = pytest.mark.e2e

PY = sys.executable
SUBNET = "10.231.47"          # a private /24 used only inside the two namespaces
ADDR = {"A": f"{SUBNET}.1", "B": f"{SUBNET}.2"}
PLACES = {"marketdata": "A", "risk": "A", "execution": "B", "store": "B", "metrics": "B"}


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


class Namespaces:
    """Two namespaces and a veth pair between them; ``close()`` kills what runs in them and deletes
    them (the veth pair goes with them)."""

    def __init__(self):
        tag = os.getpid() % 10_000_000
        self.ns = {"A": f"tmA{tag}", "B": f"tmB{tag}"}
        self.veth = {"A": f"tmv{tag}a", "B": f"tmv{tag}b"}
        self.made = []

    def create(self):
        for side in "AB":                       # left over by a killed run that had our pid
            _ip("netns", "del", self.ns[side], check=False)
        for side in "AB":
            _ip("netns", "add", self.ns[side])
            self.made.append(self.ns[side])
        _ip("link", "add", self.veth["A"], "type", "veth", "peer", "name", self.veth["B"])
        for side in "AB":
            ns, dev = self.ns[side], self.veth[side]
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ADDR[side]}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def pids(self, side) -> list:
        r = _ip("netns", "pids", self.ns[side], check=False)
        return [int(x) for x in r.stdout.split()]

    def close(self) -> list:
        """Kill anything still running in the namespaces, delete them; returns the pids killed."""
        killed = []
        for ns in self.made:
            side = "A" if ns == self.ns["A"] else "B"
            for pid in self.pids(side):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except OSError:
                    pass
        for ns in self.made:
            _ip("netns", "del", ns, check=False)
        r = _ip("link", "show", check=False).stdout
        if self.veth["A"] in r:                    # never left in the root namespace
            _ip("link", "del", self.veth["A"], check=False)
        return killed


def _skip_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if not zmq.has("curve"):
        return "libzmq without CURVE"
    return None


def _conf(tmp: Path, keys: Path) -> Path:
    hosts = ", ".join(f'{n} = "{ADDR[s]}"' for n, s in PLACES.items())
    p = tmp / "mesh.toml"
    p.write_text(f"""
[mesh]
transport = "tcp"
hosts = {{ {hosts} }}
base_port = {free_base_port()}
state_dir = "{tmp}/state"
heartbeat_s = 0.25
curve = true
keys_dir = "{keys}"
products = ["BTC-USD", "ETH-USD"]

[marketdata]
source = "synthetic"
synthetic_rate_hz = 20.0

[metrics]
port = 0

[store]
flush_interval_s = 0.05
""")
    return p


def test_two_hosts_with_curve():
    why = _skip_reason()
    if why:
        pytest.skip(why)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tm-netns-", dir="/tmp"))
    keys = tmp / "keys"
    security.generate(keys, list(NODES) + list(security.TOOLS))
    security.generate(tmp / "stranger", ["tests"])          # a valid pair the mesh does not know
    conf = _conf(tmp, keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKMESH_", "COINBASE_", "SLACK_", "TEAMS_"))}
    env.update(TICKMESH_CONF=str(conf), PYTHONUNBUFFERED="1")
    net = Namespaces()
    procs = {}
    logs = {}
    killed = []
    try:
        try:
            net.create()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot create network namespaces here: {e.stderr.strip()}")

        def run_in(side, args, name):
            logs[name] = tmp / f"{name}.log"
            with open(logs[name], "w") as f:
                return subprocess.Popen(["ip", "netns", "exec", net.ns[side], PY, *args], cwd=ROOT, env=env,
                                        stdout=f, stderr=subprocess.STDOUT)

        for node, side in PLACES.items():
            procs[node] = run_in(side, ["-m", f"nodes.{node}"], node)
        # orders from a client on host B: execution (B) -> risk (A) over the veth, fills from A's prices
        cl = run_in("B", ["-m", "tests.e2e.netns_client", "client"], "client")
        cl.wait(60)
        out = _last_json(logs["client"])
        assert cl.returncode == 0 and "error" not in out, (out, _tails(logs))
        buy, sell = out["orders"]
        assert buy["status"] == sell["status"] == "FILLED"
        assert Decimal(buy["filled_size"]) == Decimal(sell["filled_size"]) == Decimal("0.001")
        assert all(n in ("FEED_STALE", "NO_MARKET_DATA", "RISK_UNAVAILABLE", "TIMEOUT", "FEED_GAP")
                   for _, n, _ in out["refusals"]), out["refusals"]
        t_orders = time.monotonic() - t0

        # a host without keys gets nothing; a known key on that same host does
        intr = run_in("A", ["-m", "tests.e2e.netns_client", "intruder",
                            str(tmp / "stranger" / "private" / "tests.key_secret")], "intruder")
        intr.wait(60)
        seen = _last_json(logs["intruder"])
        assert intr.returncode == 0, _tails(logs)
        assert min(seen["control_by_node"].values()) >= 5, seen       # events flowed meanwhile
        assert seen["intruder"] == 0 and seen["plain"] == 0, seen
        assert seen["requests"] == {"intruder-execution": "timeout", "plain-execution": "timeout",
                                    "intruder-risk": "timeout", "plain-risk": "timeout",
                                    "known-execution": "pong"}, seen

        # every node still running; SIGTERM stops each within a second or two
        for name, p in procs.items():
            assert p.poll() is None, f"{name} exited early: {_tail(logs[name])}"
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            assert p.wait(5) == 0, f"{name}: {_tail(logs[name])}"
        t_total = time.monotonic() - t0

        # the store (host B) has the orders, the fills, and what crossed the link from host A
        files = sorted((tmp / "state" / "store").glob("*.jsonl"))
        events = [e for f in files for e in jsonl.read(f)]
        ids = {buy["client_order_id"], sell["client_order_id"]}
        filled = {e.msg.client_order_id for e in events if e.topic == "order.filled"}
        assert ids <= filled
        fills = [e.msg for e in events if e.type == "Fill" and e.msg.client_order_id in ids]
        assert sum(f.size for f in fills if f.side == "BUY") == sum(f.size for f in fills if f.side == "SELL") \
            == Decimal("0.001")
        assert any(e.source == "marketdata" and e.topic.startswith("md.tick.") for e in events)
        approved = {e.msg.client_order_id for e in events if e.topic == "risk.decision" and e.msg.approved}
        assert ids <= approved                           # risk's decisions, published in A, stored in B
        # the journal agrees, and nothing else was ever sent
        rb = rebuild(read_records(tmp / "state" / "execution" / "paper.journal"))
        assert {c for c, o in rb.orders.items() if o.sent} == ids
        assert all(rb.orders[c].status == "FILLED" for c in ids)
        print(f"netns: orders filled after {t_orders:.1f} s, all stopped after {t_total:.1f} s")
    finally:
        for p in list(procs.values()):
            if p.poll() is None:
                p.kill()
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        killed = net.close()
        leftover = [ns for ns in net.made if ns in _ip("netns", "list", check=False).stdout]
        shutil.rmtree(tmp, ignore_errors=True)
    assert not killed, f"processes were still running in the namespaces: {killed}"
    assert not leftover, leftover


def _last_json(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    assert lines, path.read_text()[-3000:]
    return json.loads(lines[-1])


def _tail(path: Path, n=15) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return ""


def _tails(logs) -> str:
    return "\n".join(f"--- {k}\n{_tail(v)}" for k, v in logs.items())
