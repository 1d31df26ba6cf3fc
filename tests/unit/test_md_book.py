"""The level2 book: snapshot, absolute updates, removals, top N, crossed detection."""
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from nodes.marketdata.book import L2Book


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
