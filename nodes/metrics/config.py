"""``[metrics]``: the Prometheus endpoint of the metrics node."""
import dataclasses

from nodes.config import ConfigError

_DEFAULT_ROUNDTRIP = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                      5.0, 10.0, 30.0, 60.0)
_DEFAULT_T2T = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    port: int = 9464                     # HTTP port of /metrics (0: any free port, tests)
    bind: str = "127.0.0.1"              # address the HTTP endpoint listens on
    node_timeout_s: float = 3.0          # a node whose last heartbeat is older is reported down
    roundtrip_buckets: list[float] = dataclasses.field(default_factory=lambda: list(_DEFAULT_ROUNDTRIP))
    tick_to_trade_buckets: list[float] = dataclasses.field(default_factory=lambda: list(_DEFAULT_T2T))

    def __post_init__(self):
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"metrics.port: out of range: {self.port}")
        if self.node_timeout_s <= 0:
            raise ConfigError("metrics.node_timeout_s: must be > 0")
        for key in ("roundtrip_buckets", "tick_to_trade_buckets"):
            b = getattr(self, key)
            if not b or any(x <= 0 for x in b) or list(b) != sorted(set(b)):
                raise ConfigError(f"metrics.{key}: must be a non-empty increasing list of positive seconds")
