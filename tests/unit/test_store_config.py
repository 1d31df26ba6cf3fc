"""[store] config: defaults, and bad values stop the node naming the key."""
import pytest

from nodes import config
from nodes.config import ConfigError
from nodes.store import StoreNode, store_dir
from nodes.store.config import StoreConfig


def _load(tmp_path, body):
    p = tmp_path / "mesh.toml"
    p.write_text(body)
    return config.load(p, env={}, read_dotenv=False)


def test_repo_config_has_a_valid_store_section():
    cfg = config.load(config.DEFAULT_CONF, env={}, read_dotenv=False)
    s = cfg.section("store")
    assert isinstance(s, StoreConfig)
    assert s.prefixes == ("md.", "order.", "fill.", "position.", "pnl", "risk.")
    assert store_dir(cfg.mesh, s) == cfg.mesh.state_path("store")


@pytest.mark.parametrize("line, key", [
    ('fsync = "sometimes"', "store.fsync"),
    ("flush_interval_s = 0", "store.flush_interval_s"),
    ("rotate_bytes = 10", "store.rotate_bytes"),
    ("queue_max = 0", "store.queue_max"),
    ("prefixes = []", "store.prefixes"),
    ('prefixes = "md."', "store.prefixes"),
    ("nonsense = 1", "store.nonsense"),
])
def test_bad_values_name_the_key(tmp_path, line, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _load(tmp_path, f"[store]\n{line}\n")


def test_raw_frames_only_when_asked(tmp_path):
    cfg = _load(tmp_path, '[store]\nprefixes = ["md."]\nstore_raw = true\ndir = "/tmp/x"\n')
    n = StoreNode(cfg.mesh, cfg.section("store"))
    assert n.subscriptions == ("md.", "raw.") and not n._skip_raw
    assert str(n.directory) == "/tmp/x"
    everything = StoreNode(cfg.mesh, StoreConfig(prefixes=("",)))
    assert everything.subscriptions == ("",) and everything._skip_raw   # "" would match raw.*: skipped
