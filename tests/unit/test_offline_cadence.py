"""Offline mode's market-time cadence (nodes.offline.OFFLINE_CADENCE) and what a --conf file keeps."""
from types import SimpleNamespace

from nodes import config as _config
from nodes.offline import OFFLINE_CADENCE, build_config


def _args(tmp_path, conf=None):
    return SimpleNamespace(conf=conf, state_dir=str(tmp_path / "state"), source="synthetic", seed=1,
                           trade_scale=0.1, crash_at_h=16.0)


def test_without_conf_every_offline_cadence_key_applies(tmp_path):
    cfg = build_config(_args(tmp_path))
    for section, keys in OFFLINE_CADENCE.items():
        for k, v in keys.items():
            obj = cfg.section(section)
            assert getattr(obj, k) == v, f"{section}.{k}"


def test_a_conf_file_keeps_its_own_book_cadence_and_nothing_else(tmp_path):
    base = (_config.DEFAULT_CONF).read_text()
    assert "book_publish_hz = 10.0" in base and "book_depth = 10" in base
    own = tmp_path / "own.toml"
    # the shipped file's book depth removed: only book_publish_hz is this file's own
    own.write_text(base.replace("book_depth = 10\n", "").replace("book_publish_hz = 10.0", "book_publish_hz = 4.0"))
    cfg = build_config(_args(tmp_path, str(own)))
    assert cfg.section("marketdata").book_publish_hz == 4.0                  # the file's value
    assert cfg.section("marketdata").book_depth == OFFLINE_CADENCE["marketdata"]["book_depth"]
    assert cfg.section("marketdata").status_interval_s == OFFLINE_CADENCE["marketdata"]["status_interval_s"]
    assert cfg.section("risk").publish_interval_s == OFFLINE_CADENCE["risk"]["publish_interval_s"]   # housekeeping: always
    assert cfg.section("mesh").heartbeat_s == OFFLINE_CADENCE["mesh"]["heartbeat_s"]
