"""``[alerts]``: rules, dedupe and delivery of the alert node. Webhook URLs and tokens are secrets
(SLACK_WEBHOOK_URL, SLACK_BOT_TOKEN + SLACK_CHANNEL, TEAMS_WEBHOOK_URL in conf/secrets.env).

``mode`` says whether those channels are paged: ``live`` (the default, what supervisord runs),
``local`` (only channels on this machine: the test suite's fake Slack/Teams; any other is refused
and logged) or ``log`` (none: the node's log and ``alert.<kind>`` on the bus only). Offline and
replay runs set ``log`` unless started with ``--alerts live``; the test harnesses set ``local``."""
import dataclasses
from decimal import Decimal

from nodes.config import ConfigError

MODES = ("live", "local", "log")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertsConfig:
    mode: str = "live"                   # live | local | log: which channels are paged (see above)
    cooldown_s: float = 300.0            # a warning re-firing this soon after its last page is held
    daily_loss_threshold: Decimal = Decimal("1000")   # alert when PnL.daily < -this (quote ccy)
    drawdown_fraction: Decimal = Decimal("0.10")      # alert when equity < peak * (1 - this)
    node_timeout_s: float = 3.0          # no heartbeat for this long: node down
    alert_on_clean_stop: bool = False    # also alert when a node reports a clean STOPPED
    feed_alerts: bool = True             # feed gap / stale / unhealthy alerts
    feed_grace_s: float = 10.0           # a feed not yet healthy since start may take this long first
    feed_settle_s: float = 2.0           # a feed incident resolves once every product was healthy this long
    slack_api_url: str = "https://slack.com/api"   # base of chat.postMessage (bot-token mode)
    http_timeout_s: float = 5.0          # per HTTP attempt
    max_attempts: int = 5                # attempts per message and channel (429/5xx/network)
    backoff_base_s: float = 0.5          # first retry delay; doubles per attempt, full jitter
    backoff_max_s: float = 30.0          # cap of one retry delay (also caps Retry-After)
    queue_max: int = 1000                # pending sends; beyond it the oldest is dropped and logged

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"alerts.mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.cooldown_s < 0:
            raise ConfigError("alerts.cooldown_s: must be >= 0")
        if self.daily_loss_threshold <= 0:
            raise ConfigError("alerts.daily_loss_threshold: must be > 0")
        if not (Decimal(0) < self.drawdown_fraction < Decimal(1)):
            raise ConfigError("alerts.drawdown_fraction: must be between 0 and 1")
        if self.node_timeout_s <= 0:
            raise ConfigError("alerts.node_timeout_s: must be > 0")
        if self.feed_grace_s < 0 or self.feed_settle_s < 0:
            raise ConfigError("alerts.feed_grace_s/feed_settle_s: must be >= 0")
        if self.max_attempts < 1:
            raise ConfigError("alerts.max_attempts: must be >= 1")
        if self.http_timeout_s <= 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ConfigError("alerts.http_timeout_s/backoff_*: must be positive")
        if self.queue_max < 1:
            raise ConfigError("alerts.queue_max: must be >= 1")
        if not self.slack_api_url.startswith(("http://", "https://")):
            raise ConfigError(f"alerts.slack_api_url: not an http(s) URL: {self.slack_api_url!r}")
