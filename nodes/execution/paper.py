"""The paper venue: a deterministic simulated exchange fed by the mesh's market data.

* Market orders take liquidity at once: they walk the levels of the last ``md.book`` (and consume
  them until the next book replaces it), or, with no book, fill at the ``md.tick`` best bid/ask
  (taken as unlimited depth). Each fill price moves against the order by ``slippage_bps`` (rounded
  to the price tick, adversely). A size in quote (``quote_size``) spends that notional, fees on top.
* Limit orders: the part that crosses the book fills at once as taker at the book's prices (no
  slippage, never beyond the limit); the rest rests (GTC) or is cancelled (IOC). FOK fills whole or
  not at all. Post-only orders that would cross are rejected. A resting order fills, as maker at its
  own price, when an ``md.trade`` prints strictly through it; the fill size is the traded volume,
  shared between our resting orders by price then time.
* Fees: taker/maker bps of the notional, rounded to 1e-8 quote.
* Deterministic: the seed fixes venue order ids; everything else is a function of the inputs
  (timestamps come in with them). No clock, no sockets, no sleeps; latency is the node's job.
"""
import random
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from proto import Code

from .orders import Accepted, Cancelled, Filled, Rejected

ZERO = Decimal(0)
BPS = Decimal(10000)
FEE_QUANTUM = Decimal("0.00000001")


def round_to(x: Decimal, inc: Decimal, rounding) -> Decimal:
    return (x / inc).to_integral_value(rounding=rounding) * inc


class _Resting:
    __slots__ = ("coid", "product", "side", "price", "remaining", "seq", "venue_order_id", "nfills")

    def __init__(self, coid, product, side, price, remaining, seq, venue_order_id, nfills):
        self.coid, self.product, self.side, self.price = coid, product, side, price
        self.remaining, self.seq, self.venue_order_id, self.nfills = remaining, seq, venue_order_id, nfills


