"""The seeded synthetic market and the Coinbase session that serves it (fake exchange and the
node's synthetic source share both)."""
import math
import random
from decimal import Decimal

from nodes.marketdata.book import L2Book
from nodes.marketdata.normalize import Ack, ErrorFrame, Gap, L2Ev, Normalizer, ParseError, TickEv, TradeEv
from nodes.marketdata.synthetic import CALM, TURBULENT, Market, Session, fmt_ts, model_for

T0 = 1772366400 * 10**9
PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]


def run(market, steps, dt=0.1):
    ups = []
    for i in range(steps):
        ups.append(market.step(dt, T0 + int(i * dt * 1e9)))
    return ups


def trades_of(ups):
    return [(t["product_id"], t["price"], t["size"], t["side"]) for u in ups for ts in u.trades.values() for t in ts]


def test_same_seed_same_market_different_seed_different():
    a, b, c = Market(PRODUCTS, seed=5), Market(PRODUCTS, seed=5), Market(PRODUCTS, seed=6)
    ta, tb, tc = trades_of(run(a, 300)), trades_of(run(b, 300)), trades_of(run(c, 300))
    assert ta and ta == tb and ta != tc
    # a product's path does not depend on which other products are simulated
    solo = Market(["ETH-USD"], seed=5)
    assert [t for t in ta if t[0] == "ETH-USD"] == trades_of(run(solo, 300))


def test_prices_and_sizes_on_the_grids_and_never_crossed():
    m = Market(PRODUCTS, seed=2)
    for u in run(m, 400):
        for name, pr in m.products.items():
            assert max(pr.bids) < min(pr.asks), name
            assert len(pr.bids) == len(pr.asks) == pr.m.depth
        for ts in u.trades.values():
            for t in ts:
                spec = model_for(t["product_id"])
                assert Decimal(t["price"]) % spec.tick == 0 and Decimal(t["size"]) % spec.lot == 0
                assert Decimal(t["size"]) > 0 and t["side"] in ("BUY", "SELL")


def test_spreads_depth_and_volatility_are_plausible():
    m = Market(["BTC-USD"], seed=11)
    pr = m.products["BTC-USD"]
    spreads, mids, regimes = [], [], set()
    for i in range(7200):                       # two simulated hours, 1 s steps
        m.step(1.0, T0 + i * 10**9)
        spreads.append(min(pr.asks) - max(pr.bids))
        mids.append((min(pr.asks) + max(pr.bids)) / 2)
        regimes.add(pr.regime)
    spreads.sort()
    assert 1 <= spreads[len(spreads) // 2] <= 20            # median spread: a few cents on BTC
    rets = [math.log(b / a) for a, b in zip(mids, mids[1:])]
    mean = sum(rets) / len(rets)
    vol = math.sqrt(sum((r - mean) ** 2 for r in rets) / len(rets) * 365.25 * 24 * 3600)
    assert 0.15 < vol < 4.0, vol                            # annualised, jumps included
    assert len(regimes) >= 2 and (CALM in regimes or TURBULENT in regimes)
    levels = sorted(pr.bids.items(), reverse=True)
    assert all(s > 0 for _, s in levels) and levels[0][0] - levels[-1][0] >= pr.m.depth - 1


def test_session_protocol_sequence_acks_snapshots_updates():
    m = Market(["BTC-USD", "ETH-USD"], seed=3)
    s = Session(m, random.Random(1), ack_order="after")
    frames = s.handle({"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD", "ETH-USD"]}, T0)
    assert [f["channel"] for f in frames] == ["l2_data", "l2_data", "subscriptions"]
    assert [f["sequence_num"] for f in frames] == [0, 1, 2]
    assert all(f["client_id"] == "" for f in frames)
    assert frames[0]["events"][0]["type"] == "snapshot"
    assert {u["side"] for u in frames[0]["events"][0]["updates"]} == {"bid", "offer"}
    s2 = Session(m, ack_order="before")
    f2 = s2.handle({"type": "subscribe", "channel": "ticker", "product_ids": ["BTC-USD"]}, T0)
    assert [f["channel"] for f in f2] == ["subscriptions", "ticker"] and [f["sequence_num"] for f in f2] == [0, 1]
    f3 = s.handle({"type": "subscribe", "channel": "heartbeats"}, T0)
    assert f3[-1]["events"][0]["subscriptions"] == {"level2": ["BTC-USD", "ETH-USD"], "heartbeats": []}
    hb = s.heartbeat(77, T0, 12.5)
    assert hb["sequence_num"] == 4 and hb["events"][0]["heartbeat_counter"] == 77
    assert "m=+12.5" in hb["events"][0]["current_time"]
    f4 = s.handle({"type": "unsubscribe", "channel": "level2", "product_ids": ["ETH-USD"]}, T0)
    assert f4[0]["events"][0]["subscriptions"]["level2"] == ["BTC-USD"]
    s.skip_next = 2
    ups = s.on_step(m.step(0.1, T0))
    assert ups and ups[0]["sequence_num"] == 8
    assert all(ev["product_id"] == "BTC-USD" for f in ups if f["channel"] == "l2_data" for ev in f["events"])
    assert s2.heartbeat(1, T0, 1.0) is None                 # not subscribed to heartbeats


