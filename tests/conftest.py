"""Shared fixtures: isolated meshes on random ports / private ipc dirs, receive-with-timeout helpers.

Nothing here sleeps to synchronise: tests wait on events with deadlines.
"""
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The suite runs on its own configuration only: no developer .env (a COINBASE_WS_URL there made the
# supervisord tests connect elsewhere), no conf/secrets.env, no TICKMESH_/COINBASE_/SLACK_/TEAMS_
# variable from the caller's shell. Set before anything loads a config; subprocesses inherit it.
for _k in [k for k in os.environ if k.startswith(("TICKMESH_", "COINBASE_", "SLACK_", "TEAMS_"))
           or k == "USE_OFFICIAL_SDK"]:
    del os.environ[_k]
os.environ["TICKMESH_DOTENV"] = ""       # nodes.config.dotenv_path: none
os.environ["TICKMESH_SECRETS"] = ""      # nodes.config.secrets_path: none (tests pass their own)

from nodes.config import MeshConfig  # noqa: E402
from tools.netutil import free_base_port, free_port  # noqa: E402,F401


@pytest.fixture
def short_tmp():
    """A short temp dir (ipc paths must stay under ~107 characters)."""
    d = tempfile.mkdtemp(prefix="tm-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def make_mesh(transport: str, tmp: Path, **kw) -> MeshConfig:
    return MeshConfig(transport=transport, base_port=free_base_port(), ipc_dir=str(tmp / "ipc"),
                      state_dir=str(tmp / "state"), heartbeat_s=kw.pop("heartbeat_s", 0.2), **kw)


@pytest.fixture(params=["tcp", "ipc", "inproc"])
def transport(request):
    return request.param


@pytest.fixture
def mesh(transport, short_tmp):
    """A MeshConfig on ``transport`` with private ports, ipc dir and state dir."""
    return make_mesh(transport, short_tmp)


@pytest.fixture
def ctx():
    """One context per test: inproc meshes must share it; everything is closed at the end."""
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


class Collector:
    """A SUB socket on given publishers that waits for matching events with a deadline."""

    def __init__(self, ctx, mesh, publishers, prefixes=("",)):
        import proto
        self._proto = proto
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for p in prefixes:
            self.sock.setsockopt(zmq.SUBSCRIBE, p.encode())
        for n in publishers:
            self.sock.connect(mesh.endpoint(n, "pub"))
        self.events = []

    def wait_for(self, pred, timeout: float = 5.0):
        """Return the first new event with pred(env) true; raise AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s (saw {len(self.events)})")
            if self.sock.poll(int(left * 1000) + 1):
                env = self._proto.decode(self.sock.recv())
                self.events.append(env)
                if pred(env):
                    return env

    def ready(self, *nodes, timeout: float = 5.0):
        """Return once the subscription is live at each of ``nodes``' PUB sockets: subscribe to the
        node's heartbeat (published every ``mesh.heartbeat_s``) and wait for one from it. A PUB drops
        what it publishes before a SUB's subscription has reached it (the slow joiner), so wait here
        before triggering the events a test expects. Subscriptions travel in order on one connection,
        so hearing the heartbeat proves the prefixes given at construction are live there too.

        The heartbeats keep arriving afterwards: ``events`` holds them as well (their topic is
        ``node.heartbeat.<node>``, their body a Heartbeat with no ``client_order_id``)."""
        for node in nodes:
            topic = self._proto.topics.heartbeat(node)
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
            self.wait_for(lambda e, topic=topic, node=node: e.topic == topic and e.source == node, timeout)
        return self

    def close(self):
        self.sock.close(linger=0)


@pytest.fixture
def collector(ctx):
    made = []

    def make(mesh, publishers, prefixes=("",)):
        c = Collector(ctx, mesh, publishers, prefixes)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def wait_until(pred, timeout: float = 5.0, interval: float = 0.005, what: str = "condition"):
    """Poll ``pred`` until true or raise at the deadline (for state with no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
