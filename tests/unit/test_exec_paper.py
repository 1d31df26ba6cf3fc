"""The paper venue: market orders walking the book (slippage, fees, quote size, tick fallback), limit
orders resting and filling on trades through them, IOC / FOK / post-only, cancel, restore, and
determinism for a seed."""
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from nodes.config import DEFAULT_SPECS
from nodes.execution.orders import Accepted, Cancelled, Filled, OrderState, Rejected
from nodes.execution.paper import PaperVenue
from proto import Book, Code, OrderIntent, Tick, Trade

BIDS = [["64990", "1"], ["64980", "2"]]
ASKS = [["65010", "0.5"], ["65020", "1"]]


def venue(slip="0", seed=7):
    return PaperVenue(DEFAULT_SPECS, seed=seed, slippage_bps=D(slip), maker_fee_bps=D(40), taker_fee_bps=D(60))


def book(v, bids=BIDS, asks=ASKS, product="BTC-USD"):
    v.on_book(Book(product, [[D(p), D(s)] for p, s in bids], [[D(p), D(s)] for p, s in asks]))


n = [0]


def order(side, otype, size=None, limit=None, tif="GTC", post_only=False, quote=None, coid=None):
    n[0] += 1
    i = OrderIntent("BTC-USD", side, otype, size=D(size) if size else None, quote_size=D(quote) if quote else None,
                    limit_price=D(limit) if limit else None, tif=tif, post_only=post_only,
                    client_order_id=coid or f"o{n[0]}")
    return OrderState.from_intent(i, "paper", 1)


def fills(events):
    return [(e.price, e.size, e.fee, e.liquidity, e.done) for e in events if type(e) is Filled]


def kinds(events):
    return [type(e).__name__ for e in events]


def test_market_buy_walks_the_book_with_slippage_and_taker_fees():
    v = venue(slip="1")
    book(v)
    ev = v.submit(order("BUY", "MARKET", "0.7"), ts=10)
    assert kinds(ev) == ["Accepted", "Filled", "Filled"]
    # 65010 * 1.0001 = 65016.501 -> 65016.51 (rounded up, against the buyer); fee 0.6 % of notional
    assert fills(ev) == [(D("65016.51"), D("0.5"), D("195.04953000"), "TAKER", False),
                         (D("65026.51"), D("0.2"), D("78.03181200"), "TAKER", True)]
    assert ev[1].fill_id == f"{ev[0].venue_order_id}-1" and ev[2].fill_id.endswith("-2") and ev[1].ts == 10
    # the liquidity taken stays taken until the next book: 0.8 left, the rest is cancelled (IOC)
    ev = v.submit(order("BUY", "MARKET", "1"))
    assert fills(ev) == [(D("65026.51"), D("0.8"), D("312.12724800"), "TAKER", False)]
    assert type(ev[-1]) is Cancelled and ev[-1].code == Code.IOC_NO_LIQUIDITY
    assert v.submit(order("BUY", "MARKET", "1"))[-1].code == Code.IOC_NO_LIQUIDITY   # nothing left
    book(v)                                              # a new book restores the levels
    assert fills(v.submit(order("BUY", "MARKET", "0.1")))[0][:2] == (D("65016.51"), D("0.1"))


def test_market_sell_slippage_rounds_down_and_quote_size_spends_notional():
    v = venue(slip="1")
    book(v)
    ev = v.submit(order("SELL", "MARKET", "1.5"))
    # 64990 * 0.9999 = 64983.501 -> 64983.50 (rounded down, against the seller)
    assert [f[:2] for f in fills(ev)] == [(D("64983.50"), D("1")), (D("64973.50"), D("0.5"))]
    v = venue()
    book(v)
    ev = v.submit(order("BUY", "MARKET", quote="6501"))
    assert fills(ev) == [(D("65010"), D("0.1"), D("39.00600000"), "TAKER", True)]
    ev = v.submit(order("BUY", "MARKET", quote="30000"))            # 0.4 left at 65010, then 65020
    got = fills(ev)
    assert got[0][:2] == (D("65010"), D("0.4")) and got[1][0] == D("65020") and got[-1][-1] is True
    spent = sum(p * s for p, s, *_ in got)
    assert D("30000") - D("65020") * D("0.00000001") < spent <= D("30000")