def test_session_errors_like_coinbase():
    s = Session(Market(["BTC-USD"], seed=1))
    assert s.handle({"type": "subscribe", "channel": "heartbeat"}, T0) == [
        {"type": "error", "message": "authentication failure"}]
    assert s.handle({"type": "subscribe", "channel": "user", "product_ids": []}, T0) == [
        {"type": "error", "message": "authentication failure"}]
    assert s.handle({"type": "hello"}, T0)[0]["type"] == "error"
    assert s.handle(None, T0)[0]["type"] == "error"
    assert s.seq == 0                                        # error frames carry no sequence number


def test_frames_parse_cleanly_and_rebuild_the_exact_book():
    """One path: the synthetic frames through the live parser give the generator's own book."""
    m = Market(PRODUCTS, seed=9)
    s = Session(m, random.Random(2))
    n = Normalizer("syn")
    books = {p: L2Book(p) for p in PRODUCTS}
    events = []
    for ch in ("heartbeats", "ticker", "market_trades", "level2"):
        msg = {"type": "subscribe", "channel": ch}
        if ch != "heartbeats":
            msg["product_ids"] = PRODUCTS
        for f in s.handle(msg, T0):
            events += n.feed(f, 1)
    for i in range(200):
        for f in s.on_step(m.step(0.1, T0 + i * 10**8)):
            events += n.feed(f, 1)
    assert not [e for e in events if isinstance(e, (ParseError, Gap, ErrorFrame))]
    assert len([e for e in events if isinstance(e, Ack)]) == 4
    for e in events:
        if isinstance(e, L2Ev):
            if e.snapshot:
                books[e.product].snapshot(e.bids, e.asks)
            else:
                assert books[e.product].update(e.bids, e.asks)
            assert not books[e.product].crossed()
    for p in PRODUCTS:
        pr = m.products[p]
        bids, asks = books[p].top(1000)
        assert bids == [[Decimal(pr.px(t)), Decimal(pr.qty(q))] for t, q in sorted(pr.bids.items(), reverse=True)]
        assert asks == [[Decimal(pr.px(t)), Decimal(pr.qty(q))] for t, q in sorted(pr.asks.items())]
    ticks = [e for e in events if isinstance(e, TickEv)]
    trades = [e for e in events if isinstance(e, TradeEv)]
    assert ticks and trades and {t.product for t in trades} == set(PRODUCTS)
    assert all(t.bid < t.ask for t in ticks)


def test_fmt_ts_round_trips():
    from nodes.marketdata.normalize import parse_ts
    for ns in (0, T0, T0 + 123456789, T0 + 1):
        assert parse_ts(fmt_ts(ns)) == ns
