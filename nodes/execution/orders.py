"""The order state machine, the venue-neutral venue events, and client order ids.

Lifecycle (a transition table, like supervisor's states)::

    NEW -> ACCEPTED -> PARTIALLY_FILLED -> FILLED
      \\             \\        (more partial fills)   \\
       -> REJECTED    -> FILLED / CANCELLED           -> CANCELLED

An illegal transition raises ``IllegalTransition`` naming both states; every legal one produces the
full ``proto.Order`` to publish on ``topics.ORDER_STATUS_TOPIC[status]``. No sockets here.
"""
import dataclasses
import hashlib
import uuid
from decimal import Decimal
from typing import NamedTuple, Optional

from proto import Code, Order, OrderIntent

NEW = "NEW"
ACCEPTED = "ACCEPTED"
PARTIALLY_FILLED = "PARTIALLY_FILLED"
FILLED = "FILLED"
CANCELLED = "CANCELLED"
REJECTED = "REJECTED"

TRANSITIONS = {
    NEW: frozenset({ACCEPTED, REJECTED}),
    ACCEPTED: frozenset({PARTIALLY_FILLED, FILLED, CANCELLED}),
    PARTIALLY_FILLED: frozenset({PARTIALLY_FILLED, FILLED, CANCELLED}),
    FILLED: frozenset(),
    CANCELLED: frozenset(),
    REJECTED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
WORKING = frozenset({NEW, ACCEPTED, PARTIALLY_FILLED})    # may still trade: cancellable

SIDES = ("BUY", "SELL")
ORDER_TYPES = ("MARKET", "LIMIT")
TIFS = ("GTC", "IOC", "FOK")
ZERO = Decimal(0)
ABSURD_MAX = Decimal("1e12")      # no size, quote size or price on any venue is this large (as risk)
MIN_EXPONENT = -18                # nor has more than 18 decimal places


class IllegalTransition(ValueError):
    def __init__(self, coid: str, src: str, dst: str):
        super().__init__(f"order {coid}: illegal transition {src} -> {dst}")
        self.src, self.dst = src, dst


# --- venue events: what a venue (paper or Coinbase) says happened to an order -------------------

class Accepted(NamedTuple):
    coid: str
    venue_order_id: str
    ts: int


class Rejected(NamedTuple):
    coid: str
    code: str
    reason: str
    ts: int


class Filled(NamedTuple):
    """One execution (or, from Coinbase's cumulative updates, the executions since the last one)."""
    coid: str
    fill_id: str
    price: Decimal
    size: Decimal
    fee: Decimal
    liquidity: str        # MAKER | TAKER
    ts: int
    done: bool = False    # the venue says the order is complete (needed for quote-size orders)


class Cancelled(NamedTuple):
    coid: str
    code: str
    reason: str
    ts: int


class Completed(NamedTuple):
    """The venue reports the order FILLED with no execution we have not seen already."""
    coid: str
    ts: int


# --- the order ----------------------------------------------------------------------------------

def _dec(v):
    return None if v is None else Decimal(v)


def _s(v):
    return None if v is None else str(v)


@dataclasses.dataclass(slots=True)
class OrderState:
    """Mutable working state of one order (the node's single source of truth, journaled whole)."""
    client_order_id: str
    product: str
    side: str
    order_type: str
    tif: str
    size: Optional[Decimal]
    quote_size: Optional[Decimal]
    limit_price: Optional[Decimal]
    post_only: bool
    reduce_only: bool
    strategy: str
    venue: str
    created_ns: int
    origin_ns: int = 0
    venue_order_id: str = ""
    status: str = NEW
    filled_size: Decimal = ZERO
    filled_value: Decimal = ZERO      # sum(price * size) of the fills: avg_price = value / size
    avg_price: Decimal = ZERO
    fees: Decimal = ZERO
    last_fill_size: Decimal = ZERO
    last_fill_price: Decimal = ZERO
    fills: int = 0
    code: str = Code.OK
    reason: str = ""
    updated_ns: int = 0
    sent: bool = False                # handed to the venue (journaled before the send)
    cancel_requested: bool = False
    est_size: Optional[Decimal] = None  # a quote-sized order's base size as estimated at the check

    @classmethod
    def from_intent(cls, intent: OrderIntent, venue: str, now_ns: int) -> "OrderState":
        return cls(client_order_id=intent.client_order_id, product=intent.product, side=intent.side,
                   order_type=intent.order_type, tif=intent.tif, size=intent.size,
                   quote_size=intent.quote_size, limit_price=intent.limit_price,
                   post_only=intent.post_only, reduce_only=intent.reduce_only, strategy=intent.strategy,
                   venue=venue, created_ns=now_ns, updated_ns=now_ns, origin_ns=intent.origin_ns)

    @property
    def working(self) -> bool:
        return self.status in WORKING

    @property
    def remaining(self) -> Optional[Decimal]:
        """Base size still to fill (None for quote-size orders)."""
        return None if self.size is None else max(ZERO, self.size - self.filled_size)

    def transition(self, dst: str, now_ns: int, code: str = None, reason: str = None) -> Order:
        if dst not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.client_order_id, self.status, dst)
        self.status = dst
        self.updated_ns = now_ns
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        return self.to_proto()

    def apply_fill(self, price: Decimal, size: Decimal, fee: Decimal) -> None:
        """Accumulate one execution (the caller transitions afterwards)."""
        self.filled_size += size
        self.filled_value += price * size
        self.fees += fee
        self.avg_price = self.filled_value / self.filled_size if self.filled_size else ZERO
        self.last_fill_size = size
        self.last_fill_price = price
        self.fills += 1

    def to_proto(self) -> Order:
        return Order(self.client_order_id, self.venue_order_id, self.product, self.side,
                     self.order_type, self.tif, self.size, self.quote_size, self.limit_price,
                     self.post_only, self.reduce_only, self.status, self.filled_size, self.avg_price,
                     self.fees, self.last_fill_size, self.last_fill_price, self.code, self.reason,
                     self.strategy, self.venue, self.created_ns, self.updated_ns, self.origin_ns)

    def to_intent(self) -> OrderIntent:
        return OrderIntent(self.product, self.side, self.order_type, self.size, self.quote_size,
                           self.limit_price, self.tif, self.post_only, self.reduce_only,
                           self.client_order_id, self.strategy, self.origin_ns)

    # journal form: plain JSON, money as exact strings
    _DEC = ("size", "quote_size", "limit_price", "filled_size", "filled_value", "avg_price", "fees",
            "last_fill_size", "last_fill_price", "est_size")

    def to_plain(self) -> dict:
        d = {k: getattr(self, k) for k in _FIELDS}        # flat: no deep copy (asdict is slow)
        for k in self._DEC:
            d[k] = _s(d[k])
        return d

    @classmethod
    def from_plain(cls, d: dict) -> "OrderState":
        d = dict(d)
        for k in cls._DEC:
            if k in d:
                d[k] = _dec(d[k])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_FIELDS = tuple(f.name for f in dataclasses.fields(OrderState))