def test_market_orders_use_the_tick_without_a_book_and_reject_without_data():
    v = venue()
    ev = v.submit(order("BUY", "MARKET", "3"))
    assert kinds(ev) == ["Rejected"] and ev[0].code == Code.NO_MARKET_DATA
    v.on_tick(Tick("BTC-USD", D("65000"), D("64990"), D("1"), D("65010"), D("1"), D("0")))
    ev = v.submit(order("BUY", "MARKET", "3"))
    assert fills(ev) == [(D("65010"), D("3"), D("1170.18000000"), "TAKER", True)]
    assert fills(v.submit(order("SELL", "MARKET", "2")))[0][:2] == (D("64990"), D("2"))


def test_resting_limits_fill_on_trades_through_them_by_price_then_time():
    v = venue()
    book(v)
    a = order("BUY", "LIMIT", "1", "64000")
    assert kinds(v.submit(a)) == ["Accepted"] and a.client_order_id in v.resting
    assert v.on_trade(Trade("BTC-USD", "t1", D("64000"), D("5"), "SELL")) == []       # at the limit: no
    ev = v.on_trade(Trade("BTC-USD", "t2", D("63999"), D("0.3"), "SELL"), ts=99)
    assert fills(ev) == [(D("64000"), D("0.3"), D("76.80000000"), "MAKER", False)] and ev[0].ts == 99
    b = order("BUY", "LIMIT", "0.5", "64500")        # better price, later
    c = order("BUY", "LIMIT", "0.5", "64000")        # same price as a, later
    v.submit(b)
    v.submit(c)
    ev = v.on_trade(Trade("BTC-USD", "t3", D("63000"), D("1.5"), "SELL"))
    assert [(e.coid, e.size, e.done) for e in ev] == [
        (b.client_order_id, D("0.5"), True), (a.client_order_id, D("0.7"), True), (c.client_order_id, D("0.3"), False)]
    assert list(v.resting) == [c.client_order_id] and v.resting[c.client_order_id].remaining == D("0.2")
    s = order("SELL", "LIMIT", "0.1", "66000")
    v.submit(s)
    assert v.on_trade(Trade("BTC-USD", "t4", D("65999"), D("1"), "BUY")) == []
    assert fills(v.on_trade(Trade("BTC-USD", "t5", D("66000.01"), D("1"), "BUY")))[0][:2] == (D("66000"), D("0.1"))


def test_marketable_limit_takes_then_rests_and_ioc_cancels_the_rest():
    v = venue()
    book(v)
    gtc = order("BUY", "LIMIT", "1", "65015")
    ev = v.submit(gtc)
    assert fills(ev) == [(D("65010"), D("0.5"), D("195.03000000"), "TAKER", False)]
    assert v.resting[gtc.client_order_id].remaining == D("0.5")
    book(v)
    ev = v.submit(order("BUY", "LIMIT", "1", "65015", tif="IOC"))
    assert kinds(ev) == ["Accepted", "Filled", "Cancelled"] and ev[-1].code == Code.IOC_NO_LIQUIDITY
    ev = v.submit(order("BUY", "LIMIT", "1", "64000", tif="IOC"))
    assert kinds(ev) == ["Accepted", "Cancelled"] and "nothing filled" in ev[-1].reason


def test_fok_fills_whole_or_not_at_all_and_leaves_the_book_alone():
    v = venue()
    book(v)
    ev = v.submit(order("BUY", "LIMIT", "1", "65015", tif="FOK"))
    assert kinds(ev) == ["Accepted", "Cancelled"] and ev[-1].code == Code.FOK_NOT_FILLABLE
    ev = v.submit(order("BUY", "LIMIT", "1", "65020", tif="FOK"))
    assert fills(ev) == [(D("65010"), D("0.5"), D("195.03000000"), "TAKER", False),
                         (D("65020"), D("0.5"), D("195.06000000"), "TAKER", True)]
    book(v)
    ev = v.submit(order("BUY", "MARKET", "2", tif="FOK"))
    assert kinds(ev) == ["Accepted", "Cancelled"] and ev[-1].code == Code.FOK_NOT_FILLABLE


