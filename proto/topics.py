"""Topic names. Topics are dotted and hierarchical so subscribers and the tap filter by prefix.

On the wire a frame is ``<topic> NUL <msgpack envelope>``; subscribing to ``"md."`` gets every
market-data topic, subscribing to ``exact("order.filled")`` gets that topic only.
"""

SEP = b"\x00"

# market data (publisher: marketdata)
MD = "md."
MD_TICK = "md.tick."        # + PRODUCT  -> Tick
MD_TRADE = "md.trade."      # + PRODUCT  -> Trade
MD_BOOK = "md.book."        # + PRODUCT  -> Book
MD_STATUS = "md.status."    # + PRODUCT  -> FeedStatus (healthy / stale / gap), on change and every second
MD_GAP = "md.gap"           # FeedGap: a sequence gap on the exchange connection
MD_STALE = "md.stale"       # FeedStale: no heartbeat for longer than the timeout
RAW = "raw."                # + VENUE -> RawFrame (only when marketdata.store_raw = true)

# risk (publisher: risk)
RISK = "risk."
RISK_STATE = "risk.state"           # RiskState
RISK_KILLSWITCH = "risk.killswitch"  # KillSwitch
RISK_DECISION = "risk.decision"     # RiskDecision (publisher: execution, which runs the checks)
RISK_EXPOSURE = "risk.exposure"     # RiskExposure (publisher: execution, which owns positions)
RISK_BAND = "risk.band."            # + PRODUCT -> RiskBand
RISK_SNAPSHOT = "risk.snapshot"     # RiskSnapshot (on change and every publish_interval_s)

# orders (publisher: execution)
ORDER = "order."
ORDER_NEW = "order.new"
ORDER_ACCEPTED = "order.accepted"
ORDER_REJECTED = "order.rejected"
ORDER_PARTIALLY_FILLED = "order.partially_filled"
ORDER_FILLED = "order.filled"
ORDER_CANCELLED = "order.cancelled"
FILL = "fill."              # + PRODUCT -> Fill
POSITION = "position."      # + PRODUCT -> Position
PNL = "pnl"                 # PnL

# nodes and operations
NODE = "node."
NODE_HEARTBEAT = "node.heartbeat."  # + NODE -> Heartbeat
NODE_PROCESS = "node.process"       # ProcessEvent (from the supervisord event listener)
ALERT = "alert."                    # + KIND -> AlertEvent (what the alert node sent)

ORDER_STATUS_TOPIC = {
    "NEW": ORDER_NEW,
    "ACCEPTED": ORDER_ACCEPTED,
    "REJECTED": ORDER_REJECTED,
    "PARTIALLY_FILLED": ORDER_PARTIALLY_FILLED,
    "FILLED": ORDER_FILLED,
    "CANCELLED": ORDER_CANCELLED,
}


def tick(product: str) -> str:
    return MD_TICK + product


def trade(product: str) -> str:
    return MD_TRADE + product


def book(product: str) -> str:
    return MD_BOOK + product


def md_status(product: str) -> str:
    return MD_STATUS + product


def band(product: str) -> str:
    return RISK_BAND + product


def fill(product: str) -> str:
    return FILL + product


def position(product: str) -> str:
    return POSITION + product


def heartbeat(node: str) -> str:
    return NODE_HEARTBEAT + node


def alert(kind: str) -> str:
    return ALERT + kind


def exact(topic: str) -> bytes:
    """The subscription bytes that match ``topic`` and nothing longer."""
    return topic.encode("ascii") + SEP


def prefix(topic_prefix: str) -> bytes:
    """The subscription bytes that match every topic starting with ``topic_prefix``."""
    return topic_prefix.encode("ascii")
