"""Every entry point, given a config error, prints one line naming the key and exits 2: each node's
``python -m nodes.NAME``, supervisord's ``tools.config start``, offline mode, ``config check``,
``ctl`` and ``tap``. Real processes, started together (about 10 s on two cores)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NODES = ("marketdata", "risk", "execution", "store", "strategy", "metrics", "alerts")
TYPO = ("[risk]\nmax_order_notionl = '5'\n",
        "risk.max_order_notionl: unknown key (did you mean max_order_notional?)")
PARAM = ('[strategy.params.sma]\nfast = "five"\n',
         "strategy.params.sma.fast: expected an integer, got str 'five'")


def _run_all(cmds: dict) -> dict:
    procs = {k: subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, text=True) for k, argv in cmds.items()}
    out = {}
    try:
        for k, p in procs.items():
            o, e = p.communicate(timeout=120)
            out[k] = (p.returncode, o, e)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return out


@pytest.mark.parametrize("case", [TYPO, PARAM], ids=["typo", "plugin-param"])
def test_every_entry_point_one_line_exit_2(tmp_path, case):
    text, message = case
    conf = tmp_path / "mesh.toml"
    conf.write_text(text)
    c = str(conf)
    cmds = {"offline": ["-m", "nodes.offline", "--conf", c, "--duration", "1"],
            "config check": ["-m", "tools.cli", "config", "check", "--conf", c],
            "strategy": ["-m", "nodes.strategy", "--conf", c]}
    if case is TYPO:        # a plugin's parameters are the strategy's own: only it (and the checks) see them
        cmds.update({f"node {n}": ["-m", f"nodes.{n}", "--conf", c] for n in NODES if n != "strategy"})
        cmds.update({f"start {n}": ["-m", "tools.config", "start", n, "--conf", c] for n in ("risk", "alerts")})
        cmds.update({"ctl": ["-m", "tools.ctl", "--conf", c, "status"],
                     "tap": ["-m", "tools.tap", "--conf", c, "--count", "1"]})
    results = _run_all(cmds)
    for name, (rc, out, err) in results.items():
        lines = err.strip().splitlines()
        assert rc == 2, (name, rc, err[-2000:])
        assert len(lines) == 1 and lines[0].endswith(message), (name, err[-2000:])
        assert "Traceback" not in err and out.strip() == "", (name, out[-500:])


def test_supervisords_start_command_logs_the_sources_then_runs_the_node(tmp_path):
    import signal

    from tests.conftest import free_base_port
    conf = tmp_path / "mesh.toml"
    conf.write_text(f"[mesh]\nbase_port = {free_base_port()}\nstate_dir = \"{tmp_path}/state\"\n")
    (tmp_path / "secrets.env").write_text("SLACK_WEBHOOK_URL=http://127.0.0.1:9/never-used-secret\n")
    env = dict(__import__("os").environ)
    del env["TICKMESH_SECRETS"]                       # the lookup beside the config file
    p = subprocess.Popen([sys.executable, "-m", "tools.config", "start", "store", "--conf", str(conf)], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()
        running = ""
        while "state STARTING -> RUNNING" not in running:
            running = p.stdout.readline()
            assert running, p.stderr.read()
        pid_line = running
    finally:
        p.send_signal(signal.SIGTERM)
        rest, err = p.communicate(timeout=10)
    assert f"INFO store: config {conf}; .env not read; secrets {tmp_path / 'secrets.env'}; " \
           "secrets set: SLACK_WEBHOOK_URL;" in first, first
    assert "never-used-secret" not in first + pid_line + rest + err
    assert p.returncode == 0, err
