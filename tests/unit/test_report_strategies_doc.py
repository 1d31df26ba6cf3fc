"""docs/strategies.md: its example plugin is the file, it loads and trades as described, and a
params table of a plugin that is not enabled is ignored with a note in the log."""
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from nodes import config
from nodes.config import ConfigError, MeshConfig
from nodes.strategy import StrategyNode, load_plugins
from nodes.strategy.base import PluginContext
from nodes.strategy.config import StrategyConfig, plugin_alias
from nodes.strategy.examples.breakout import Breakout, BreakoutParams
from proto import Tick

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "strategies.md"
EXAMPLE = ROOT / "nodes" / "strategy" / "examples" / "breakout.py"
SPEC = "nodes.strategy.examples.breakout:Breakout"


def test_the_doc_shows_the_example_file_verbatim_and_it_is_under_60_lines():
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert EXAMPLE.read_text() in blocks
    assert len(EXAMPLE.read_text().splitlines()) < 60
    assert "docs/strategies.md" in (ROOT / "README.md").read_text()


def _tick(product, mid):
    mid = Decimal(mid)
    return Tick(product, mid, mid - Decimal("0.01"), Decimal(1), mid + Decimal("0.01"), Decimal(1), Decimal(0))


def test_example_loads_by_dotted_path_with_its_table_and_trades_breakouts():
    conf = StrategyConfig(plugins=(SPEC,), params={"breakout": {"window": 3, "max_units": 2, "size": "0.5"}})
    [(alias, cls, params)] = load_plugins(conf)
    assert (alias, cls, params) == ("breakout", Breakout, BreakoutParams(window=3, max_units=2, size=Decimal("0.5")))
    pos = {}
    plugin = cls(alias, params, PluginContext(alias, ("BTC-USD",), Decimal("0.001"), pos, pending=lambda p: False))
    out = [plugin.on_tick(_tick("BTC-USD", m), None) for m in ("100", "101", "100.5", "100.8")]
    assert out == [None, None, None, None]                   # inside the channel: no target
    (buy,) = plugin.on_tick(_tick("BTC-USD", "102"), None)   # above the 3-tick high
    assert (buy.side, buy.size) == ("BUY", Decimal("0.5"))
    pos["BTC-USD"] = Decimal("1.0")                           # at the 2-unit target
    assert plugin.on_tick(_tick("BTC-USD", "101.5"), None) is None
    (sell,) = plugin.on_tick(_tick("BTC-USD", "99"), None)   # below the 3-tick low
    assert sell.side == "SELL" and plugin.state()["BTC-USD"] == {"target_units": 0, "units": 2}


def test_example_refuses_bad_parameters_naming_the_table():
    with pytest.raises(ConfigError, match=r"strategy\.params\.breakout"):
        StrategyNode(MeshConfig(), StrategyConfig(plugins=(SPEC,), params={"breakout": {"window": 1}}))
    with pytest.raises(ConfigError, match=r"strategy\.params\.breakout\.windw"):
        StrategyNode(MeshConfig(), StrategyConfig(plugins=(SPEC,), params={"breakout": {"windw": 5}}))


@pytest.mark.parametrize("entry, alias", [("sma", "sma"), ("slow=sma", "slow"), (SPEC, "breakout"),
                                          ("mypkg.mod.MyStrat", "mystrat"), (" fast = sma ", "fast")])
def test_plugin_alias_matches_the_node(entry, alias):
    assert plugin_alias(entry) == alias


def test_a_table_of_a_plugin_not_enabled_is_ignored_with_a_log_note(tmp_path, caplog):
    toml = (ROOT / "conf" / "mesh.toml").read_text()
    toml += "\n[strategy.params.momentum]\nlookback = 7\n\n[strategy.params.smaa]\nfast = 3\n"
    path = tmp_path / "mesh.toml"
    path.write_text(toml)
    with caplog.at_level(logging.INFO, logger="tickmesh.strategy"):
        cfg = config.load(path, env={}, read_dotenv=False)
        conf = cfg.section("strategy")
    assert set(conf.params) == {"sma"}                       # the repo's plugins = ["sma"]
    notes = {(r.levelno, r.getMessage()) for r in caplog.records}
    assert notes == {
        (logging.INFO, "strategy.params.momentum: ignored, plugin 'momentum' is not in strategy.plugins ['sma']"),
        (logging.WARNING, "strategy.params.smaa: ignored, no plugin 'smaa' in strategy.plugins (did you mean sma?)")}
    node = StrategyNode(cfg.mesh, conf)                      # it starts: no error for the idle tables
    assert [p.name for p in node.plugins] == ["sma"]
    # enabling the plugin brings its table back into use
    on = StrategyConfig(plugins=("sma", "momentum"), params={"sma": {}, "momentum": {"lookback": 7}})
    assert dict((a, p) for a, _, p in load_plugins(on))["momentum"].lookback == 7
