"""``[strategy]``: the strategy node and its plugins."""
import dataclasses
import difflib
import logging
import typing
from decimal import Decimal

from nodes.config import ConfigError

_log = logging.getLogger("tickmesh.strategy")


def plugin_alias(entry: str) -> str:
    """The name a ``strategy.plugins`` entry runs under (its params table, its orders' strategy tag):
    ``alias=spec`` -> alias; ``pkg.mod:Class`` -> ``class``; a built-in -> itself."""
    alias, eq, spec = entry.partition("=")
    if not eq:
        alias = entry.replace(":", ".").rpartition(".")[2].lower()
    return alias.strip()


@dataclasses.dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """Every key is documented in conf/mesh.toml ``[strategy]``."""
    # built-in names (sma, momentum, qlearn) or dotted paths (pkg.mod:Class); "alias=spec" runs a
    # plugin under another name (its params table and order tag), e.g. "sma_slow=sma"
    plugins: tuple[str, ...] = ("sma",)
    products: tuple[str, ...] = ()                 # empty: mesh.products
    order_size: Decimal = Decimal("0.001")         # one unit, base currency
    order_sizes: dict[str, Decimal] = dataclasses.field(default_factory=dict)  # per-product override
    cooldown_s: float = 1.0                        # min time between orders of a plugin in a product
    reject_backoff_s: float = 2.0                  # pause after a rejection/timeout (doubles)
    max_backoff_s: float = 60.0
    pending_timeout_s: float = 10.0                # forget an order whose outcome never arrived
    submit_timeout_ms: int = 250                   # deadline of a submit to execution
    seed: int = 0                                  # 0: random order-id prefix; else deterministic
    params: dict[str, dict[str, typing.Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.plugins:
            raise ConfigError("strategy.plugins: name at least one plugin")
        if self.order_size <= 0:
            raise ConfigError(f"strategy.order_size: must be > 0, got {self.order_size}")
        for p, s in self.order_sizes.items():
            if s <= 0:
                raise ConfigError(f"strategy.order_sizes.{p}: must be > 0, got {s}")
        for k in ("cooldown_s", "reject_backoff_s", "max_backoff_s", "pending_timeout_s"):
            if getattr(self, k) < 0:
                raise ConfigError(f"strategy.{k}: must be >= 0")
        if self.submit_timeout_ms < 1:
            raise ConfigError("strategy.submit_timeout_ms: must be >= 1")
        for name, table in self.params.items():
            if not isinstance(table, dict):
                raise ConfigError(f"strategy.params.{name}: expected a table")
        # a table for a plugin that is not enabled is kept in the file but ignored (changing the
        # plugin list must not force deleting another plugin's parameters): a note in the log
        enabled = {plugin_alias(e) for e in self.plugins}
        idle = sorted(set(self.params) - enabled)
        if idle:
            object.__setattr__(self, "params", {k: v for k, v in self.params.items() if k in enabled})
            for name in idle:
                close = difflib.get_close_matches(name, sorted(enabled), n=1, cutoff=0.75)
                if close:
                    _log.warning("strategy.params.%s: ignored, no plugin %r in strategy.plugins (did you mean %s?)",
                                 name, name, close[0])
                else:
                    _log.info("strategy.params.%s: ignored, plugin %r is not in strategy.plugins %s",
                              name, name, list(self.plugins))
