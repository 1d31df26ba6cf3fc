"""Every message of the wire contract, as typed records.

A message is a ``typing.NamedTuple`` registered under a short type tag. On the wire its body is a
msgpack array of its fields in declaration order (the tuple layout measured ~2x faster than maps).
Compatibility rule: a minor protocol version may only append fields with defaults; a decoder
ignores trailing fields it does not know and fills missing trailing fields from defaults.

Money (prices, sizes, notional, PnL, fees) is always ``Decimal``: never float. Floats appear only
for statistics (volatility estimates) and durations.
"""
import functools
from decimal import Decimal
from typing import Any, NamedTuple, Optional, get_type_hints

from msgpack import ExtType as _ExtType, packb as _packb

from . import _native
from .errors import DecodeError, EncodeError

# --- field kinds beyond plain python types -------------------------------------------------------


class Levels(list):
    """Annotation marker: a list of ``[price, size]`` pairs of Decimals (a book side)."""


class DecMap(dict):
    """Annotation marker: a map of str -> Decimal."""


class IntMap(dict):
    """Annotation marker: a map of str -> int (counters)."""


REGISTRY: dict = {}   # tag -> class


def _bad_dec(v, name):
    if type(v) is Decimal:
        raise EncodeError(f"{name}: refusing non-finite Decimal {v}")
    raise EncodeError(f"{name}: money must be Decimal, got {type(v).__name__}")


def _dec_in(v, name):
    """Wire string -> finite Decimal, or DecodeError."""
    if type(v) is not str or len(v) > 64:
        raise DecodeError(f"{name}: expected decimal string, got {type(v).__name__}")
    try:
        d = Decimal(v)
    except ArithmeticError:
        raise DecodeError(f"{name}: bad decimal {v!r:.40}") from None
    if not d.is_finite():
        raise DecodeError(f"{name}: non-finite decimal {v!r:.20}")
    return d


class _DecimalCache(dict):
    """Wire string -> finite Decimal, memoised. Prices and sizes repeat heavily on a feed (they sit
    on a tick grid), and a dict hit costs a third of ``Decimal(str)``. Decimals are immutable, so
    sharing them is safe. Bounded: cleared when full. A miss validates; a hit was validated."""

    MAX = 1 << 16

    def __missing__(self, v):
        if type(v) is not str or len(v) > 64:
            raise _WireTypeError(v)
        d = Decimal(v)              # ArithmeticError on garbage: mapped to DecodeError by caller
        if not d.is_finite():
            raise DecodeError(f"non-finite decimal {v!r:.20}")
        if len(self) >= self.MAX:
            self.clear()
        self[v] = d
        return d


class _WireTypeError(Exception):
    def __init__(self, value):
        self.value = value


DECIMALS = _DecimalCache()


def _dec_out(v, name):
    if type(v) is Decimal and v.is_finite():
        return str(v)
    _bad_dec(v, name)


def _levels_in(v, name):
    if type(v) is not list:
        raise DecodeError(f"{name}: expected list of [price, size], got {type(v).__name__}")
    out = []
    cache = DECIMALS
    try:
        for lv in v:
            if type(lv) is not list or len(lv) != 2:
                raise DecodeError(f"{name}: every level must be [price, size], got {lv!r:.60}")
            out.append([cache[lv[0]], cache[lv[1]]])     # memoised, validated on a miss
    except (ArithmeticError, _WireTypeError, TypeError, DecodeError) as e:
        if isinstance(e, DecodeError) and "every level" in str(e):
            raise
        for lv in v:                                      # name the bad value
            _dec_in(lv[0], name), _dec_in(lv[1], name)
        raise DecodeError(f"{name}: bad level") from None
    return out


def _levels_out(v, name):
    return [[_dec_out(p, name), _dec_out(s, name)] for p, s in v]


def _decmap_in(v, name):
    if type(v) is not dict:
        raise DecodeError(f"{name}: expected map, got {type(v).__name__}")
    return {_str_key(k, name): _dec_in(x, name) for k, x in v.items()}


def _decmap_out(v, name):
    return {k: _dec_out(x, name) for k, x in v.items()}


def _str_key(k, name):
    if type(k) is not str:
        raise DecodeError(f"{name}: map keys must be strings")
    return k


