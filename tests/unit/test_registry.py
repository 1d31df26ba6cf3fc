"""The one registry of the mesh's parts (nodes/registry.py): config, offline mode and supervisord
all follow it. ``supervisord.conf`` is held to it here: its programs, their order, their commands."""
import configparser
import importlib

from nodes import config, registry
from nodes.offline import available_nodes
from nodes.runtime import Node
from tests.conftest import ROOT


def _supervisord():
    cp = configparser.RawConfigParser(strict=False)
    cp.read(ROOT / "supervisord.conf")
    return cp


def test_supervisord_conf_runs_exactly_the_registry_in_its_order():
    cp = _supervisord()
    programs = {s.split(":", 1)[1]: cp[s] for s in cp.sections() if s.startswith("program:")}
    assert set(programs) == set(registry.SUPERVISED)
    for name, sec in programs.items():
        spec = registry.BY_NAME[name]
        assert int(sec["priority"]) == spec.priority, name
        assert sec["command"].split()[-3:] == ["tools.config", "start", name], (name, sec["command"])
    assert [n for n in sorted(programs, key=lambda n: int(programs[n]["priority"]))] == list(registry.SUPERVISED)
    group = cp["group:tickmesh"]["programs"].split(",")
    assert sorted(group) == sorted(registry.SUPERVISED)
    listeners = {s.split(":", 1)[1]: cp[s] for s in cp.sections() if s.startswith("eventlistener:")}
    expected = {s.name for s in registry.REGISTRY if s.supervised == "eventlistener"}
    assert set(listeners) == expected
    for name, sec in listeners.items():
        assert int(sec["priority"]) == registry.BY_NAME[name].priority
        assert sec["command"].split()[-1] == registry.BY_NAME[name].module.rsplit(".", 1)[0]


def test_every_node_class_is_in_its_package_node_py_with_its_name_and_section():
    for spec in registry.REGISTRY:
        if spec.module is None:
            continue
        cls = registry.load_class(spec.name)
        assert issubclass(cls, Node) and cls.name == spec.name, spec
        if spec.name not in ("offline",):
            assert spec.module == f"nodes.{spec.name}.node", spec
        if spec.section:
            mod, _, attr = spec.section.partition(":")
            assert mod == f"nodes.{spec.name}.config"
            assert hasattr(importlib.import_module(mod), attr)


def test_slots_ports_and_sections_derive_from_the_registry():
    assert config.NODES == tuple(s.name for s in sorted(registry.REGISTRY, key=lambda s: s.slot))
    assert [s.slot for s in sorted(registry.REGISTRY, key=lambda s: s.slot)] == list(range(len(registry.REGISTRY)))
    assert set(config.SECTIONS) == {"mesh"} | {s.name for s in registry.REGISTRY if s.section}
    m = config.MeshConfig(base_port=17000)
    for s in registry.REGISTRY:
        assert m.endpoint(s.name, "pub") == f"tcp://127.0.0.1:{17000 + 2 * s.slot}"
    assert [n for n, _ in available_nodes()] == list(registry.OFFLINE_ORDER)
    assert set(registry.OFFLINE_ORDER) == {s.name for s in registry.REGISTRY if s.offline}
