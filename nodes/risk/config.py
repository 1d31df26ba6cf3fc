"""``[risk]``: the risk node's section of conf/mesh.toml (every key is documented there too).

Limits are positive numbers: a limit cannot be switched off by setting it to 0 (that would be a
fail-open footgun); to loosen one, set it high. Per-product overrides live under
``[risk.products.<PRODUCT>]`` and replace the section-wide value for that product only.
"""
import dataclasses
from decimal import Decimal
from typing import Optional

from nodes.config import ConfigError

BAND_METHODS = ("stddev", "ewma", "atr")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProductLimits:
    """``[risk.products.<PRODUCT>]``: per-product overrides (unset keys use the section value)."""
    max_position: Optional[Decimal] = None        # base units, |signed qty| after the order
    max_exposure: Optional[Decimal] = None        # quote units, |qty| x mid after the order
    max_order_notional: Optional[Decimal] = None  # quote units, one order
    max_price_band_pct: Optional[Decimal] = None  # % of mid
    max_slippage_bps: Optional[Decimal] = None    # bps of mid
    band_method: Optional[str] = None             # stddev | ewma | atr
    band_k: Optional[float] = None
    band_floor_pct: Optional[float] = None

    def __post_init__(self):
        _check_positive(self, ("max_position", "max_exposure", "max_order_notional",
                               "max_price_band_pct", "max_slippage_bps", "band_k"), optional=True)
        if self.band_method is not None and self.band_method not in BAND_METHODS:
            raise ConfigError(f"band_method: must be one of {', '.join(BAND_METHODS)}, "
                              f"got {self.band_method!r}")
        if self.band_floor_pct is not None and self.band_floor_pct < 0:
            raise ConfigError("band_floor_pct: must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RiskConfig:
    """``[risk]``: volatility bands, pre-trade limits, trading states and the kill switch."""
    # --- volatility kernels ---
    window: int = 300                    # ticks in the rolling stddev of log returns
    ewma_alpha: float = 0.94             # RiskMetrics decay: var = a*var + (1-a)*r^2
    bar_interval_s: float = 60.0         # bar length for the ATR (bars aggregated from ticks)
    atr_period: int = 14                 # Wilder ATR period, in bars
    min_history: int = 50                # ticks (returns) before the stddev/ewma band applies
    # --- bands ---
    band_method: str = "stddev"          # stddev | ewma | atr
    band_k: float = 6.0                  # band half-width = k x (sigma x mid | ATR)
    band_floor_pct: float = 0.1          # band half-width never below this % of mid
    max_price_band_pct: Decimal = Decimal("5")     # static band: max % a price may sit from mid
    max_slippage_bps: Decimal = Decimal("50")      # expected fill vs mid, bps (adverse side)
    # --- limits ---
    max_order_notional: Decimal = Decimal("25000")  # quote, one order
    max_position: Decimal = Decimal("1")            # base, per product (override per product)
    max_exposure: Decimal = Decimal("50000")        # quote, per product
    max_gross_exposure: Decimal = Decimal("100000")  # quote, sum over products
    max_orders_per_s: int = 20                      # approved orders in any 1 s window
    products: dict[str, ProductLimits] = dataclasses.field(default_factory=dict)
    # --- automatic kill-switch triggers ---
    daily_loss_limit: Decimal = Decimal("2000")     # quote; daily PnL <= -limit engages
    reduce_at_loss_fraction: float = 0.8            # REDUCING once daily loss >= fraction x limit
    max_drawdown: Decimal = Decimal("5000")         # quote; peak equity - equity >= this engages
    max_rejects_per_min: int = 10                   # VENUE_REJECT rejections in 60 s; more engages
    execution_heartbeat_timeout_s: float = 3.0      # no execution heartbeat this long engages
    execution_program: str = "execution"            # supervisord program name of execution
    stale_halts: bool = True                        # a stale feed engages the kill switch ...
    stale_halt_after_s: float = 5.0                 # ... once stale for this long
    require_feed_status: bool = True                # deny orders without a recent md.status
    feed_status_timeout_s: float = 3.0              # md.status older than this counts as stale
    # --- halting ---
    flatten_on_halt: bool = False                   # on HALTED, execution sends reduce-only market exits
    # --- plumbing ---
    state_file: str = "risk/state.json"             # under mesh.state_dir unless absolute
    history_file: str = ""                          # optional store file (JSON Lines) to warm bands
    publish_interval_s: float = 0.5                 # snapshot/band republish period
    state_max_age_ms: int = 2000                    # execution refuses orders once risk's latest
                                                    # snapshot is older than this (RISK_UNAVAILABLE)
    band_publish_min_interval_s: float = 0.1        # at most this often per product on change

    def __post_init__(self):
        if self.window < 2:
            raise ConfigError("risk.window: must be >= 2")
        if not (0.0 < self.ewma_alpha < 1.0):
            raise ConfigError(f"risk.ewma_alpha: must be in (0, 1), got {self.ewma_alpha}")
        if not (self.bar_interval_s >= 0.001):
            raise ConfigError("risk.bar_interval_s: must be >= 0.001")
        if self.atr_period < 1:
            raise ConfigError("risk.atr_period: must be >= 1")
        if self.min_history < 1:
            raise ConfigError("risk.min_history: must be >= 1")
        if self.band_method not in BAND_METHODS:
            raise ConfigError(f"risk.band_method: must be one of {', '.join(BAND_METHODS)}, "
                              f"got {self.band_method!r}")
        if self.band_floor_pct < 0:
            raise ConfigError("risk.band_floor_pct: must be >= 0")
        _check_positive(self, ("band_k", "max_price_band_pct", "max_slippage_bps",
                               "max_order_notional", "max_position", "max_exposure",
                               "max_gross_exposure", "max_orders_per_s", "daily_loss_limit",
                               "max_drawdown", "max_rejects_per_min",
                               "execution_heartbeat_timeout_s", "stale_halt_after_s",
                               "feed_status_timeout_s", "publish_interval_s", "state_max_age_ms"),
                        prefix="risk.")
        if self.state_max_age_ms < 2 * self.publish_interval_s * 1000:
            raise ConfigError(f"risk.state_max_age_ms: must be at least two publish intervals "
                              f"(2 x risk.publish_interval_s = {2 * self.publish_interval_s * 1000:g} ms), "
                              f"got {self.state_max_age_ms}")
        if not (0.0 < self.reduce_at_loss_fraction <= 1.0):
            raise ConfigError("risk.reduce_at_loss_fraction: must be in (0, 1]")
        if self.band_publish_min_interval_s < 0:
            raise ConfigError("risk.band_publish_min_interval_s: must be >= 0")
        if not self.state_file:
            raise ConfigError("risk.state_file: must not be empty (the kill switch persists there)")

    def limits(self, product: str) -> "EffectiveLimits":
        """The limits that apply to ``product`` (section values with its overrides)."""
        o = self.products.get(product) or ProductLimits()

        def pick(k):
            v = getattr(o, k)
            return getattr(self, k) if v is None else v
        return EffectiveLimits(**{f.name: pick(f.name) for f in dataclasses.fields(ProductLimits)})


@dataclasses.dataclass(frozen=True)
class EffectiveLimits:
    max_position: Decimal
    max_exposure: Decimal
    max_order_notional: Decimal
    max_price_band_pct: Decimal
    max_slippage_bps: Decimal
    band_method: str
    band_k: float
    band_floor_pct: float


def _check_positive(obj, names, optional=False, prefix=""):
    for n in names:
        v = getattr(obj, n)
        if v is None and optional:
            continue
        if not v > 0:
            raise ConfigError(f"{prefix}{n}: must be > 0, got {v}")
