"""``[execution]``: the execution node's configuration (every key is documented in conf/mesh.toml)."""
import dataclasses
from decimal import Decimal

from nodes.config import ConfigError

VENUES = ("paper", "coinbase")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    venue: str = "paper"                     # "paper" (default, dry run) | "coinbase" (live)
    live_trading: bool = False               # live switch #1; #2 is the secret TICKMESH_LIVE=yes
    journal: str = ""                        # "" -> <state_dir>/execution/<venue>.journal
    journal_fsync: bool = True               # fsync the journal before anything leaves the node
    journal_compact_records: int = 200_000   # at start, rewrite a journal longer than this (0: never)
    journal_keep_days: int = 7               # compaction keeps finished orders this recent
    pnl_interval_s: float = 1.0              # Position / PnL publication period
    orders_in_memory: int = 2_000            # finished orders kept in memory (older: in the journal)
    starting_equity: Decimal = Decimal("100000")
    # paper venue
    paper_seed: int = 0
    slippage_bps: Decimal = Decimal("1")
    maker_fee_bps: Decimal = Decimal("40")
    taker_fee_bps: Decimal = Decimal("60")
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # coinbase venue
    rest_base_url: str = "api.coinbase.com"  # bare host[:port]: the SDK always prepends https://
    rest_ca_bundle: str = ""                 # CA bundle for the REST endpoint ("" = system CAs)
    rest_timeout_s: float = 5.0
    ws_user_url: str = "wss://advanced-trade-ws-user.coinbase.com"
    use_user_ws: bool = True                 # follow fills on the user channel (else REST polling)
    ws_stale_s: float = 5.0                  # no frame (heartbeats included) for this long: reconnect
    poll_interval_s: float = 2.0             # REST polling period while the user channel is down
    max_retries: int = 5                     # 429 / 5xx / connection errors, per REST call
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0

    def __post_init__(self):
        if self.venue not in VENUES:
            raise ConfigError(f"execution.venue: must be one of {', '.join(VENUES)}, got {self.venue!r}")
        for key in ("slippage_bps", "maker_fee_bps", "taker_fee_bps"):
            v = getattr(self, key)
            if not (Decimal(0) <= v <= Decimal(1000)):
                raise ConfigError(f"execution.{key}: must be between 0 and 1000 bps, got {v}")
        for key in ("latency_ms", "latency_jitter_ms"):
            if getattr(self, key) < 0:
                raise ConfigError(f"execution.{key}: must be >= 0")
        for key in ("pnl_interval_s", "poll_interval_s", "rest_timeout_s", "ws_stale_s",
                    "backoff_base_s", "backoff_max_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"execution.{key}: must be > 0")
        if self.journal_compact_records < 0 or self.journal_keep_days < 0:
            raise ConfigError("execution.journal_compact_records / journal_keep_days: must be >= 0")
        if self.orders_in_memory < 1:
            raise ConfigError(f"execution.orders_in_memory: must be >= 1, got {self.orders_in_memory}")
        if self.max_retries < 0:
            raise ConfigError("execution.max_retries: must be >= 0")
        if "://" in self.rest_base_url or "/" in self.rest_base_url or not self.rest_base_url:
            raise ConfigError(f"execution.rest_base_url: must be a bare host[:port] (the SDK adds "
                              f"https:// itself), got {self.rest_base_url!r}")
        if not self.ws_user_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"execution.ws_user_url: must start with ws:// or wss://, got {self.ws_user_url!r}")
        if self.starting_equity < 0:
            raise ConfigError("execution.starting_equity: must be >= 0")


class LiveTradingRefused(ConfigError):
    """venue = "coinbase" without both live switches (or without API credentials)."""


def check_live(conf: ExecutionConfig, secrets: dict) -> None:
    """Refuse live mode unless BOTH switches are on and credentials exist; say exactly why."""
    if conf.venue != "coinbase":
        return
    missing = []
    if not conf.live_trading:
        missing.append("execution.live_trading is false (set live_trading = true in [execution], "
                       "or TICKMESH_LIVE_TRADING=true)")
    live = secrets.get("TICKMESH_LIVE")
    if live is None or live.reveal().strip().lower() != "yes":
        missing.append("the confirmation TICKMESH_LIVE=yes is not set (conf/secrets.env or the environment)")
    for name in ("COINBASE_API_KEY", "COINBASE_API_SECRET"):
        if not secrets.get(name):
            missing.append(f"the secret {name} is empty")
    if missing:
        raise LiveTradingRefused("execution.venue = \"coinbase\" (live trading) refused: "
                                 + "; ".join(missing) + ". Use venue = \"paper\" for a dry run.")