class PaperVenue:
    name = "paper"

    def __init__(self, specs: dict, *, seed: int = 0, slippage_bps=ZERO, maker_fee_bps=ZERO,
                 taker_fee_bps=ZERO):
        self.specs = specs                     # product -> nodes.config.ProductSpec
        self.rng = random.Random(seed)
        self.slippage = Decimal(slippage_bps) / BPS
        self.maker_fee = Decimal(maker_fee_bps) / BPS
        self.taker_fee = Decimal(taker_fee_bps) / BPS
        self.books: dict = {}                  # product -> (bids, asks): working copies
        self.ticks: dict = {}                  # product -> (bid, ask)
        self.resting: dict = {}                # coid -> _Resting
        self._seq = 0
        self.submitted = 0                     # orders received (tests: "the venue was called once")
        self.cancels = 0

    # --- market data ----------------------------------------------------------------------------
    def on_book(self, book, ts: int = 0) -> list:
        self.books[book.product] = ([[p, s] for p, s in book.bids], [[p, s] for p, s in book.asks])
        return []

    def on_tick(self, tick, ts: int = 0) -> list:
        self.ticks[tick.product] = (tick.bid if tick.bid > 0 else None, tick.ask if tick.ask > 0 else None)
        return []

    def on_trade(self, trade, ts: int = 0) -> list:
        """Fill resting orders the trade printed through (strictly), sized by its volume."""
        hit = [r for r in self.resting.values() if r.product == trade.product and (
            (r.side == "BUY" and r.price > trade.price) or (r.side == "SELL" and r.price < trade.price))]
        if not hit:
            return []
        hit.sort(key=lambda r: ((-r.price if r.side == "BUY" else r.price), r.seq))
        volume = trade.size
        events = []
        for r in hit:
            if volume <= 0:
                break
            take = min(r.remaining, volume)
            volume -= take
            r.remaining -= take
            r.nfills += 1
            fee = self._fee(r.price * take, self.maker_fee)
            done = r.remaining <= 0
            if done:
                del self.resting[r.coid]
            events.append(Filled(r.coid, f"{r.venue_order_id}-{r.nfills}", r.price, take, fee, "MAKER",
                                 ts, done))
        return events

    # --- orders -----------------------------------------------------------------------------
    def best(self, product: str):
        """(best bid, best ask) from the book, else the tick; None where unknown."""
        book = self.books.get(product)
        if book is not None:
            return (book[0][0][0] if book[0] else None), (book[1][0][0] if book[1] else None)
        return self.ticks.get(product, (None, None))

    def _levels(self, product: str, side: str):
        """The opposite side's levels ([price, size or None=unlimited]) or None without data."""
        book = self.books.get(product)
        if book is not None:
            return book[1] if side == "BUY" else book[0]
        tick = self.ticks.get(product)
        if tick is not None:
            px = tick[1] if side == "BUY" else tick[0]
            return [[px, None]] if px is not None else []
        return None

    def _venue_id(self) -> str:
        return f"paper-{self.rng.getrandbits(64):016x}"

    def _fee(self, notional: Decimal, rate: Decimal) -> Decimal:
        return (notional * rate).quantize(FEE_QUANTUM, rounding=ROUND_HALF_EVEN)

    def _slip(self, price: Decimal, side: str, tick: Decimal) -> Decimal:
        if not self.slippage:
            return price
        if side == "BUY":
            return round_to(price * (1 + self.slippage), tick, ROUND_CEILING)
        return round_to(price * (1 - self.slippage), tick, ROUND_FLOOR)

    def _plan(self, levels, side, spec, *, base=None, quote=None, limit=None, slip=False):
        """Walk ``levels`` without touching them: ([(index, price, size)], done)."""
        plan, rem_base, rem_quote = [], base, quote
        for i, (lvl_px, avail) in enumerate(levels):
            if avail is not None and avail <= 0:
                continue
            if limit is not None and ((side == "BUY" and lvl_px > limit) or (side == "SELL" and lvl_px < limit)):
                break
            px = self._slip(lvl_px, side, spec.quote_increment) if slip else lvl_px
            if rem_base is not None:
                take = rem_base if avail is None else min(rem_base, avail)
            else:
                take = round_to(rem_quote / px, spec.base_increment, ROUND_FLOOR)
                if avail is not None:
                    take = min(take, avail)
            if take <= 0:
                break
            plan.append((i, px, take))
            if rem_base is not None:
                rem_base -= take
                if rem_base <= 0:
                    break
            else:
                rem_quote -= px * take
        if base is not None:
            done = rem_base <= 0
        else:   # quote-sized: done when what is left cannot buy one more increment at the last price
            last_px = plan[-1][1] if plan else None
            done = last_px is not None and rem_quote < last_px * spec.base_increment
        return plan, done

    def _execute(self, levels, plan, coid, vid, side, nfills, ts, rate, liquidity):
        events = []
        for i, px, take in plan:
            if levels[i][1] is not None:
                levels[i][1] -= take
            nfills += 1
            events.append(Filled(coid, f"{vid}-{nfills}", px, take, self._fee(px * take, rate), liquidity, ts))
        # drop emptied levels so the next order walks on
        levels[:] = [lv for lv in levels if lv[1] is None or lv[1] > 0]
        return events

    def submit(self, o, ts: int = 0) -> list:
        """Accept/reject ``o`` (an OrderState) and execute what can execute now."""
        self.submitted += 1
        coid = o.client_order_id
        spec = self.specs.get(o.product)
        if spec is None:
            return [Rejected(coid, Code.INVALID_ORDER, f"paper venue: no product spec for {o.product}", ts)]
        if coid in self.resting:
            return [Rejected(coid, Code.DUPLICATE, "paper venue: client_order_id already resting", ts)]
        levels = self._levels(o.product, o.side)
        if o.order_type == "MARKET":
            if levels is None:
                return [Rejected(coid, Code.NO_MARKET_DATA,
                                 f"paper venue: no book or tick for {o.product}", ts)]
            vid = self._venue_id()
            plan, done = self._plan(levels, o.side, spec, base=o.size, quote=o.quote_size, slip=True)
            if o.tif == "FOK" and not done:
                return [Accepted(coid, vid, ts),
                        Cancelled(coid, Code.FOK_NOT_FILLABLE, "fill-or-kill: not enough liquidity", ts)]
            events = [Accepted(coid, vid, ts)]
            events += self._execute(levels, plan, coid, vid, o.side, o.fills, ts, self.taker_fee, "TAKER")
            return self._finish(events, done, coid, ts)
        # LIMIT
        bid, ask = self.best(o.product)
        crosses = (o.side == "BUY" and ask is not None and o.limit_price >= ask) or \
                  (o.side == "SELL" and bid is not None and o.limit_price <= bid)
        if o.post_only and crosses:
            return [Rejected(coid, Code.POST_ONLY_WOULD_CROSS,
                             f"post-only {o.side} at {o.limit_price} would cross "
                             f"(best {'ask' if o.side == 'BUY' else 'bid'} {ask if o.side == 'BUY' else bid})", ts)]
        vid = self._venue_id()
        events = [Accepted(coid, vid, ts)]
        remaining = o.remaining
        plan, done = ([], False)
        if crosses and levels:
            plan, done = self._plan(levels, o.side, spec, base=remaining, limit=o.limit_price)
        if o.tif == "FOK" and not done:
            return events + [Cancelled(coid, Code.FOK_NOT_FILLABLE, "fill-or-kill: not enough liquidity at the limit", ts)]
        events += self._execute(levels, plan, coid, vid, o.side, o.fills, ts, self.taker_fee, "TAKER") if plan else []
        left = remaining - sum((p[2] for p in plan), ZERO)
        if left <= 0:
            return self._finish(events, True, coid, ts)
        if o.tif == "IOC":
            return self._finish(events, False, coid, ts)
        self._seq += 1
        self.resting[coid] = _Resting(coid, o.product, o.side, o.limit_price, left, self._seq, vid,
                                      o.fills + len(plan))
        return events

    @staticmethod
    def _finish(events, done, coid, ts):
        fills = [e for e in events if type(e) is Filled]
        if done and fills:
            fills[-1] = fills[-1]._replace(done=True)
            events = [e for e in events if type(e) is not Filled] + fills
            return events
        if not fills:
            return events + [Cancelled(coid, Code.IOC_NO_LIQUIDITY, "no liquidity: nothing filled", ts)]
        return events + [Cancelled(coid, Code.IOC_NO_LIQUIDITY, "remainder cancelled: no more liquidity", ts)]

    def cancel(self, coid: str, ts: int = 0, code: str = Code.OK, reason: str = "cancelled by request") -> list:
        r = self.resting.pop(coid, None)
        if r is None:
            return []
        self.cancels += 1
        return [Cancelled(coid, code, reason, ts)]

    def restore(self, o) -> bool:
        """Re-rest an open GTC limit order after a restart (queue position starts afresh). False for
        anything else: an order that was executing immediately when the node died cannot resume."""
        if o.order_type != "LIMIT" or o.tif != "GTC" or not o.remaining:
            return False
        self._seq += 1
        self.resting[o.client_order_id] = _Resting(o.client_order_id, o.product, o.side, o.limit_price,
                                                   o.remaining, self._seq, o.venue_order_id, o.fills)
        return True
