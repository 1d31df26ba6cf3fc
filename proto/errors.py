"""Error codes and the named errors of the wire contract.

A leaf module: it imports nothing from the project. Every reply and every rejection carries one
of the ``Code`` strings below; they are stable, so logs, metrics and alerts can key on them.
"""


class ProtocolError(Exception):
    """Base class of every error raised by ``proto``."""


class DecodeError(ProtocolError):
    """A frame could not be decoded: garbage bytes, an unknown type, a newer major version,
    a wrong field count or a wrong field type. The message names what was wrong."""


class EncodeError(ProtocolError):
    """A message could not be encoded (for example a NaN or infinite Decimal)."""


class Code:
    """Stable reason codes used in replies, rejections and risk decisions."""

    OK = "OK"
    # request/reply plumbing
    BAD_REQUEST = "BAD_REQUEST"            # the request frame could not be decoded
    UNKNOWN_REQUEST = "UNKNOWN_REQUEST"    # a valid message this node does not serve
    HANDLER_ERROR = "HANDLER_ERROR"        # the handler raised; the node keeps serving
    TIMEOUT = "TIMEOUT"                    # client side: no reply before the deadline
    # risk gate (in the order the checks run)
    RISK_UNAVAILABLE = "RISK_UNAVAILABLE"  # execution could not get a decision: fail closed
    INVALID_ORDER = "INVALID_ORDER"        # zero/negative/absurd size or price, bad fields
    KILL_SWITCH = "KILL_SWITCH"
    HALTED = "HALTED"
    REDUCE_ONLY = "REDUCE_ONLY"            # state REDUCING and the order grows the position
    NO_MARKET_DATA = "NO_MARKET_DATA"
    FEED_STALE = "FEED_STALE"
    FEED_GAP = "FEED_GAP"
    SIZE_MIN = "SIZE_MIN"
    SIZE_MAX = "SIZE_MAX"
    SIZE_INCREMENT = "SIZE_INCREMENT"
    PRICE_INCREMENT = "PRICE_INCREMENT"
    VOL_BAND = "VOL_BAND"
    PRICE_BAND = "PRICE_BAND"
    SLIPPAGE = "SLIPPAGE"
    MAX_NOTIONAL = "MAX_NOTIONAL"
    MAX_POSITION = "MAX_POSITION"
    MAX_EXPOSURE = "MAX_EXPOSURE"
    GROSS_EXPOSURE = "GROSS_EXPOSURE"
    RATE_LIMIT = "RATE_LIMIT"
    # execution
    DUPLICATE = "DUPLICATE"                # repeated client_order_id: the existing order is returned
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    NOT_CANCELLABLE = "NOT_CANCELLABLE"
    VENUE_REJECT = "VENUE_REJECT"          # the venue said no; its reason is in ``reason``
    VENUE_UNAVAILABLE = "VENUE_UNAVAILABLE"
    POST_ONLY_WOULD_CROSS = "POST_ONLY_WOULD_CROSS"
    FOK_NOT_FILLABLE = "FOK_NOT_FILLABLE"
    IOC_NO_LIQUIDITY = "IOC_NO_LIQUIDITY"
    LIVE_NOT_ENABLED = "LIVE_NOT_ENABLED"

    @classmethod
    def all(cls) -> frozenset:
        return frozenset(v for k, v in vars(cls).items() if k.isupper())