def _intmap_in(v, name):
    if type(v) is not dict:
        raise DecodeError(f"{name}: expected map, got {type(v).__name__}")
    for k, x in v.items():
        if type(k) is not str or type(x) is not int:
            raise DecodeError(f"{name}: expected str -> int, got {k!r:.30}: {type(x).__name__}")
    return v


def _float_in(v, name):
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise DecodeError(f"{name}: expected float, got {t.__name__}")


def _float_out(v, name):
    if type(v) is float or (type(v) is int):
        return float(v)
    raise EncodeError(f"{name}: expected float, got {type(v).__name__}")


def _any_out(v, name):
    """Free-form payloads (Reply.data): Decimals and nested records become msgpack ext types."""
    t = type(v)
    if t is Decimal:
        return _ExtType(1, _dec_out(v, name).encode("ascii"))
    tag = getattr(v, "TAG", None)
    if tag is not None and REGISTRY.get(tag) is t:
        return _ExtType(2, _packb([tag, t._encode(v)], use_bin_type=True))
    if t is list or t is tuple or t is set or t is frozenset:
        return [_any_out(x, name) for x in v]
    if t is dict:
        return {k: _any_out(x, name) for k, x in v.items()}
    if v is None or t in (str, int, bool, float, bytes):
        return v
    raise EncodeError(f"{name}: cannot encode {t.__name__} on the wire")


def _ident(v, name):
    return v


def _typed(tp):
    def check(v, name):
        if type(v) is not tp:
            raise DecodeError(f"{name}: expected {tp.__name__}, got {type(v).__name__}")
        return v
    return check


def _typed_out(tp):
    def check(v, name):
        if type(v) is not tp:
            raise EncodeError(f"{name}: expected {tp.__name__}, got {type(v).__name__}")
        return v
    return check


_levels_in_py = _levels_in
if _native.SP is not None:      # the same loop in C (proto._speedups); the Python one names errors
    _levels_in = functools.partial(_native.SP.levels_in, DECIMALS, _levels_in_py)


_IN = {Decimal: _dec_in, Levels: _levels_in, DecMap: _decmap_in, IntMap: _intmap_in, float: _float_in,
       Any: _ident}
_OUT = {Decimal: _dec_out, Levels: _levels_out, DecMap: _decmap_out, IntMap: _ident, float: _float_out,
        Any: _any_out}


def _field_kind(tp):
    optional = False
    if getattr(tp, "__origin__", None) is not None and type(None) in getattr(tp, "__args__", ()):
        optional = True
        tp = [a for a in tp.__args__ if a is not type(None)][0]
    if tp not in _IN and tp not in (int, str, bool, list, dict, bytes):
        raise TypeError(f"unsupported field type {tp!r}")
    return tp, optional


