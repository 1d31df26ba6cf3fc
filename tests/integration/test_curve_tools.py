"""The operator tools on a CURVE mesh (``[mesh] curve = true``), as real processes against a real
node: ``tickmesh tap`` and ``tickmesh ctl`` use their own key pairs ("tap", "ctl") and see / reach
the mesh; without their private key on this host they stop with one line naming the missing file;
with a key pair the mesh does not know they get nothing (the tap sees no event, ctl no answer)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import zmq

from nodes import security
from nodes.config import NODES
from nodes.runtime import Node
from tests.conftest import make_mesh

TICKMESH = Path(sys.executable).parent / "tickmesh"


class Risk(Node):
    name = "risk"


def _conf(tmp: Path, mesh, keys: Path) -> Path:
    p = tmp / f"{keys.name}.toml"
    p.write_text(f'[mesh]\ntransport = "tcp"\nbase_port = {mesh.base_port}\nheartbeat_s = 0.2\n'
                 f'curve = true\nkeys_dir = "{keys}"\nrequest_timeout_ms = 1500\n')
    return p


def _run(conf, *args, timeout=20):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKMESH_")}
    env["TICKMESH_CONF"] = str(conf)
    return subprocess.run([str(TICKMESH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_tap_and_ctl_on_a_curve_mesh(short_tmp):
    if not zmq.has("curve"):
        import pytest
        pytest.skip("libzmq without CURVE")
    keys = short_tmp / "keys"
    security.generate(keys, list(NODES) + list(security.TOOLS))
    # this host without the tools' private keys
    nokeys = short_tmp / "nokeys"
    shutil.copytree(keys / "public", nokeys / "public")
    (nokeys / "private").mkdir(mode=0o700)
    # a host whose tool keys the mesh never heard of (valid pairs, not in the mesh's public/)
    stranger = short_tmp / "stranger"
    security.generate(stranger, ["tap", "ctl"])
    shutil.rmtree(stranger / "public")
    shutil.copytree(keys / "public", stranger / "public")
    mesh = make_mesh("tcp", short_tmp, curve=True, keys_dir=str(keys))
    node = Risk(mesh).start()
    try:
        good, missing, unknown = (_conf(short_tmp, mesh, k) for k in (keys, nokeys, stranger))
        r = _run(good, "tap", "--json", "--node", "risk", "--count", "2", "--duration", "10")
        assert r.returncode == 0, r.stderr
        assert [line.count('"source":"risk"') for line in r.stdout.splitlines()] == [1, 1], r.stdout
        r = _run(good, "ctl", "query", "risk", "ping", "through-curve")
        assert r.returncode == 0 and r.stdout.strip() == "through-curve", r

        r = _run(missing, "tap", "--count", "1", "--duration", "2")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"tickmesh tap: mesh.curve: no key pair for 'tap' at {nokeys}/private/tap.key_secret "
            "(run: tickmesh keys generate)"], r.stderr
        r = _run(missing, "ctl", "query", "risk", "ping", "x")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"tickmesh ctl: config error: mesh.curve: no key pair for 'ctl' at {nokeys}/private/ctl.key_secret "
            "(run: tickmesh keys generate)"], r.stderr

        r = _run(unknown, "tap", "--json", "--count", "1", "--duration", "1.5")
        assert r.returncode == 1 and r.stdout == "" and "saw 0 of 1 events" in r.stderr, r
        r = _run(unknown, "ctl", "--timeout", "800", "query", "risk", "ping", "x")
        assert r.returncode == 3 and "did not answer" in r.stderr, r
        assert node.alive
    finally:
        node.stop()
