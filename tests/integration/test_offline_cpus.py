"""Offline mode's cpu placement: the engine is one thread (plus the store's writer), so by default
the process is confined to one cpu; the synthetic market's helper process moves to the others.
``mesh.cpu_affinity.offline`` or ``--cpus`` choose otherwise, and the caller's own placement is
restored when ``main`` returns. Every node runs in the engine's thread (no loop thread of its own)."""
import os
import threading

import pytest

from nodes import config, engine, offline


def _run_and_watch(monkeypatch, tmp_path, argv, conf_text=""):
    """Run ``offline.main`` in this process; return (rc, {node: the cpus of the thread running it},
    the cpus of the synthetic market's helper process)."""
    conf = tmp_path / "mesh.toml"
    conf.write_text(conf_text)
    seen, helper = {}, []
    real_feed = engine.Engine.feed

    def feed(self, node, ts, batch):
        if not seen:
            for n in self.nodes:         # read in the thread that drives every node
                seen[n.instance] = (threading.get_ident(), os.sched_getaffinity(0))
        return real_feed(self, node, ts, batch)
    monkeypatch.setattr(engine.Engine, "feed", feed)
    from nodes.marketdata import synthetic
    real_init = synthetic.Prefetch.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        helper.append(self._proc.pid)
    monkeypatch.setattr(synthetic.Prefetch, "__init__", init)
    real_iter = synthetic.Prefetch.__iter__

    def it(self):
        for i, item in enumerate(real_iter(self)):
            if i == 1:
                helper.append(os.sched_getaffinity(helper[0]))
            yield item
    monkeypatch.setattr(synthetic.Prefetch, "__iter__", it)
    rc = offline.main(["--conf", str(conf), "--market-hours", "0.05", "--quiet", "--no-report",
                       "--state-dir", str(tmp_path / "state")] + argv)
    return rc, seen, helper[1] if len(helper) > 1 else None


def test_default_is_one_cpu_for_the_engine_and_the_caller_is_restored(monkeypatch, tmp_path, capsys):
    before = os.sched_getaffinity(0)
    rc, seen, helper = _run_and_watch(monkeypatch, tmp_path, [])
    assert rc == 0
    one = {max(before)}
    assert set(seen) >= {"offline", "store", "risk", "execution", "strategy", "marketdata"}
    assert {tid for tid, _ in seen.values()} == {threading.get_ident()}      # one thread drives them all
    assert all(cpus == one for _, cpus in seen.values()), seen
    if len(before) > 1:
        assert helper == before - one           # the market is simulated on the other cpus
    assert os.sched_getaffinity(0) == before
    out = capsys.readouterr().out
    assert f"cpus {max(before)} (default: one cpu, --cpus all to lift)" in out


def test_cpus_all_leaves_the_placement_alone(monkeypatch, tmp_path, capsys):
    before = os.sched_getaffinity(0)
    rc, seen, _ = _run_and_watch(monkeypatch, tmp_path, ["--cpus", "all"])
    assert rc == 0
    assert seen and all(cpus == before for _, cpus in seen.values()), seen
    assert "cpus any (--cpus all)" in capsys.readouterr().out


def test_mesh_cpu_affinity_offline_is_used(monkeypatch, tmp_path):
    before = os.sched_getaffinity(0)
    first = min(before)
    rc, seen, _ = _run_and_watch(monkeypatch, tmp_path, [], f"[mesh]\ncpu_affinity = {{ offline = [{first}] }}\n")
    assert rc == 0
    assert seen and all(cpus == {first} for _, cpus in seen.values()), seen
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
    rc = offline.main(["--conf", str(conf), "--market-hours", "0.05", "--quiet", "--cpus", arg,
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
