"""``[marketdata]``: where market data comes from and how the feed is policed.

Every key is documented in ``conf/mesh.toml``. ``COINBASE_WS_URL`` and ``USE_OFFICIAL_SDK`` override
``ws_url`` / ``use_official_sdk`` (mapped in ``nodes.config.ENV_KEYS``).
"""
import dataclasses

from nodes.config import ConfigError

SOURCES = ("coinbase", "synthetic", "replay")
CHANNELS = ("heartbeats", "ticker", "ticker_batch", "market_trades", "level2", "status", "candles")
DEFAULT_CHANNELS = ("heartbeats", "ticker", "market_trades", "level2")


def parse_speed(value: str) -> float:
    """``replay_speed`` -> multiple of the recorded pace; 0.0 means as fast as possible."""
    v = str(value).strip().lower()
    if v in ("max", "inf", "0"):
        return 0.0
    try:
        f = float(v)
    except ValueError:
        raise ConfigError(f"marketdata.replay_speed: expected \"max\" or a positive number, got {value!r}") from None
    if not (f > 0 and f != float("inf")):
        raise ConfigError(f"marketdata.replay_speed: expected \"max\" or a positive number, got {value!r}")
    return f


@dataclasses.dataclass(frozen=True, kw_only=True)
class MarketDataConfig:
    source: str = "coinbase"                          # coinbase | synthetic | replay
    ws_url: str = "wss://advanced-trade-ws.coinbase.com"
    use_official_sdk: bool = False                    # coinbase.websocket.WSClient instead of raw websockets
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    book_depth: int = 10                              # levels per side in md.book.<P>
    book_publish_hz: float = 10.0                     # max Book messages per product per second (0: every change)
    status_interval_s: float = 1.0                    # FeedStatus for every product at least this often
    stale_timeout_s: float = 5.0                      # no frame at all for this long -> md.stale + reconnect
    connect_timeout_s: float = 10.0                   # websocket handshake deadline
    send_timeout_s: float = 2.0                       # deadline of one subscribe/unsubscribe send
    max_message_bytes: int = 16 * 1024 * 1024         # a level2 snapshot can exceed 1 MiB
    backoff_initial_s: float = 0.5                    # first reconnect delay (then * multiplier each try)
    backoff_max_s: float = 30.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.5                       # delay drawn from [d * (1 - jitter), d]
    backoff_reset_s: float = 30.0                     # a connection up this long resets the backoff
    seed: int = 1                                     # synthetic source
    synthetic_rate_hz: float = 10.0                   # synthetic market steps per second (0: as fast as possible)
    synthetic_time_scale: float = 1.0                 # simulated market seconds per real second (rate > 0)
    synthetic_trade_scale: float = 1.0                # multiplies the model's trade rates
    synthetic_depth: int = 40                         # levels per side of the synthetic book
    synthetic_crash_at_h: float = -1.0                # a flash crash this many hours in (< 0: none)
    synthetic_crash_pct: float = 12.0                 # ... falling this many % ...
    synthetic_crash_minutes: float = 10.0             # ... over this many minutes
    replay_file: str = ""                             # store JSON Lines file (relative: to mesh.state_dir)
    replay_speed: str = "1"                           # "1" recorded pace, "10" ten times faster, "max"
    store_raw: bool = False                           # also publish every exchange frame as RawFrame on raw.coinbase

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError(f"marketdata.source: must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"marketdata.ws_url: must start with ws:// or wss://, got {self.ws_url!r}")
        for i, ch in enumerate(self.channels):
            if ch not in CHANNELS:
                raise ConfigError(f"marketdata.channels[{i}]: unknown channel {ch!r} (known: {', '.join(CHANNELS)})")
        if len(set(self.channels)) != len(self.channels):
            raise ConfigError("marketdata.channels: duplicate channel")
        if self.book_depth < 1:
            raise ConfigError(f"marketdata.book_depth: must be >= 1, got {self.book_depth}")
        for key in ("stale_timeout_s", "connect_timeout_s", "send_timeout_s", "status_interval_s",
                    "backoff_initial_s", "backoff_max_s", "backoff_multiplier"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"marketdata.{key}: must be > 0, got {getattr(self, key)}")
        if not 1 <= self.synthetic_depth <= 1000:
            raise ConfigError(f"marketdata.synthetic_depth: must be 1..1000, got {self.synthetic_depth}")
        if not self.synthetic_trade_scale > 0:
            raise ConfigError(f"marketdata.synthetic_trade_scale: must be > 0, got {self.synthetic_trade_scale}")
        if not 0 < self.synthetic_crash_pct < 100:
            raise ConfigError(f"marketdata.synthetic_crash_pct: must be in (0, 100), got {self.synthetic_crash_pct}")
        if not self.synthetic_crash_minutes > 0:
            raise ConfigError(f"marketdata.synthetic_crash_minutes: must be > 0, got {self.synthetic_crash_minutes}")
        if not self.synthetic_time_scale > 0:
            raise ConfigError(f"marketdata.synthetic_time_scale: must be > 0, got {self.synthetic_time_scale}")
        for key in ("book_publish_hz", "synthetic_rate_hz", "backoff_reset_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"marketdata.{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.backoff_jitter <= 1:
            raise ConfigError(f"marketdata.backoff_jitter: must be within [0, 1], got {self.backoff_jitter}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("marketdata.backoff_max_s: must be >= backoff_initial_s")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"marketdata.max_message_bytes: too small: {self.max_message_bytes}")
        parse_speed(self.replay_speed)
        if self.source == "replay" and not self.replay_file:
            raise ConfigError("marketdata.replay_file: required when source = \"replay\"")

    @property
    def speed(self) -> float:
        return parse_speed(self.replay_speed)
