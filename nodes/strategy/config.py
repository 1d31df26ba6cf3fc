"""``[strategy]``: the strategy node and its plugins."""
import dataclasses
import typing
from decimal import Decimal

from nodes.config import ConfigError


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
