"""Positions and PnL from fills: pure, exact (Decimal), and rebuildable from stored events.

Per product: signed quantity, average cost (of the open quantity), realised PnL with fees
subtracted, unrealised PnL marked to mid, exposure ``|qty| * mark`` in quote currency. Portfolio:
equity = starting equity + realised + unrealised; daily PnL = equity - equity at the start of the
UTC day (the baseline is taken at the first event of a new day, before that event applies).

``PositionBook.replay(envelopes)`` rebuilds the same numbers from stored Fill events (and the
market-data events that carried the marks): replaying the event store reproduces positions and
PnL to the cent (in fact exactly, since the arithmetic and its order are the same).
"""
import datetime as _dt
from decimal import Context, Decimal, ROUND_HALF_EVEN, localcontext

from proto import Book, Fill, PnL, Position, Tick

ZERO = Decimal(0)
TWO = Decimal(2)
CTX = Context(prec=34, rounding=ROUND_HALF_EVEN)    # explicit: never the (mutable) global context
DAY_NS = 86_400 * 1_000_000_000


def utc_day(ts_ns: int) -> str:
    return _dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, _dt.timezone.utc).strftime("%Y-%m-%d")


class ProductPosition:
    __slots__ = ("product", "qty", "avg_cost", "realized", "fees", "mark", "fills")

    def __init__(self, product: str):
        self.product = product
        self.qty = ZERO
        self.avg_cost = ZERO
        self.realized = ZERO
        self.fees = ZERO
        self.mark = None
        self.fills = 0

    @property
    def unrealized(self) -> Decimal:
        if self.mark is None or not self.qty:
            return ZERO
        with localcontext(CTX):
            return (self.mark - self.avg_cost) * self.qty

    @property
    def exposure(self) -> Decimal:
        with localcontext(CTX):
            return abs(self.qty) * (self.mark if self.mark is not None else self.avg_cost)

    def apply(self, side: str, price: Decimal, size: Decimal, fee: Decimal) -> None:
        with localcontext(CTX):
            signed = size if side == "BUY" else -size
            q = self.qty
            self.realized -= fee
            self.fees += fee
            if q == 0 or (q > 0) == (signed > 0):          # opening or adding
                new_q = q + signed
                self.avg_cost = (self.avg_cost * abs(q) + price * size) / abs(new_q)
                self.qty = new_q
            else:                                           # reducing, closing or flipping
                closed = min(abs(q), size)
                direction = 1 if q > 0 else -1
                self.realized += (price - self.avg_cost) * closed * direction
                new_q = q + signed
                if new_q == 0:
                    self.avg_cost = new_q = ZERO           # flat: a clean 0, not 0E-8
                elif (new_q > 0) != (q > 0):                # flipped: the rest opens at the fill price
                    self.avg_cost = price
                self.qty = new_q
            self.fills += 1

    def to_proto(self) -> Position:
        mark = self.mark if self.mark is not None else self.avg_cost
        return Position(self.product, self.qty, self.avg_cost, self.realized, self.unrealized,
                        self.exposure, mark, self.fees)


