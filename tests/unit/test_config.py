"""Config: frozen objects, unknown keys and wrong types rejected naming the key, env overrides,
secrets never in reprs."""
import dataclasses
import subprocess
import sys
from decimal import Decimal

import pytest

from nodes import config
from nodes.config import ConfigError, MeshConfig, Secret


def write(tmp_path, text):
    p = tmp_path / "mesh.toml"
    p.write_text(text)
    return p


def test_shipped_config_loads_and_is_frozen():
    cfg = config.load(config.DEFAULT_CONF, env={})
    assert cfg.mesh.transport == "tcp"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mesh.transport = "ipc"
    assert cfg.mesh.spec("BTC-USD").quote_increment == Decimal("0.01")


@pytest.mark.parametrize("text,match", [
    ("[mesh]\ntransprt = 'tcp'\n", r"mesh\.transprt: unknown key"),
    ("[mesh]\nbase_port = 'x'\n", r"mesh\.base_port: expected an integer"),
    ("[mesh]\nbase_port = true\n", r"mesh\.base_port: expected an integer"),
    ("[mesh]\ntransport = 'udp'\n", r"mesh\.transport: must be one of"),
    ("[mesh]\nproducts = 'BTC-USD'\n", r"mesh\.products"),
    ("[mesh]\nproducts = ['BTC-USD', 3]\n", r"mesh\.products\[1\]: expected a string"),
    ("[mesh.product_specs.BTC-USD]\nbase_increment = 'abc'\n", r"mesh\.product_specs\.BTC-USD\.base_increment: not a decimal"),
    ("[mesh.product_specs.BTC-USD]\nbase_incremnt = '1'\n", r"mesh\.product_specs\.BTC-USD\.base_incremnt: unknown key"),
    ("[mesh.hosts]\nrisky = '10.0.0.1'\n", r"mesh\.hosts\.risky: unknown node"),
    ("[mesh]\ncpu_affinity = { riks = [0] }\n", r"mesh\.cpu_affinity\.riks: unknown node"),
    ("[mesh]\ncpu_affinity = { risk = [] }\n", r"mesh\.cpu_affinity\.risk: expected a non-empty list"),
    ("[mesh]\ncpu_affinity = { risk = [-1] }\n", r"mesh\.cpu_affinity\.risk: expected a non-empty list"),
    ("[nonsense]\nx = 1\n", r"nonsense: unknown section"),
    ("[mesh\n", r"not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        config.load(write(tmp_path, text), env={}, read_dotenv=False)


def test_env_overrides_documented_and_generic(tmp_path):
    p = write(tmp_path, "[mesh]\ntransport = 'tcp'\n")
    cfg = config.load(p, env={"TICKMESH_TRANSPORT": "ipc", "TICKMESH_MESH__BASE_PORT": "9100",
                              "TICKMESH_MESH__PRODUCTS": "SOL-USD, BTC-USD"}, read_dotenv=False)
    assert cfg.mesh.transport == "ipc" and cfg.mesh.base_port == 9100
    assert cfg.mesh.products == ("SOL-USD", "BTC-USD")
    with pytest.raises(ConfigError, match=r"mesh\.base_port: expected an integer"):
        config.load(p, env={"TICKMESH_MESH__BASE_PORT": "lots"}, read_dotenv=False)
    with pytest.raises(ConfigError, match=r"mesh\.bogus: unknown key"):
        config.load(p, env={"TICKMESH_MESH__BOGUS": "1"}, read_dotenv=False)


def test_tickmesh_conf_points_at_another_file(tmp_path):
    p = write(tmp_path, "[mesh]\nbase_port = 9300\n")
    assert config.load(env={"TICKMESH_CONF": str(p)}, read_dotenv=False).mesh.base_port == 9300


def test_secrets_from_file_and_env_never_in_repr(tmp_path):
    p = write(tmp_path, "[mesh]\n")
    (tmp_path / "secrets.env").write_text("# comment\nSLACK_WEBHOOK_URL='https://hooks.example/abc'\n"
                                          "COINBASE_API_SECRET=file-secret\n")
    cfg = config.load(p, env={"COINBASE_API_SECRET": "env-secret-123"}, read_dotenv=False)
    assert cfg.secret("SLACK_WEBHOOK_URL").reveal() == "https://hooks.example/abc"
    assert cfg.secret("COINBASE_API_SECRET").reveal() == "env-secret-123"   # the environment wins
    text = repr(cfg.secrets) + str(cfg.secrets) + repr(cfg)
    assert "env-secret-123" not in text and "hooks.example" not in text
    assert repr(Secret("x")) == "Secret('***')" and not Secret("")


def test_endpoints_derived_per_transport(tmp_path):
    m = MeshConfig(base_port=9000, hosts={"risk": "10.0.0.2"})
    assert m.endpoint("marketdata", "pub") == "tcp://127.0.0.1:9000"
    assert m.endpoint("risk", "rep") == "tcp://10.0.0.2:9003"
    assert MeshConfig(transport="ipc", ipc_dir="/tmp/x").endpoint("risk", "pub") == "ipc:///tmp/x/risk.pub"
    assert MeshConfig(transport="inproc").endpoint("store", "rep") == "inproc://tickmesh.store.rep"
    with pytest.raises(ConfigError):
        m.endpoint("nobody", "pub")


def test_node_main_with_bad_config_exits_naming_the_key(tmp_path):
    p = write(tmp_path, "[mesh]\nheartbeat_s = 'fast'\n")
    r = subprocess.run([sys.executable, "-c", "import sys; from nodes.runtime import run_main, Node;"
                        "sys.exit(run_main(Node, ['--conf', sys.argv[1]]))", str(p)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "config error: mesh.heartbeat_s: expected a number" in r.stderr


def test_node_main_pinned_to_a_cpu_the_machine_lacks_exits_naming_the_key(tmp_path):
    import os
    missing = max(os.sched_getaffinity(0)) + 64
    p = write(tmp_path, f"[mesh]\ncpu_affinity = {{ risk = [{missing}] }}\n")
    r = subprocess.run([sys.executable, "-c", "import sys; from nodes.runtime import run_main; from nodes.risk import RiskNode;"
                        "sys.exit(run_main(RiskNode, ['--conf', sys.argv[1]]))", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"config error: mesh.cpu_affinity.risk: cannot pin to cpus [{missing}]" in r.stderr


def test_pin_cpus_confines_the_thread_and_returns_what_to_restore():
    import os
    import threading
    before = os.sched_getaffinity(0)
    one = {max(before)}
    old = config.pin_cpus(one, "x")
    try:
        assert old == before
        assert os.sched_getaffinity(0) == one
        seen = []
        t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        t.start()
        t.join(10)
        assert seen == [one]            # threads started afterwards inherit it
    finally:
        os.sched_setaffinity(0, old)
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ConfigError, match=r"mesh\.cpu_affinity\.risk: cannot pin to cpus \[4096\]"):
        config.pin_cpus({4096}, "mesh.cpu_affinity.risk")
    assert os.sched_getaffinity(0) == before


def test_tcp_ports_inside_the_kernels_ephemeral_range_are_refused():
    from nodes.config import MeshConfig, _ranges, ephemeral_clash
    assert _ranges("7100-7119,8000\n") == set(range(7100, 7120)) | {8000}
    assert _ranges("") == set()
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except OSError:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here")
    inside = (lo + hi) // 2
    if ephemeral_clash(inside, inside + 19) is None:
        pytest.skip("this machine reserves those ports")
    with pytest.raises(ConfigError, match=r"mesh\.base_port: .*ephemeral range.*ip_local_reserved_ports"):
        MeshConfig(base_port=inside)
    assert MeshConfig(base_port=inside, transport="ipc").base_port == inside   # no tcp ports used
    assert MeshConfig().base_port == 7100 and ephemeral_clash(7100, 7119) is None or lo <= 7119
