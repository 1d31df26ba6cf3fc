"""The level2 book: snapshot, absolute updates, removals, top N, crossed detection."""
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from nodes.marketdata.book import DeferredSnapshot, L2Book


def test_snapshot_update_remove_top():
    b = L2Book("BTC-USD")
    assert not b.update([(D("1"), D("1"))], [], 1, 1)        # no snapshot yet: refused
    b.snapshot([(D("99.99"), D("1")), (D("99.98"), D("2")), (D("99.00"), D("0"))],
               [(D("100.01"), D("0.5")), (D("100.05"), D("3"))], 10, 11)
    assert b.valid and b.depth() == (2, 2)                     # size 0 in a snapshot is ignored
    assert b.best_bid() == (D("99.99"), D("1")) and b.best_ask() == (D("100.01"), D("0.5"))
    assert b.update([(D("99.995"), D("4")), (D("99.98"), D("0"))], [(D("100.01"), D("0.7"))], 12, 13)
    bids, asks = b.top(10)
    assert bids == [[D("99.995"), D("4")], [D("99.99"), D("1")]]
    assert asks == [[D("100.01"), D("0.7")], [D("100.05"), D("3")]]
    assert b.top(1) == ([[D("99.995"), D("4")]], [[D("100.01"), D("0.7")]])
    assert b.ts_event == 12 and b.ts_recv == 13
    b.update([(D("50"), D("0"))], [], 14, 14)                  # removing an absent level: nothing
    assert b.depth() == (2, 2)
    assert not b.crossed()


def test_crossed_detection_and_invalidate():
    b = L2Book("X")
    b.snapshot([(D("10"), D("1"))], [(D("11"), D("1"))])
    b.update([(D("11"), D("1"))], [])
    assert b.crossed()
    b.invalidate()
    assert not b.valid and b.top(5) == ([], []) and b.best_bid() is None
    assert not b.update([(D("1"), D("1"))], [])


_px = st.integers(1, 60).map(lambda t: D(t) / 4)
_sz = st.integers(0, 5).map(D)


@settings(max_examples=150, deadline=None)
@given(snap=st.lists(st.tuples(st.booleans(), _px, _sz), max_size=30),
       ups=st.lists(st.lists(st.tuples(st.booleans(), _px, _sz), max_size=10), max_size=20),
       n=st.integers(1, 12))
def test_matches_a_reference_dict_model(snap, ups, n):
    b = L2Book("P")
    b.snapshot([(p, s) for is_bid, p, s in snap if is_bid], [(p, s) for is_bid, p, s in snap if not is_bid])
    # a snapshot keeps the last size given for a price (dict semantics); zero sizes are absent
    ref = {True: {}, False: {}}
    for is_bid, p, s in snap:
        ref[is_bid][p] = s
    ref = {k: {p: s for p, s in v.items() if s > 0} for k, v in ref.items()}
    for batch in ups:
        b.update([(p, s) for is_bid, p, s in batch if is_bid], [(p, s) for is_bid, p, s in batch if not is_bid])
        for is_bid, p, s in batch:
            if s > 0:
                ref[is_bid][p] = s
            else:
                ref[is_bid].pop(p, None)
    bids, asks = b.top(n)
    assert bids == [[p, ref[True][p]] for p in sorted(ref[True], reverse=True)[:n]]
    assert asks == [[p, ref[False][p]] for p in sorted(ref[False])[:n]]
    assert b.depth() == (len(ref[True]), len(ref[False]))
    crossed = bool(ref[True] and ref[False] and max(ref[True]) >= min(ref[False]))
    assert b.crossed() == crossed


@settings(max_examples=300, deadline=None)
@given(bids=st.lists(st.tuples(_px, _sz), max_size=8), asks=st.lists(st.tuples(_px, _sz), max_size=8),
       as_lists=st.booleans())
def test_a_snapshot_read_before_it_is_loaded_answers_as_a_loaded_one(bids, asks, as_lists):
    """snapshot() keeps the levels until the book is read; crossed() answers from them when it can
    (every size positive). Repeated prices, zero sizes, empty sides and [price, size] lists (a
    replayed Book's) give the same answers as the loaded book."""
    if as_lists:
        bids, asks = [list(lv) for lv in bids], [list(lv) for lv in asks]
    lazy, loaded = L2Book("L"), L2Book("M")
    lazy.snapshot(bids, asks)
    loaded.snapshot(bids, asks)
    loaded.depth()                                  # loads it
    assert lazy.crossed() == loaded.crossed()
    assert (lazy.best_bid(), lazy.best_ask(), lazy.top(5), lazy.depth()) == \
        (loaded.best_bid(), loaded.best_ask(), loaded.top(5), loaded.depth())
    lazy.snapshot(bids, asks)                       # a pending snapshot, then an update
    assert lazy.update([(D(1), D(2))], [])
    loaded.update([(D(1), D(2))], [])
    assert lazy.top(10) == loaded.top(10)
    lazy.snapshot(bids, asks)
    lazy.invalidate()                               # a pending snapshot is dropped
    assert not lazy.valid and lazy.top(3) == ([], []) and not lazy.crossed()


@settings(max_examples=200, deadline=None)
@given(bids=st.lists(st.tuples(_px, _sz), max_size=8), asks=st.lists(st.tuples(_px, _sz), max_size=8))
def test_a_deferred_snapshot_answers_as_its_decoded_levels(bids, asks):
    """A replayed Book whose levels stay in their wire frame (replay.Prefetch): judged crossed or
    not by the same L2Book.crossed, and once read, the same book as its decoded levels give."""
    import proto
    bids, asks = [list(lv) for lv in bids], [list(lv) for lv in asks]
    frame = proto.Encoder("t").encode("md.book.L", proto.Book("L", bids, asks), 5, 6)
    deferred = DeferredSnapshot("L", frame, DeferredSnapshot.judge("L", bids, asks))
    assert deferred.levels() == (bids, asks)
    lazy, loaded = L2Book("L"), L2Book("L")
    lazy.snapshot(deferred, None)
    loaded.snapshot(bids, asks)
    assert lazy.crossed() == loaded.crossed()
    assert lazy._snap is not None                   # judged without decoding the levels
    assert (lazy.best_bid(), lazy.best_ask(), lazy.top(5), lazy.depth()) == \
        (loaded.best_bid(), loaded.best_ask(), loaded.top(5), loaded.depth())
    lazy.snapshot(deferred, None)                   # pending, then an update: decoded first
    assert lazy.update([(D(1), D(2))], []) and loaded.update([(D(1), D(2))], [])
    assert lazy.top(10) == loaded.top(10) and lazy.crossed() == loaded.crossed()