class PositionBook:
    def __init__(self, starting_equity: Decimal = ZERO):
        self.starting_equity = Decimal(starting_equity)
        self.positions: dict = {}
        self.day = None                 # UTC day the daily PnL refers to
        self.day_start_equity = self.starting_equity
        self._next_day_ns = 0           # first ns of the day after the last one seen

    def _pos(self, product) -> ProductPosition:
        p = self.positions.get(product)
        if p is None:
            p = self.positions[product] = ProductPosition(product)
        return p

    # --- inputs -----------------------------------------------------------------------------
    def roll(self, ts_ns: int) -> bool:
        """Start a new UTC day if ``ts_ns`` is in one; True when the baseline was reset."""
        if ts_ns < self._next_day_ns or ts_ns <= 0:      # the hot path: same day
            return False
        d = utc_day(ts_ns)
        self._next_day_ns = (ts_ns // DAY_NS + 1) * DAY_NS
        if self.day is None or d > self.day:
            self.day = d
            self.day_start_equity = self.equity
            return True
        return False

    def apply_fill(self, fill: Fill, ts_ns: int) -> ProductPosition:
        self.roll(ts_ns)
        p = self._pos(fill.product)
        p.apply(fill.side, fill.price, fill.size, fill.fee)
        return p

    def set_mark(self, product: str, mark: Decimal, ts_ns: int = 0) -> bool:
        """Record the mid of ``product``; True when it changed a tracked position's mark."""
        self.roll(ts_ns)
        p = self.positions.get(product)
        if p is None:
            p = self._pos(product)
        if p.mark == mark:
            return False
        p.mark = mark
        return True

    def restore_day(self, day: str, start_equity: Decimal) -> None:
        self.day, self.day_start_equity = day, Decimal(start_equity)
        start = _dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc)
        self._next_day_ns = int(start.timestamp()) * 1_000_000_000 + DAY_NS

    # --- outputs ----------------------------------------------------------------------------
    @property
    def realized(self) -> Decimal:
        with localcontext(CTX):
            return sum((p.realized for p in self.positions.values()), ZERO)

    @property
    def unrealized(self) -> Decimal:
        with localcontext(CTX):
            return sum((p.unrealized for p in self.positions.values()), ZERO)

    @property
    def fees(self) -> Decimal:
        with localcontext(CTX):
            return sum((p.fees for p in self.positions.values()), ZERO)

    @property
    def equity(self) -> Decimal:
        with localcontext(CTX):
            return self.starting_equity + self.realized + self.unrealized

    def pnl(self) -> PnL:
        with localcontext(CTX):
            eq = self.equity
            return PnL(self.realized, self.unrealized, eq - self.day_start_equity, eq, self.fees,
                       self.day or "")

    def position(self, product: str) -> Position:
        return self._pos(product).to_proto()

    def traded(self) -> list:
        """Products with at least one fill, in first-fill order."""
        return [p for p in self.positions.values() if p.fills]

    def snapshot(self) -> list:
        return [p.to_proto() for p in self.traded()]

    # --- snapshot (journal compaction) ------------------------------------------------------
    def to_plain(self) -> dict:
        """Everything but the marks (a restart has none until market data arrives)."""
        return {"starting_equity": str(self.starting_equity),
                "positions": [{"product": p.product, "qty": str(p.qty), "avg_cost": str(p.avg_cost),
                               "realized": str(p.realized), "fees": str(p.fees), "fills": p.fills}
                              for p in self.positions.values() if p.fills]}

    def restore(self, d: dict) -> None:
        for x in d["positions"]:
            p = self._pos(x["product"])
            p.qty, p.avg_cost = Decimal(x["qty"]), Decimal(x["avg_cost"])
            p.realized, p.fees, p.fills = Decimal(x["realized"]), Decimal(x["fees"]), int(x["fills"])

    # --- rebuild ------------------------------------------------------------------------------
    def on_envelope(self, env) -> None:
        """Apply one stored event: Fill (ts_event = execution time), Tick/Book (marks, ts_recv)."""
        m = env.msg
        t = type(m)
        if t is Fill:
            self.apply_fill(m, env.ts_event)
        elif t is Tick:
            if m.bid > 0 and m.ask > 0:
                self.set_mark(m.product, mid(m.bid, m.ask), env.ts_recv)
        elif t is Book:
            if m.bids and m.asks:
                self.set_mark(m.product, mid(m.bids[0][0], m.asks[0][0]), env.ts_recv)

    @classmethod
    def replay(cls, envelopes, starting_equity: Decimal = ZERO, *, venue: str = None) -> "PositionBook":
        """Rebuild from stored events (e.g. ``proto.jsonl.read(path)``); ``venue`` filters fills."""
        book = cls(starting_equity)
        seen = set()
        for env in envelopes:
            m = env.msg
            if type(m) is Fill:
                if (venue and m.venue != venue) or m.fill_id in seen:
                    continue
                seen.add(m.fill_id)
            book.on_envelope(env)
        return book


def mid(bid: Decimal, ask: Decimal, _add=CTX.add, _div=CTX.divide) -> Decimal:
    """(bid + ask) / 2 in ``CTX`` (its methods: the same result as in ``localcontext(CTX)``, without
    switching the thread's context on every tick)."""
    return _div(_add(bid, ask), TWO)
