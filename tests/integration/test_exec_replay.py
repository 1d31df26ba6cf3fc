"""Replaying the event store reproduces positions and PnL to the cent: the real store node records a
paper trading session (market data in, fills and positions out); ``PositionBook.replay`` over the
store's JSON Lines files gives the numbers execution published."""
from decimal import Decimal as D

from nodes.client import RequestClient
from nodes.execution import ExecutionConfig, ExecutionNode
from nodes.execution.positions import PositionBook
from nodes.store import StoreConfig, StoreNode
from proto import OrderIntent, Query, jsonl
from tests.conftest import make_mesh, wait_until
from tests.integration.test_exec_support import Publisher, RiskSource, book, tick, topics, trade, wait_risk_state

BTC, ETH = "BTC-USD", "ETH-USD"


def test_replaying_the_event_store_reproduces_positions_and_pnl(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    store = StoreNode(mesh, StoreConfig(flush_interval_s=0.05, fsync="never"), context=ctx).start()
    risk = RiskSource(ctx, mesh)
    md = Publisher(ctx, mesh, "marketdata")
    node = ExecutionNode(mesh, ExecutionConfig(starting_equity=D("25000"), slippage_bps=D("3"), pnl_interval_s=0.2), context=ctx).start()
    wait_risk_state(node)
    c = RequestClient.for_node(mesh, "execution", timeout_ms=3000, context=ctx)
    s = RequestClient.for_node(mesh, "store", timeout_ms=3000, context=ctx)

    def stored_envs():
        s.call(Query("store", "flush"))
        return [e for f in sorted(store.directory.glob("*.jsonl")) for e in jsonl.read(f)]
    try:
        # the store hears execution (its periodic PnL) and both see market data before trading starts
        wait_until(lambda: any(e.topic == "pnl" for e in stored_envs()), 5, what="store hearing execution")
        md.until(topics.book(BTC), book(), lambda: BTC in node.venue.books and store.events_in > 0, what="store+exec")
        md.until(topics.tick(ETH), tick(ETH, "3499.5", "3500.5"), lambda: ETH in node.venue.ticks)

        def buy(p, size, **kw):
            r = c.request(OrderIntent(p, kw.pop("side", "BUY"), kw.pop("order_type", "MARKET"), size=D(size), **kw))
            assert r.ok, r
            return r.data

        buy(BTC, "0.3")
        buy(ETH, "2.5", side="SELL")
        md.send(topics.book(BTC), book(bids=(("65100", "2"),), asks=(("65120.5", "0.2"), ("65130", "3"))))
        wait_until(lambda: node.venue.books[BTC][1][0][0] == D("65120.5"))
        buy(BTC, "0.55")
        buy(BTC, "0.2", side="SELL")
        lim = buy(BTC, "0.4", order_type="LIMIT", limit_price=D("64000"))
        md.send(topics.trade(BTC), trade(price="63999.99", size="0.15", trade_id="x1"))
        md.send(topics.trade(BTC), trade(price="63990", size="1", trade_id="x2"))
        wait_until(lambda: c.call(Query("order", lim.client_order_id)).status == "FILLED")
        buy(ETH, "4", side="BUY")
        md.send(topics.tick(ETH), tick(ETH, "3333.33", "3333.34"))           # last marks
        md.send(topics.book(BTC), book(bids=(("64321.09", "1"),), asks=(("64321.12", "1"),)))
        wait_until(lambda: node.book.positions[ETH].mark == D("3333.335")
                   and node.book.positions[BTC].mark == D("64321.105"))
        positions = {p.product: p for p in c.call(Query("positions"))}
        pnl = c.call(Query("pnl"))
        assert node.c["fills"] == 8

        def stored():
            envs = stored_envs()
            marks = [e.msg for e in envs if e.topic in (topics.tick(ETH), topics.book(BTC))]
            return sum(1 for e in envs if e.msg.TAG == "Fill") == 8 and len(marks) >= 2 and \
                marks[-1].product == BTC and marks[-2].product == ETH
        wait_until(stored, 5, what="the store holding the whole session")
    finally:
        c.close()
        s.close()
        node.stop()
        store.stop()
        risk.close()
        md.close()
    files = sorted(store.directory.glob("*.jsonl"))
    envs = [e for f in files for e in jsonl.read(f)]
    assert sum(1 for e in envs if e.msg.TAG == "Fill") == 8
    replayed = PositionBook.replay(envs, D("25000"), venue="paper")
    cent = D("0.01")
    for p in (BTC, ETH):
        live, again = positions[p], replayed.position(p)
        assert again.qty == live.qty and again.avg_cost == live.avg_cost
        for name in ("realized_pnl", "unrealized_pnl", "exposure", "mark", "fees"):
            a, b = getattr(live, name), getattr(again, name)
            assert a.quantize(cent) == b.quantize(cent), (p, name, a, b)
            assert a == b                                  # in fact exactly the same
    r = replayed.pnl()
    assert (r.realized, r.unrealized, r.equity, r.fees, r.daily, r.day) == \
        (pnl.realized, pnl.unrealized, pnl.equity, pnl.fees, pnl.daily, pnl.day)
    # and the stored Position/PnL events agree with the replay too (the last ones published)
    last_pnl = [e.msg for e in envs if e.msg.TAG == "PnL"][-1]
    assert last_pnl.realized == r.realized and last_pnl.fees == r.fees
