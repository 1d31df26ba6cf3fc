"""What the supervisord end-to-end tests share: the repository's supervisord.conf run on a private
mesh.toml (``make up`` / ``supervisorctl`` with ``SUPERVISOR_CONF``), its status table, the metrics
endpoint scraped and parsed, and the processes the run started (found by their environment)."""
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nodes.config import MeshConfig
from nodes.registry import SUPERVISED as PROGRAMS  # noqa: F401  (supervisord's programs, in start order)
from tests.conftest import ROOT, free_base_port, free_port

PY = sys.executable
BIN = Path(sys.executable).parent


def wait(pred, timeout, what, interval=0.1):
    """Poll state that has no event to wait on (supervisorctl, HTTP, files, process tables)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r:.300})")


class SupervisedMesh:
    """supervisord.conf copied to ``tmp``, a mesh.toml there from ``toml(self)`` (which may use
    ``self.tmp``, ``self.base_port`` and ``self.metrics_port``), and the environment every command
    of the test runs with: no TICKMESH_/SLACK_/TEAMS_/COINBASE_ variable leaking in from the
    caller, TICKMESH_CONF at the private config, plus ``env``."""

    def __init__(self, tmp: Path, toml, **env):
        self.tmp = tmp
        self.conf = tmp / "supervisord.conf"
        shutil.copy(ROOT / "supervisord.conf", self.conf)
        self.base_port = free_base_port()
        # the mesh's own ports are not bound yet, so free_port() alone may pick one of them (seen:
        # metrics.port 15027 inside base_port 15020's range: the metrics node could never bind)
        mesh_ports = MeshConfig(transport="tcp", base_port=self.base_port).tcp_ports()
        self.metrics_port = free_port()
        while self.metrics_port in mesh_ports:
            self.metrics_port = free_port()
        (tmp / "mesh.toml").write_text(toml(self))
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("TICKMESH_", "SLACK_", "TEAMS_", "COINBASE_")) and k != "USE_OFFICIAL_SDK"}
        # alerts reach the test's local fake Slack/Teams only, never a real channel (alerts.mode);
        # the checkout's .env and conf/secrets.env are never read (a COINBASE_WS_URL in .env used to
        # send every node of the test to another exchange): only this environment counts
        e.update(TICKMESH_CONF=str(tmp / "mesh.toml"), TICKMESH_PYTHON=PY, TICKMESH_ALERTS__MODE="local",
                 TICKMESH_DOTENV="", TICKMESH_SECRETS="")
        e.update(env)
        self.env = e

    def make(self, target):
        return subprocess.run(["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", target,
                               f"SUPERVISOR_CONF={self.conf}"], env=self.env, capture_output=True, text=True,
                              timeout=60)

    def supervisord(self):
        """supervisord started directly, as `make up` does but without its config check (what a
        restart after someone edited the file meets)."""
        (self.tmp / "var" / "log").mkdir(parents=True, exist_ok=True)
        return subprocess.run([str(BIN / "supervisord"), "-c", str(self.conf)], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)

    def supervisorctl(self, *args, timeout=30):
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        """program -> (state, pid or None), from ``supervisorctl status``."""
        rows = {}
        for line in self.supervisorctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                m = re.search(r"pid (\d+)", line)
                rows[parts[0].split(":")[-1]] = (parts[1], int(m.group(1)) if m else None)
        return rows

    def scrape(self) -> dict:
        """(metric name, frozenset of labels) -> value, from the metrics node's endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def our_processes(self) -> list:
        """Live processes started for this test (their environment names our mesh.toml)."""
        marker = f"TICKMESH_CONF={self.tmp}/mesh.toml".encode()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if marker not in f.read().split(b"\0"):
                        continue
                with open(f"/proc/{d}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue                 # a zombie is not running
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                if "tools.ctl" in cmd or "tools.tap" in cmd or "make" in cmd.split(" ")[0]:
                    continue                     # the test's own tool invocations are not the mesh
                found.append((int(d), cmd.strip()))
            except OSError:
                continue
        return found
