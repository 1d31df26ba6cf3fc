"""Strategy plugins (SMA crossover, momentum) and plugin loading from config."""
import dataclasses
from decimal import Decimal

import pytest

import proto
from proto import topics
from proto.codec import Envelope
from nodes import config
from nodes.config import ConfigError, MeshConfig
from nodes.strategy import StrategyNode, load_plugins
from nodes.strategy.base import PluginContext, Strategy
from nodes.strategy.config import StrategyConfig
from nodes.strategy.momentum import Momentum, MomentumParams
from nodes.strategy.sma import SmaCrossover, SmaParams


class Breakout(Strategy):
    """A plugin defined outside the package, loaded by dotted path."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Params:
        window: int = 3
        size: Decimal = Decimal(0)

    def on_tick(self, tick, env):
        return [self.buy(tick.product)]


def ctx(positions=None, products=("BTC-USD",)):
    pos = positions if positions is not None else {}
    return PluginContext("t", products, Decimal("0.01"), pos, pending=lambda p: False)


def env_of(price, i=0, product="BTC-USD"):
    px = Decimal(price)
    t = proto.Tick(product, px, px - Decimal("0.01"), Decimal(1), px + Decimal("0.01"), Decimal(1), Decimal(0))
    return Envelope(topics.tick(product), i, "marketdata", i, i, i, t)


def feed(plugin, prices):
    out = []
    for i, p in enumerate(prices):
        e = env_of(p, i)
        out.append(plugin.on_tick(e.msg, e))
    return out


def test_sma_goes_long_on_the_cross_up_and_flat_on_the_cross_down():
    pos = {}
    s = SmaCrossover("sma", SmaParams(fast=2, slow=4, threshold_bps=Decimal(0)), ctx(pos))
    out = feed(s, ["100", "100", "100", "100"])
    assert out == [None, None, None, None]                    # flat market: no signal
    (intent,) = feed(s, ["101"])[0]
    assert (intent.side, intent.size, intent.order_type, intent.product) == ("BUY", Decimal("0.01"), "MARKET", "BTC-USD")
    pos["BTC-USD"] = Decimal("0.01")                          # the fill came back
    assert feed(s, ["102"]) == [None]                         # at target: nothing more
    outs = feed(s, ["99", "95"])
    sells = [i for o in outs if o for i in o]
    assert sells and sells[0].side == "SELL" and sells[0].size == Decimal("0.01")


def test_sma_hysteresis_ignores_small_crosses():
    s = SmaCrossover("sma", SmaParams(fast=2, slow=4, threshold_bps=Decimal(50)), ctx())
    assert feed(s, ["100", "100", "100", "100", "100.1", "100.2"]) == [None] * 6   # < 0.5 % apart
    assert feed(s, ["103"])[0][0].side == "BUY"


def test_sma_params_are_validated():
    with pytest.raises(ValueError):
        SmaParams(fast=20, slow=5)


def test_momentum_follows_the_return_over_the_lookback():
    pos = {}
    m = Momentum("mom", MomentumParams(lookback=3, threshold_bps=Decimal(100)), ctx(pos))
    assert feed(m, ["100", "100.5", "100.7"]) == [None] * 3   # not enough history
    assert feed(m, ["100.9"]) == [None]                       # +0.9 %: below 1 %
    (b,) = feed(m, ["101.6"])[0]                              # +1.09 % over 3 ticks
    assert b.side == "BUY"
    pos["BTC-USD"] = Decimal("0.01")
    assert feed(m, ["101.6", "101.4"]) == [None, None]
    (s,) = feed(m, ["99"])[0]
    assert s.side == "SELL"


def test_plugins_load_by_builtin_name_alias_and_dotted_path():
    conf = StrategyConfig(plugins=("sma", "slow=sma", "tests.unit.test_strategy_plugins:Breakout", "momentum"),
                          params={"slow": {"fast": 10, "slow": 50, "threshold_bps": "5"},
                                  "breakout": {"window": 7}})
    got = load_plugins(conf)
    assert [(a, c) for a, c, _ in got] == [("sma", SmaCrossover), ("slow", SmaCrossover), ("breakout", Breakout),
                                          ("momentum", Momentum)]
    assert got[1][2] == SmaParams(fast=10, slow=50, threshold_bps=Decimal(5))
    assert got[2][2].window == 7 and got[0][2] == SmaParams()


@pytest.mark.parametrize("conf, key", [
    (dict(plugins=("nosuch",)), r"strategy\.plugins\[0\]"),
    (dict(plugins=("sma", "nosuch.module:Thing")), r"strategy\.plugins\[1\]"),
    (dict(plugins=("proto.messages:Tick",)), r"strategy\.plugins\[0\].*not a nodes\.strategy\.base\.Strategy"),
    (dict(plugins=("sma", "sma")), r"strategy\.plugins\[1\].*twice"),
    (dict(plugins=("sma",), params={"sma": {"fastt": 3}}), r"strategy\.params\.sma\.fastt"),
    (dict(plugins=("sma",), params={"sma": {"fast": "x"}}), r"strategy\.params\.sma\.fast"),
    (dict(plugins=("sma",), params={"sma": {"fast": 30, "slow": 10}}), r"strategy\.params\.sma"),
    # a params table of a plugin that is not enabled is ignored (tests/unit/test_report_strategies_doc.py)
])
def test_bad_plugin_config_names_the_key(conf, key):
    with pytest.raises(ConfigError, match=key):
        StrategyNode(MeshConfig(), StrategyConfig(**conf))


def test_repo_config_builds_the_default_offline_strategy():
    cfg = config.load(config.DEFAULT_CONF, env={}, read_dotenv=False)
    node = StrategyNode.from_config(cfg)
    assert [p.name for p in node.plugins] == ["sma"]
    assert node.products == cfg.mesh.products
    assert node.conf.order_size == Decimal("0.001")


def test_env_override_of_plugins(tmp_path):
    p = tmp_path / "mesh.toml"
    p.write_text("[strategy]\n")
    cfg = config.load(p, env={"TICKMESH_STRATEGY__PLUGINS": "momentum,sma"}, read_dotenv=False)
    assert cfg.section("strategy").plugins == ("momentum", "sma")


def test_node_sizes_intents_to_the_product_increment():
    mesh = MeshConfig()
    node = StrategyNode(mesh, StrategyConfig(plugins=("sma",)))
    it = proto.OrderIntent("BTC-USD", "BUY", "MARKET", size=Decimal("0.0012345678912"))
    assert node._prepare(it).size == Decimal("0.00123456")
    assert node._prepare(it._replace(size=Decimal("0.000000001"))) is None        # below the minimum
    assert node._prepare(it._replace(product="DOGE-USD")) is None                   # not traded here
    assert node._prepare(it._replace(side="HOLD")) is None


def test_node_refuses_float_money_from_a_plugin():
    node = StrategyNode(MeshConfig(), StrategyConfig(plugins=("sma",)))
    it = proto.OrderIntent("BTC-USD", "BUY", "MARKET", size=0.001)
    assert node._prepare(it) is None
    assert node._prepare(it._replace(size=Decimal("0.001"), limit_price=65000.0)) is None