def test_post_only_rejects_when_it_would_cross_and_rests_otherwise():
    v = venue()
    book(v)
    ev = v.submit(order("BUY", "LIMIT", "1", "65010", post_only=True))
    assert kinds(ev) == ["Rejected"] and ev[0].code == Code.POST_ONLY_WOULD_CROSS and "65010" in ev[0].reason
    ev = v.submit(order("SELL", "LIMIT", "1", "64990", post_only=True))
    assert ev[0].code == Code.POST_ONLY_WOULD_CROSS
    o = order("BUY", "LIMIT", "1", "65000", post_only=True)
    assert kinds(v.submit(o)) == ["Accepted"] and o.client_order_id in v.resting
    assert kinds(v.submit(order("BUY", "LIMIT", "1", "70000", post_only=True, coid=o.client_order_id))) == ["Rejected"]


def test_cancel_and_restore():
    v = venue()
    book(v)
    o = order("BUY", "LIMIT", "1", "64000")
    vid = v.submit(o)[0].venue_order_id
    ev = v.cancel(o.client_order_id, 5, Code.KILL_SWITCH, "kill switch engaged")
    assert ev == [Cancelled(o.client_order_id, Code.KILL_SWITCH, "kill switch engaged", 5)]
    assert v.cancel(o.client_order_id) == [] and not v.resting
    # after a restart: an accepted order with one fill goes back on the book, fill ids continue
    o.status, o.venue_order_id, o.filled_size, o.fills = "PARTIALLY_FILLED", vid, D("0.3"), 1
    v2 = venue()
    v2.restore(o)
    ev = v2.on_trade(Trade("BTC-USD", "t", D("63000"), D("5"), "SELL"))
    assert [(e.fill_id, e.size, e.done) for e in ev] == [(f"{vid}-2", D("0.7"), True)]
    v2.restore(order("BUY", "MARKET", "1"))
    assert not v2.resting


ops = st.lists(st.one_of(
    st.tuples(st.just("book"), st.integers(64900, 65100), st.integers(1, 20), st.integers(1, 30)),
    st.tuples(st.just("trade"), st.integers(64800, 65200), st.integers(1, 30)),
    st.tuples(st.just("order"), st.sampled_from(["BUY", "SELL"]), st.sampled_from(["MARKET", "LIMIT"]),
              st.sampled_from(["GTC", "IOC", "FOK"]), st.integers(1, 40), st.integers(64800, 65200), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 50))), max_size=60)


def run(script, seed):
    v = PaperVenue(DEFAULT_SPECS, seed=seed, slippage_bps=D("2.5"), maker_fee_bps=D(40), taker_fee_bps=D(60))
    out, k = [], 0
    for op in script:
        if op[0] == "book":
            _, mid, spread, depth = op
            v.on_book(Book("BTC-USD", [[D(mid - spread - i), D(depth) / 10] for i in range(3)],
                           [[D(mid + spread + i), D(depth) / 10] for i in range(3)]))
        elif op[0] == "trade":
            out += v.on_trade(Trade("BTC-USD", "t", D(op[1]), D(op[2]) / 10, "SELL"), ts=len(out))
        elif op[0] == "order":
            _, side, ot, tif, size, px, po = op
            k += 1
            o = OrderState.from_intent(OrderIntent("BTC-USD", side, ot, size=D(size) / 10,
                                                   limit_price=D(px) if ot == "LIMIT" else None, tif=tif,
                                                   post_only=po and ot == "LIMIT" and tif == "GTC",
                                                   client_order_id=f"c{k}"), "paper", 0)
            out += v.submit(o, ts=len(out))
        else:
            out += v.cancel(f"c{op[1]}", ts=len(out))
    return out


@settings(max_examples=60, deadline=None)
@given(ops)
def test_deterministic_for_a_seed_and_input(script):
    a, b, c = run(script, 1), run(script, 1), run(script, 2)
    assert a == b
    strip = [(type(e).__name__, e.coid, getattr(e, "price", None), getattr(e, "size", None),
              getattr(e, "fee", None), getattr(e, "code", None)) for e in a]
    assert strip == [(type(e).__name__, e.coid, getattr(e, "price", None), getattr(e, "size", None),
                      getattr(e, "fee", None), getattr(e, "code", None)) for e in c]
    for e in a:                       # money is Decimal; sizes positive; fees never negative
        if type(e) is Filled:
            assert type(e.price) is D and e.size > 0 and e.fee >= 0
        assert type(e) in (Accepted, Rejected, Filled, Cancelled)