# --- client order ids -----------------------------------------------------------------------------

def _canon(d: Optional[Decimal]) -> str:
    if d is None:
        return ""
    if not -40 <= d.adjusted() <= 40:   # absurd (validate_intent rejects it): its text, never expanded
        return str(d)
    d = d.normalize()
    return format(d, "f")


def derive_client_order_id(intent: OrderIntent) -> str:
    """A deterministic, UUID-shaped id from the intent's fields: a retried request maps to the same
    order. Two deliberately identical orders need distinct ids (or distinct ``origin_ns``)."""
    key = "|".join([intent.product, intent.side, intent.order_type, _canon(intent.size),
                    _canon(intent.quote_size), _canon(intent.limit_price), intent.tif,
                    str(intent.post_only), str(intent.reduce_only), intent.strategy,
                    str(intent.origin_ns)])
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def same_intent(o: OrderState, intent: OrderIntent) -> bool:
    """Does ``intent`` describe the order ``o`` (a retry) rather than a different order?"""
    return (o.product, o.side, o.order_type, _canon(o.size), _canon(o.quote_size),
            _canon(o.limit_price), o.tif, o.post_only) == (
        intent.product, intent.side, intent.order_type, _canon(intent.size),
        _canon(intent.quote_size), _canon(intent.limit_price), intent.tif, intent.post_only)


def validate_intent(intent: OrderIntent, spec) -> Optional[tuple]:
    """Structural checks execution needs before it can represent or route an order.
    Returns ``(Code.INVALID_ORDER, reason)`` or None. Sizes/increments/limits are risk's job."""
    bad = Code.INVALID_ORDER
    coid = intent.client_order_id
    if not coid or len(coid) > 128 or not coid.isprintable() or coid != coid.strip():
        return bad, "client_order_id must be 1..128 printable characters"
    if spec is None:
        return bad, f"no product spec for {intent.product!r} (mesh.product_specs)"
    if intent.side not in SIDES:
        return bad, f"side must be BUY or SELL, got {intent.side!r}"
    if intent.order_type not in ORDER_TYPES:
        return bad, f"order_type must be MARKET or LIMIT, got {intent.order_type!r}"
    if intent.tif not in TIFS:
        return bad, f"tif must be GTC, IOC or FOK, got {intent.tif!r}"
    for name in ("size", "quote_size", "limit_price"):
        v = getattr(intent, name)
        if v is not None:
            if v <= 0:
                return bad, f"{name} must be > 0, got {v}"
            if v > ABSURD_MAX:
                return bad, f"{name} {v} is absurdly large (> {ABSURD_MAX})"
            if v.as_tuple().exponent < MIN_EXPONENT:
                return bad, f"{name} {v} has more than {-MIN_EXPONENT} decimal places"
    if intent.order_type == "MARKET":
        if (intent.size is None) == (intent.quote_size is None):
            return bad, "a market order needs exactly one of size (base) or quote_size"
        if intent.limit_price is not None:
            return bad, "a market order has no limit_price"
        if intent.post_only:
            return bad, "post_only applies to limit orders only"
    else:
        if intent.size is None or intent.limit_price is None:
            return bad, "a limit order needs size (base) and limit_price"
        if intent.quote_size is not None:
            return bad, "a limit order is sized in base (size), not quote_size"
        if intent.post_only and intent.tif != "GTC":
            return bad, f"post_only needs tif GTC, got {intent.tif}"
    return None