def _compile(cls):
    """Generate fast per-class body encode/decode functions (like namedtuple, with exec)."""
    hints = get_type_hints(cls)
    ns = {"_tuple_new": tuple.__new__, "_cls": cls, "_C": DECIMALS, "_null": _null, "_str": str}
    dec_lines, enc_lines, args = [], [], []
    for i, f in enumerate(cls._fields):
        tp, opt = _field_kind(hints[f])
        a = f"a{i}"
        args.append(a)
        ns[f"n{i}"] = f"{cls.TAG}.{f}"
        ns[f"o{i}"] = _OUT[tp] if tp in _OUT else _typed_out(tp)
        ns[f"i{i}"] = _IN[tp] if tp in _IN else _typed(tp)
        ns[f"t{i}"] = tp
        if tp is Decimal:      # inline the hot case; o{i} only runs to raise a named error
            dout = f"(_str({a}) if type({a}) is t{i} and {a}.is_finite() else o{i}({a}, n{i}))"
        elif tp in _OUT:
            dout = f"o{i}({a}, n{i})"
        else:
            dout = f"({a} if type({a}) is t{i} else o{i}({a}, n{i}))"
        if opt:
            dout = f"(None if {a} is None else {dout})"
        enc_lines.append(dout)
        if tp is Decimal:      # the hot case: a memoised, validated string -> Decimal
            stmt = f"{a} = _C[{a}]"
        elif tp in _IN:
            stmt = f"{a} = i{i}({a}, n{i})"
        else:
            stmt = f"if type({a}) is not t{i}: i{i}({a}, n{i})"
        if opt:
            stmt = f"if {a} is not None: {stmt}" if "\n" not in stmt else stmt
        elif tp is not Any and tp is not Decimal:
            stmt = f"if {a} is None: _null(n{i})\n    " + stmt
        dec_lines.append(stmt)
    al = ", ".join(args) + ("," if len(args) == 1 else "")
    body = "\n    ".join(dec_lines)
    src = (f"def _decode(b):\n    {al} = b\n    {body}\n    return _tuple_new(_cls, ({al}))\n"
           f"def _encode(m):\n    {al} = m\n    return [{', '.join(enc_lines)}]\n")
    exec(src, ns)
    dec = ns["_decode"]
    decimal_fields = [f for f in cls._fields if _field_kind(hints[f])[0] is Decimal]

    def _decode(b):
        try:
            return dec(b)
        except (ArithmeticError, _WireTypeError, TypeError, DecodeError) as e:
            # find the offending field for a message that names it
            for name, v in zip(cls._fields, b):
                if name in decimal_fields and v is not None and not (
                        type(v) is str and v in DECIMALS):
                    if type(v) is not str:
                        raise DecodeError(f"{cls.TAG}.{name}: expected decimal string, got {type(v).__name__}") from None
                    try:
                        d = Decimal(v)
                    except ArithmeticError:
                        raise DecodeError(f"{cls.TAG}.{name}: bad decimal {v!r:.40}") from None
                    if not d.is_finite():
                        raise DecodeError(f"{cls.TAG}.{name}: non-finite decimal {v!r:.20}") from None
                if v is None and name in decimal_fields and name not in cls._field_defaults \
                        and hints[name] is Decimal:
                    raise DecodeError(f"{cls.TAG}.{name}: null is not allowed") from None
            if isinstance(e, DecodeError):
                raise
            raise DecodeError(f"{cls.TAG}: bad field value ({type(e).__name__})") from None
    return _decode, ns["_encode"], dec


def _null(name):
    raise DecodeError(f"{name}: null is not allowed")


def field_kinds(cls):
    """One letter per field of a record for the C paths (proto._speedups): D Decimal, S str,
    I int, B bool, F float, L book levels; upper case required, lower case optional. None if the
    record has a field of another kind."""
    hints = get_type_hints(cls)
    out = []
    for f in cls._fields:
        tp, opt = _field_kind(hints[f])
        k = {Decimal: "D", str: "S", int: "I", bool: "B", float: "F", Levels: "L"}.get(tp)
        if k is None:
            return None
        out.append(k.lower() if opt else k)
    return "".join(out).encode("ascii")


def message(tag: str):
    """Class decorator: register a NamedTuple message under a wire type tag."""
    def wrap(cls):
        if tag in REGISTRY:
            raise ValueError(f"duplicate message tag {tag}")
        cls.TAG = tag
        dec, enc, fast = _compile(cls)
        cls._decode = staticmethod(dec)
        cls._encode = staticmethod(enc)
        # the same decoder without the error-naming wrapper (proto._speedups calls it and, on any
        # exception, hands the frame to the Python decode, which names the field); in C for the
        # records of plain fields when the extension is built (it raises for anything unusual)
        kinds = field_kinds(cls) if _native.SP is not None else None
        if kinds is not None:
            fast = functools.partial(_native.SP.record_in, cls, kinds, DECIMALS)
            # the encoder too: anything unusual is encoded (or refused, naming the field) by the
            # Python one
            cls._encode = staticmethod(functools.partial(_native.SP.record_out, enc, kinds))
        cls._decode_fast = staticmethod(fast)
        cls._nreq = len(cls._fields) - len(cls._field_defaults)
        REGISTRY[tag] = cls
        return cls
    return wrap


def decode_body(cls, body):
    """Validate a decoded msgpack array against ``cls`` and build the record."""
    if type(body) is not list:
        raise DecodeError(f"{cls.TAG}: body must be an array, got {type(body).__name__}")
    n = len(cls._fields)
    if len(body) != n:
        if len(body) > n:          # a newer minor version appended fields: ignore them
            body = body[:n]
        elif len(body) >= cls._nreq:
            body = body + [cls._field_defaults[f] for f in cls._fields[len(body):]]
        else:
            raise DecodeError(f"{cls.TAG}: expected {n} fields, got {len(body)}")
    return cls._decode(body)


