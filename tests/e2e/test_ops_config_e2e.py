"""A config typo under the repository's supervisord.conf, with a real supervisord.

* ``make up`` checks the config first: one line naming the key, exit 2, supervisord not started.
* supervisord started on the broken file anyway (what a restart after an edit meets): every node
  exits 2 inside ``startsecs`` and ends FATAL after ``startretries`` (no endless restart loop: a
  bounded number of spawns), the event listener stays RUNNING and pages the error (naming the key)
  to the local fake Slack once, though the alerts node died on the same file.
* the harness's environment never reads the checkout's .env (item 18).

Runtime: about 30 s (the FATAL path waits out startretries' backoff).
"""
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nodes import config
from tests.conftest import ROOT
from tests.e2e.harness import BIN, PROGRAMS, SupervisedMesh, wait
from tests.integration.ops_sink import Sink

pytestmark = pytest.mark.e2e

TYPO = "max_order_notionl"


def _toml(m):
    return f"""
[mesh]
transport = "tcp"
base_port = {m.base_port}
state_dir = "{m.tmp}/state"

[marketdata]
source = "synthetic"

[metrics]
port = {m.metrics_port}

[risk]
{TYPO} = "5000"
"""


@pytest.fixture
def broken(request):
    if shutil.which("make") is None or not (BIN / "supervisord").exists():
        pytest.skip("make and supervisord (in the venv) are needed")
    tmp = Path(tempfile.mkdtemp(prefix="tm-cfg-", dir="/tmp"))
    sink = Sink().start()
    mesh = SupervisedMesh(tmp, _toml, SLACK_WEBHOOK_URL=sink.url + "/slack/services/T0/B0/cfg")
    yield mesh, sink
    mesh.make("down")
    sink.close()
    leftover = mesh.our_processes()
    shutil.rmtree(tmp, ignore_errors=True)
    assert leftover == [], leftover


def test_make_up_refuses_a_config_error(broken):
    mesh, sink = broken
    r = mesh.make("up")
    assert r.returncode != 0
    errors = [l for l in r.stderr.splitlines() if l.startswith("tickmesh config:")]
    assert errors == [f"tickmesh config: config error: risk.{TYPO}: unknown key (did you mean max_order_notional?)"], r.stderr
    assert not (mesh.tmp / "var" / "supervisord.pid").exists()
    assert mesh.our_processes() == []


def test_config_error_under_supervisord_ends_fatal_and_pages(broken):
    mesh, sink = broken
    t0 = time.monotonic()
    r = mesh.supervisord()
    assert r.returncode == 0, r.stdout + r.stderr
    # startretries=3: four failed starts each, backoff 1+2+3 s, each start inside startsecs
    states = wait(lambda: (lambda s: s if all(s.get(p, ("",))[0] == "FATAL" for p in PROGRAMS) else None)(mesh.status()),
                  90, "every program FATAL")
    took = time.monotonic() - t0
    assert states["supervisor"][0] == "RUNNING", states
    log = (mesh.tmp / "var" / "log" / "supervisord.log").read_text()
    for p in PROGRAMS:
        spawns = len(re.findall(rf"spawned: '{p}'", log))
        assert spawns == 4, (p, spawns)               # 1 + startretries, then FATAL: no loop
        assert f"success: {p} entered RUNNING" not in log, p
        err = (mesh.tmp / "var" / "log" / f"{p}.err.log").read_text().splitlines()
        assert err and all(l == f"{p}: config error: risk.{TYPO}: unknown key (did you mean max_order_notional?)"
                           for l in err), (p, err[:3])
    # paged once, by the listener, naming the key, though the alerts node never ran
    reqs = sink.wait_for(lambda rs: any("Config error" in (r.json or {}).get("text", "") for r in rs), 15,
                         "the config-error page")
    pages = [r for r in reqs if "Config error" in (r.json or {}).get("text", "")]
    assert len(pages) == 1 and f"risk.{TYPO}: unknown key" in pages[0].json["text"], pages
    assert all("Config error" in (r.json or {}).get("text", "") for r in reqs), reqs   # nothing else
    # still nothing restarts: the state holds
    spawned = len(re.findall("spawned:", (mesh.tmp / "var" / "log" / "supervisord.log").read_text()))
    assert all(mesh.status()[p][0] == "FATAL" for p in PROGRAMS)
    assert len(re.findall("spawned:", (mesh.tmp / "var" / "log" / "supervisord.log").read_text())) == spawned
    print(f"every program FATAL {took:.1f} s after supervisord started")


def test_the_harness_never_reads_the_checkouts_dotenv(tmp_path):
    mesh = SupervisedMesh(tmp_path, _toml)
    assert mesh.env["TICKMESH_DOTENV"] == "" and mesh.env["TICKMESH_SECRETS"] == ""
    assert config.dotenv_path(mesh.env) is None
    good = tmp_path / "ok.toml"
    good.write_text("[marketdata]\nsource = \"synthetic\"\n")
    r = subprocess.run([sys.executable, "-m", "tools.config", "check", "--conf", str(good)], env=mesh.env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "# .env:         not read" in r.stdout and 'ws_url = "wss://advanced-trade-ws.coinbase.com"' in r.stdout
    assert "# secrets file: none" in r.stdout
