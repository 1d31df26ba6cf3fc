"""[marketdata] config: validation naming the key, environment overrides, backoff arithmetic."""
import dataclasses
import random
import tomllib

import pytest

from nodes import config
from nodes.config import ConfigError
from nodes.marketdata.config import MarketDataConfig, parse_speed
from nodes.marketdata.feed import Backoff, subscribe_messages


def test_defaults_and_the_shipped_file():
    c = MarketDataConfig()
    assert c.source == "coinbase" and c.ws_url == "wss://advanced-trade-ws.coinbase.com"
    assert c.channels == ("heartbeats", "ticker", "market_trades", "level2") and not c.use_official_sdk
    table = tomllib.loads(config.DEFAULT_CONF.read_text())["marketdata"]
    assert config.build(MarketDataConfig, table, "marketdata") == c     # conf/mesh.toml shows the defaults
    assert set(table) == {f.name for f in dataclasses.fields(MarketDataConfig)}          # every key is there
    text = config.DEFAULT_CONF.read_text().split("[marketdata]", 1)[1].split("\n[", 1)[0]
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):                                    # and commented
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#") or lines[i - 1].split("=")[0].strip().startswith("backoff_"), line


@pytest.mark.parametrize("changes, key", [
    ({"source": "kraken"}, "marketdata.source"),
    ({"ws_url": "http://x"}, "marketdata.ws_url"),
    ({"channels": ("ticker", "heartbeat")}, "marketdata.channels[1]"),
    ({"book_depth": 0}, "marketdata.book_depth"),
    ({"stale_timeout_s": 0.0}, "marketdata.stale_timeout_s"),
    ({"backoff_jitter": 1.5}, "marketdata.backoff_jitter"),
    ({"replay_speed": "fast"}, "marketdata.replay_speed"),
    ({"replay_speed": "-2"}, "marketdata.replay_speed"),
    ({"source": "replay"}, "marketdata.replay_file"),
    ({"synthetic_rate_hz": -1.0}, "marketdata.synthetic_rate_hz"),
])
def test_bad_values_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        dataclasses.replace(MarketDataConfig(), **changes)


def test_speed_forms():
    assert parse_speed("max") == 0.0 and parse_speed("1") == 1.0 and parse_speed("10") == 10.0
    assert parse_speed(2.5) == 2.5 and MarketDataConfig(replay_speed="0.5").speed == 0.5


def test_environment_overrides(tmp_path):
    f = tmp_path / "mesh.toml"
    f.write_text('[marketdata]\nsource = "coinbase"\n')
    cfg = config.load(f, env={"COINBASE_WS_URL": "ws://127.0.0.1:8765", "USE_OFFICIAL_SDK": "true",
                              "TICKMESH_MARKETDATA__REPLAY_SPEED": "max"}, read_dotenv=False)
    md = cfg.section("marketdata")
    assert md.ws_url == "ws://127.0.0.1:8765" and md.use_official_sdk is True and md.speed == 0.0
    f.write_text('[marketdata]\nbook_depth = "ten"\n')
    with pytest.raises(ConfigError, match="marketdata.book_depth"):
        config.load(f, env={}, read_dotenv=False)
    f.write_text('[marketdata]\nstale_timeout = 3\n')
    with pytest.raises(ConfigError, match="marketdata.stale_timeout: unknown key"):
        config.load(f, env={}, read_dotenv=False)


def test_offline_mode_replacements(tmp_path):
    f = tmp_path / "mesh.toml"
    f.write_text("[marketdata]\n")
    cfg = config.load(f, env={}, read_dotenv=False)
    a = cfg.replace("marketdata", source="synthetic", seed=42).section("marketdata")
    assert a.source == "synthetic" and a.seed == 42
    b = cfg.replace("marketdata", source="replay", replay_file="/x.jsonl", replay_speed="max").section("marketdata")
    assert b.speed == 0.0


def test_backoff_grows_caps_jitters_and_resets():
    b = Backoff(0.5, 4.0, 2.0, 0.5, rng=random.Random(1))
    waits = [b.next() for _ in range(6)]
    for w, base in zip(waits, (0.5, 1.0, 2.0, 4.0, 4.0, 4.0)):
        assert base * 0.5 <= w <= base
    b.reset()
    assert b.next() <= 0.5
    flat = Backoff(1.0, 10.0, 3.0, 0.0)
    assert [flat.next() for _ in range(4)] == [1.0, 3.0, 9.0, 10.0]


def test_one_subscribe_message_per_channel_heartbeats_first_without_products():
    msgs = subscribe_messages(["ticker", "heartbeats", "level2"], ["BTC-USD", "ETH-USD"])
    assert msgs == [{"type": "subscribe", "channel": "heartbeats"},
                    {"type": "subscribe", "channel": "ticker", "product_ids": ["BTC-USD", "ETH-USD"]},
                    {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD", "ETH-USD"]}]