def encode_body(msg):
    """The wire array of a registered record (money as exact strings). Raises EncodeError."""
    try:
        return msg._encode(msg)
    except EncodeError:
        raise
    except (AttributeError, TypeError, ValueError) as e:
        raise EncodeError(f"cannot encode {type(msg).__name__}: {e}") from None


# --- market data ---------------------------------------------------------------------------------

@message("Tick")
class Tick(NamedTuple):
    """Best price snapshot of one product. Envelope ts_event = exchange time, ts_recv = receive."""
    product: str
    price: Decimal
    bid: Decimal
    bid_size: Decimal
    ask: Decimal
    ask_size: Decimal
    volume_24h: Decimal


@message("Trade")
class Trade(NamedTuple):
    product: str
    trade_id: str
    price: Decimal
    size: Decimal
    side: str           # taker (aggressor) side: "BUY" or "SELL" (Coinbase sends the maker side)


@message("Book")
class Book(NamedTuple):
    """Top N levels of the locally maintained level2 book, best first."""
    product: str
    bids: Levels
    asks: Levels


@message("FeedStatus")
class FeedStatus(NamedTuple):
    """Health of one product's feed. Risk refuses orders while ``healthy`` is false."""
    product: str
    healthy: bool
    state: str          # "OK" | "STALE" | "GAP" | "DISCONNECTED" | "CROSSED"
    reason: str
    last_msg_age_s: float


@message("RawFrame")
class RawFrame(NamedTuple):
    """An exchange frame exactly as received (stored for exact parser replays)."""
    connection: str
    data: str


@message("FeedGap")
class FeedGap(NamedTuple):
    connection: str
    expected: int
    got: int
    products: list


@message("FeedStale")
class FeedStale(NamedTuple):
    connection: str
    silent_s: float
    products: list


# --- orders --------------------------------------------------------------------------------------

@message("OrderIntent")
class OrderIntent(NamedTuple):
    """Request to execution (and the body of a risk check): an order before it exists."""
    product: str
    side: str                              # "BUY" | "SELL"
    order_type: str                        # "MARKET" | "LIMIT"
    size: Optional[Decimal] = None         # base size
    quote_size: Optional[Decimal] = None   # quote size (market buys)
    limit_price: Optional[Decimal] = None
    tif: str = "GTC"                       # "GTC" | "IOC" | "FOK"
    post_only: bool = False
    reduce_only: bool = False
    client_order_id: str = ""              # empty: derived from the intent
    strategy: str = ""
    origin_ns: int = 0                     # ts_recv of the market event that caused it (tick-to-trade)


@message("Order")
class Order(NamedTuple):
    """The full state of one order; published on every state change (order.<status>)."""
    client_order_id: str
    venue_order_id: str
    product: str
    side: str
    order_type: str
    tif: str
    size: Optional[Decimal]
    quote_size: Optional[Decimal]
    limit_price: Optional[Decimal]
    post_only: bool
    reduce_only: bool
    status: str          # NEW ACCEPTED PARTIALLY_FILLED FILLED CANCELLED REJECTED
    filled_size: Decimal
    avg_price: Decimal
    fees: Decimal
    last_fill_size: Decimal
    last_fill_price: Decimal
    code: str            # proto.errors.Code for rejections/cancels, "OK" otherwise
    reason: str
    strategy: str
    venue: str           # "paper" | "coinbase"
    created_ns: int
    updated_ns: int
    origin_ns: int = 0   # from the intent: ts_recv of the market event that caused the order


@message("Fill")
class Fill(NamedTuple):
    fill_id: str
    client_order_id: str
    product: str
    side: str
    price: Decimal
    size: Decimal
    fee: Decimal
    liquidity: str       # "MAKER" | "TAKER"
    venue: str


@message("Position")
class Position(NamedTuple):
    product: str
    qty: Decimal               # signed base quantity
    avg_cost: Decimal
    realized_pnl: Decimal      # fees included
    unrealized_pnl: Decimal    # marked to mid
    exposure: Decimal          # |qty| * mark, quote currency
    mark: Decimal
    fees: Decimal


@message("PnL")
class PnL(NamedTuple):
    realized: Decimal
    unrealized: Decimal
    daily: Decimal             # since 00:00 UTC
    equity: Decimal            # starting equity + realized + unrealized
    fees: Decimal
    day: str                   # UTC day, YYYY-MM-DD


