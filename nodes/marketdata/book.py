"""A level2 order book of one product, kept from Coinbase ``l2_data`` snapshots and updates.

Sizes are absolute (``new_quantity``), ``0`` removes the level. Prices are kept in sorted lists
(``bisect``: a snapshot of tens of thousands of levels stays cheap to query for the top N) next to
a price -> size dict. Everything is ``Decimal``.

A book is *valid* only between a snapshot and the next invalidation (gap, reconnect, crossed
book): updates to an invalid book are refused (``apply`` returns False) because they would build a
wrong book.
"""
from bisect import bisect_left, insort
from decimal import Decimal
from operator import itemgetter

_ZERO = Decimal(0)
_PRICE, _SIZE = itemgetter(0), itemgetter(1)


class DeferredSnapshot:
    """A recorded book's levels still in their wire frame, for ``L2Book.snapshot``.

    A replay feeds a book per recorded Book and the node publishes books at ``book_publish_hz``
    (offline: 1 Hz of market time), so most snapshots are replaced before anything reads their
    levels. The replay's helper process (``replay.Prefetch``) judged the book there, with
    ``judge`` (``L2Book.crossed``, the one definition); the levels become Decimals here only if the
    book is read (``levels()``: the frame's ``Book`` decoded)."""
    __slots__ = ("product", "frame", "crossed")

    def __init__(self, product: str, frame: bytes, crossed: bool):
        self.product, self.frame, self.crossed = product, frame, crossed

    def levels(self):
        import proto
        book = proto.decode(self.frame).msg
        return book.bids, book.asks

    @staticmethod
    def judge(product: str, bids, asks) -> bool:
        """Would ``L2Book`` call this snapshot crossed (best bid at or above best ask)?"""
        b = L2Book(product)
        b.snapshot(bids, asks)
        return b.crossed()


class L2Book:
    __slots__ = ("product", "bids", "asks", "_bid_px", "_ask_px", "valid", "ts_event", "ts_recv",
                 "updates", "dirty", "_snap")

    def __init__(self, product: str):
        self.product = product
        self.bids: dict = {}          # price -> size
        self.asks: dict = {}
        self._bid_px: list = []       # ascending; best bid is the last
        self._ask_px: list = []       # ascending; best ask is the first
        self.valid = False
        self.ts_event = 0
        self.ts_recv = 0
        self.updates = 0
        self.dirty = False
        self._snap = None             # the last snapshot's levels, not yet loaded (see snapshot)

    # --- mutation -----------------------------------------------------------------------------------
    def snapshot(self, bids, asks, ts_event: int = 0, ts_recv: int = 0):
        """Replace the whole book (a repeated price: the last size wins; size 0: no level).

        The levels are loaded (dicts, sorted prices) when the book is next read or updated: a
        replay feeds a snapshot per recorded book and most are replaced before anything but
        ``crossed()`` looks at them (the node publishes books at ``book_publish_hz``). The book
        keeps the two sequences it is given until then: the caller must not change them.
        ``bids`` may be a ``DeferredSnapshot`` (then ``asks`` is None): its levels are decoded when
        the book is read."""
        self._snap = (bids, asks)
        self.valid = True
        self.ts_event, self.ts_recv = ts_event, ts_recv
        self.updates += 1
        self.dirty = True

    def _load(self):
        bids, asks = self._snap
        self._snap = None
        if asks is None:
            bids, asks = bids.levels()
        self.bids = {p: s for p, s in dict(bids).items() if s > _ZERO}
        self.asks = {p: s for p, s in dict(asks).items() if s > _ZERO}
        self._bid_px = sorted(self.bids)
        self._ask_px = sorted(self.asks)

    def update(self, bids, asks, ts_event: int = 0, ts_recv: int = 0) -> bool:
        """Apply absolute level sizes. Returns False (and changes nothing) on an invalid book."""
        if not self.valid:
            return False
        if self._snap is not None:
            self._load()
        _apply(self.bids, self._bid_px, bids)
        _apply(self.asks, self._ask_px, asks)
        self.ts_event, self.ts_recv = ts_event, ts_recv     # the time of the last change
        self.updates += 1
        self.dirty = True
        return True

    def invalidate(self):
        """Forget the book (it can no longer be trusted): wait for the next snapshot."""
        self.valid = False
        self._snap = None
        self.bids, self.asks, self._bid_px, self._ask_px = {}, {}, [], []
        self.dirty = False

    # --- queries --------------------------------------------------------------------------------------
    def best_bid(self):
        """``(price, size)`` or None."""
        if self._snap is not None:
            self._load()
        if not self._bid_px:
            return None
        p = self._bid_px[-1]
        return p, self.bids[p]

    def best_ask(self):
        if self._snap is not None:
            self._load()
        if not self._ask_px:
            return None
        p = self._ask_px[0]
        return p, self.asks[p]

    def crossed(self) -> bool:
        """Best bid at or above best ask: the book is wrong (a missed update)."""
        snap = self._snap
        if snap is not None:
            bids, asks = snap
            if asks is None:
                return bids.crossed             # a DeferredSnapshot, judged where it was read
            # a snapshot with every size positive: its best levels without loading it
            if bids and asks and min(map(_SIZE, bids)) > _ZERO and min(map(_SIZE, asks)) > _ZERO:
                return max(map(_PRICE, bids)) >= min(map(_PRICE, asks))
            self._load()
        return bool(self._bid_px and self._ask_px and self._bid_px[-1] >= self._ask_px[0])

    def top(self, n: int):
        """``(bids, asks)``: up to n ``[price, size]`` levels per side, best first."""
        if self._snap is not None:
            self._load()
        bp = self._bid_px
        bids = [[p, self.bids[p]] for p in reversed(bp[-n:])] if bp else []
        asks = [[p, self.asks[p]] for p in self._ask_px[:n]]
        return bids, asks

    def depth(self):
        if self._snap is not None:
            self._load()
        return len(self._bid_px), len(self._ask_px)


def _apply(levels: dict, prices: list, changes):
    for p, s in changes:
        if s > _ZERO:
            if p not in levels:
                insort(prices, p)
            levels[p] = s
        elif p in levels:
            del levels[p]
            i = bisect_left(prices, p)
            del prices[i]
