"""Offline mode's cpu placement: every node is a thread of one process sharing one GIL, so by
default the process is confined to one cpu (docs/performance.md: cross-cpu GIL hand-offs made a
replay 2.4x slower on 2 vCPUs); ``mesh.cpu_affinity.offline`` or ``--cpus`` choose otherwise, and
the caller's own placement is restored when ``main`` returns."""
import os
import threading

import pytest

from nodes import config, offline


def _run_and_watch(monkeypatch, tmp_path, argv, conf_text=""):
    """Run ``offline.main`` in this process; return (rc, the affinity of every node thread)."""
    conf = tmp_path / "mesh.toml"
    conf.write_text(conf_text)
    seen = {}
    real_run = offline._run

    def watching_run(args, cfg, cpus, why):
        from nodes.runtime import Node
        real_start = Node.start

        def start(self, *a, **kw):
            out = real_start(self, *a, **kw)
            seen[self.instance] = _loop_affinity(self)
            return out
        monkeypatch.setattr(Node, "start", start)
        return real_run(args, cfg, cpus, why)

    monkeypatch.setattr(offline, "_run", watching_run)
    rc = offline.main(["--conf", str(conf), "--duration", "0.3", "--quiet", "--rate", "20",
                       "--state-dir", str(tmp_path / "state")] + argv)
    return rc, seen


def _loop_affinity(node):
    """The cpus of the node's loop thread, read in that thread."""
    got, done = [], threading.Event()
    node.call_soon(lambda: (got.append(os.sched_getaffinity(0)), done.set()))
    assert done.wait(10), f"{node.instance}: loop did not run the call"
    return got[0]


def test_default_is_one_cpu_for_every_node_thread_and_the_caller_is_restored(monkeypatch, tmp_path, capsys):
    before = os.sched_getaffinity(0)
    rc, seen = _run_and_watch(monkeypatch, tmp_path, [])
    assert rc == 0
    one = {max(before)}
    assert set(seen) >= {"offline", "store", "risk", "execution", "strategy", "marketdata"}
    assert all(cpus == one for cpus in seen.values()), seen
    assert os.sched_getaffinity(0) == before
    out = capsys.readouterr().out
    assert f"cpus {max(before)} (default: one cpu for one GIL, --cpus all to lift)" in out


def test_cpus_all_leaves_the_placement_alone(monkeypatch, tmp_path, capsys):
    before = os.sched_getaffinity(0)
    rc, seen = _run_and_watch(monkeypatch, tmp_path, ["--cpus", "all"])
    assert rc == 0
    assert seen and all(cpus == before for cpus in seen.values()), seen
    assert "cpus any (--cpus all)" in capsys.readouterr().out


def test_mesh_cpu_affinity_offline_is_used(monkeypatch, tmp_path):
    before = os.sched_getaffinity(0)
    first = min(before)
    rc, seen = _run_and_watch(monkeypatch, tmp_path, [], f"[mesh]\ncpu_affinity = {{ offline = [{first}] }}\n")
    assert rc == 0
    assert seen and all(cpus == {first} for cpus in seen.values()), seen
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize("arg,match", [
    ("x", "--cpus: expected all or cpu numbers such as 1 or 0,1, got 'x'"),
    ("-1", "--cpus: expected all or cpu numbers"),
    ("4096", "--cpus: cannot pin to cpus [4096]"),
])
def test_bad_cpus_stop_offline_at_start_naming_the_option(tmp_path, capsys, arg, match):
    before = os.sched_getaffinity(0)
    conf = tmp_path / "mesh.toml"
    conf.write_text("")
    rc = offline.main(["--conf", str(conf), "--duration", "0.1", "--quiet", "--cpus", arg,
                       "--state-dir", str(tmp_path / "state")])
    assert rc == 2
    assert f"offline: config error: {match}" in capsys.readouterr().err
    assert os.sched_getaffinity(0) == before


def test_offline_cpus_precedence(tmp_path):
    conf = tmp_path / "mesh.toml"
    conf.write_text("[mesh]\ncpu_affinity = { offline = [0] }\n")
    cfg = config.load(conf, env={}, read_dotenv=False)
    assert offline.offline_cpus(cfg, "0,1") == ({0, 1}, "--cpus")
    assert offline.offline_cpus(cfg, None) == ({0}, "mesh.cpu_affinity.offline")
    conf.write_text("")
    cfg = config.load(conf, env={}, read_dotenv=False)
    cpus, why = offline.offline_cpus(cfg, None)
    assert cpus == {max(os.sched_getaffinity(0))} and why.startswith("default")