# --- risk ----------------------------------------------------------------------------------------

@message("RiskDecision")
class RiskDecision(NamedTuple):
    client_order_id: str
    product: str
    approved: bool
    code: str
    reason: str
    compute_ns: int


@message("RiskState")
class RiskState(NamedTuple):
    state: str          # "ACTIVE" | "REDUCING" | "HALTED"
    previous: str
    reason: str


@message("KillSwitch")
class KillSwitch(NamedTuple):
    engaged: bool
    reason: str
    source: str         # "manual" | "auto:daily_loss" | "auto:drawdown" | "auto:error_rate" | "auto:stale_feed" | "auto:execution_down"
    since_ns: int


@message("RiskExposure")
class RiskExposure(NamedTuple):
    gross: Decimal
    net: Decimal
    positions: DecMap   # product -> signed qty
    exposures: DecMap   # product -> quote exposure
    state: str
    killswitch: bool


@message("RiskBand")
class RiskBand(NamedTuple):
    product: str
    last: Decimal
    mid: Decimal
    stddev: float       # rolling stddev of log returns
    ewma: float         # sqrt of EWMA variance of log returns
    atr: float          # Wilder ATR, price units
    band_low: Decimal
    band_high: Decimal
    method: str
    width: Optional[Decimal] = None   # band half-width in price units, on the tick grid; None: not ready


@message("RiskSnapshot")
class RiskSnapshot(NamedTuple):
    """Everything the pre-trade checks need from risk, published on every change and every
    ``risk.publish_interval_s`` (``risk.snapshot``). Execution refuses orders once the latest one
    is older than ``max_age_ms`` (measured on its own clock from receipt).

    ``products`` maps each product to a plain map of strings: the limits (``max_position``,
    ``max_exposure``, ``max_order_notional``, ``max_price_band_pct``, ``max_slippage_bps``: Decimal
    strings), the volatility band (``band``: half-width in price units as a Decimal string, ""
    while not ready; ``band_method``; ``band_why``) and feed health (``feed``: "" when healthy,
    else the refusal code FEED_STALE / FEED_GAP; ``feed_reason``)."""
    version: int               # +1 per snapshot published by this risk process
    epoch_ns: int              # when this risk process started: a new epoch restarts versions
    max_age_ms: int            # risk.state_max_age_ms
    state: str                 # ACTIVE | REDUCING | HALTED
    state_reason: str
    killswitch: bool
    ks_source: str
    ks_reason: str
    ks_since_ns: int
    flatten_on_halt: bool
    max_gross_exposure: Decimal
    max_orders_per_s: int
    products: dict


# --- requests and replies -------------------------------------------------------------------------

@message("Reply")
class Reply(NamedTuple):
    """The answer to every request. ``code`` is a proto.errors.Code; ``data`` is the payload."""
    ok: bool
    code: str
    reason: str
    data: Any = None


@message("CancelOrder")
class CancelOrder(NamedTuple):
    client_order_id: str


@message("CancelAll")
class CancelAll(NamedTuple):
    product: str = ""   # empty: every product


@message("Query")
class Query(NamedTuple):
    """A read-only request: ``what`` is e.g. "status", "orders", "positions", "pnl", "risk"."""
    what: str
    arg: str = ""


@message("KillSwitchCmd")
class KillSwitchCmd(NamedTuple):
    action: str         # "engage" | "release" | "status"
    reason: str = ""


# --- nodes and operations -------------------------------------------------------------------------

@message("Heartbeat")
class Heartbeat(NamedTuple):
    node: str
    pid: int
    state: str          # lifecycle state: STARTING RUNNING STOPPING STOPPED FAILED
    started_ns: int
    uptime_s: float
    counters: IntMap
    host: str


@message("ProcessEvent")
class ProcessEvent(NamedTuple):
    """A supervisord process state change, from the event listener."""
    program: str
    group: str
    state: str          # "EXITED" | "FATAL" | "RUNNING" | "BACKOFF" | "STOPPED"
    pid: int
    expected: bool
    detail: str


@message("AlertEvent")
class AlertEvent(NamedTuple):
    key: str            # dedupe key
    severity: str       # "info" | "warning" | "critical"
    title: str
    text: str
    resolved: bool
    channels: list      # where it was sent: "slack", "teams", "log"
