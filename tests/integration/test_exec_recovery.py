"""Crash safety: ``python -m nodes.execution`` killed with SIGKILL in the middle of a stream of
orders loses no order, duplicates none, and comes back with its open orders and positions; orders
caught between journal and venue are resolved, never re-sent blindly."""
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal as D

import zmq

import proto
from nodes.client import RequestClient, RequestTimeout
from nodes.config import ROOT
from nodes.execution import ExecutionConfig, ExecutionNode
from nodes.execution.journal import Journal, read_records, rebuild
from nodes.execution.orders import OrderState
from nodes.execution.positions import PositionBook
from proto import Code, Fill, OrderIntent, Query
from tests.conftest import make_mesh, wait_until
from tests.integration.test_exec_support import Publisher, RiskSource, book, topics, trade

BTC = "BTC-USD"


def start_process(conf_path, log_path):
    env = dict(os.environ, TICKMESH_CONF=str(conf_path), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "nodes.execution"], env=env, cwd=str(ROOT),
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def wait_ready(client, proc, timeout=10.0):
    """Until the process answers and holds a fresh risk state (it asks risk at start)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"execution exited with {proc.returncode}"
        try:
            pt = client.call(Query("pretrade"), timeout_ms=200)
            if pt["risk_state_version"] is not None and pt["risk_state_age_ms"] < 400:
                return pt
        except RequestTimeout:                  # not up yet: ask again until the deadline
            pass
        if time.monotonic() > deadline:
            raise AssertionError("execution process not ready (no answer or no risk state)")


def journal_facts(path):
    recs = read_records(path)          # the node may be running: read without taking its lock
    rb = rebuild(recs)
    fill_ids = [r["f"]["fill_id"] for r in recs if r["k"] == "fill"]
    return rb, fill_ids, recs


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    conf = short_tmp / "mesh.toml"
    conf.write_text(f'[mesh]\ntransport = "tcp"\nbase_port = {mesh.base_port}\nstate_dir = "{mesh.state_dir}"\n'
                    f'ipc_dir = "{mesh.ipc_dir}"\nheartbeat_s = 0.2\n'
                    '[execution]\npnl_interval_s = 0.2\n')
    log = short_tmp / "execution.log"
    risk = RiskSource(ctx, mesh)
    md = Publisher(ctx, mesh, "marketdata")
    client = RequestClient.for_node(mesh, "execution", timeout_ms=3000, source="test", context=ctx)
    proc = start_process(conf, log)
    try:
        wait_ready(client, proc)
        md.until(topics.book(BTC), book(asks=(("65010", "1000"),)),
                 lambda: client.call(Query("pretrade", BTC))["ready"], what="execution process")
        # a known state: four resting buys, three market buys, one resting order partly filled
        for i in range(4):
            r = client.request(OrderIntent(BTC, "BUY", "LIMIT", size=D("1"), limit_price=D(64000 - i),
                                           client_order_id=f"L{i}"))
            assert r.data.status == "ACCEPTED", r
        for i in range(3):
            assert client.request(OrderIntent(BTC, "BUY", "MARKET", size=D("0.1"),
                                              client_order_id=f"M{i}")).data.status == "FILLED"
        md.send(topics.trade(BTC), trade(price="63990", size="0.3"))
        wait_until(lambda: client.call(Query("order", "L0")).filled_size == D("0.3"), 5)
        before = {o.client_order_id: o for o in client.call(Query("orders", "all"))}
        pos_before = client.call(Query("positions"))[0]

        # the stream: 300 pipelined submits on a raw DEALER; SIGKILL once some have been answered
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(mesh.endpoint("execution", "rep"))
        enc = proto.Encoder("burst")
        burst = [f"B{i:03d}" for i in range(300)]
        for coid in burst:
            side = "BUY" if int(coid[1:]) % 2 else "SELL"
            dealer.send(enc.encode("req", OrderIntent(BTC, side, "MARKET", size=D("0.001"), client_order_id=coid)))
        answered = {}
        while len(answered) < 20:
            assert dealer.poll(5000), "no replies from the burst"
            r = proto.decode(dealer.recv()).msg
            answered[r.data.client_order_id] = r.data
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        dealer.close(linger=0)
        client.close()

        jpath = mesh.state_path("execution", "paper.journal")
        rb_dead, fill_ids_dead, _ = journal_facts(jpath)
        assert len(fill_ids_dead) == len(set(fill_ids_dead))
        in_journal = [c for c in burst if c in rb_dead.orders]
        assert 20 <= len(in_journal) < 300, len(in_journal)        # killed mid-stream
        assert set(answered) <= set(in_journal)

        proc = start_process(conf, log)
        wait_ready(client, proc)
        after = {o.client_order_id: o for o in client.call(Query("orders", "all"))}
        # every order known before the kill is back, unchanged (paper: nothing happens while down)
        for coid, o in before.items():
            assert after[coid].status == o.status and after[coid].filled_size == o.filled_size, coid
        for coid, o in answered.items():                            # every answered order is intact
            assert after[coid].status == o.status == "FILLED" and after[coid].filled_size == D("0.001")
        # nothing is left half-way: orders caught between journal and venue are rejected, not re-sent
        assert not [o for o in after.values() if o.status == "NEW"]
        for coid in in_journal:
            o = after[coid]
            assert o.status in ("FILLED", "REJECTED"), (coid, o.status)
            if o.status == "REJECTED":
                assert o.code in (Code.RISK_UNAVAILABLE, Code.VENUE_UNAVAILABLE) and "restarted" in o.reason
        # positions = exactly the journaled fills, each once
        rb, fill_ids, _ = journal_facts(jpath)
        assert len(fill_ids) == len(set(fill_ids)) and fill_ids[:len(fill_ids_dead)] == fill_ids_dead
        expect = PositionBook(D("100000"))
        for f, ts in rb.fills:
            expect.apply_fill(f, ts)
        pos = client.call(Query("positions"))[0]
        assert pos.qty == expect.position(BTC).qty and pos.realized_pnl == expect.position(BTC).realized_pnl
        filled_burst = sum((D("0.001") if int(c[1:]) % 2 else D("-0.001")) for c in in_journal
                           if after[c].status == "FILLED")
        assert pos.qty == pos_before.qty + filled_burst
        for o in after.values():                                     # per order: fills add up
            assert o.filled_size == sum((f.size for f, _ in rb.fills if f.client_order_id == o.client_order_id), D(0))
        # resubmitting the whole stream: known ids answer DUPLICATE, the rest are placed once
        checks_before = client.call(Query("pretrade"))["counters"]["decisions"]
        for coid in burst:
            side = "BUY" if int(coid[1:]) % 2 else "SELL"
            r = client.request(OrderIntent(BTC, side, "MARKET", size=D("0.001"), client_order_id=coid))
            assert (r.code == Code.DUPLICATE) == (coid in in_journal), coid
        assert client.call(Query("pretrade"))["counters"]["decisions"] - checks_before == 300 - len(in_journal)
        # the resting orders survived the kill and still trade, with fresh fill ids
        md.until(topics.book(BTC), book(), lambda: client.call(Query("pretrade", BTC))["ready"])
        md.send(topics.trade(BTC), trade(price="63000", size="10", trade_id="t2"))
        wait_until(lambda: all(client.call(Query("order", f"L{i}")).status == "FILLED" for i in range(4)), 5)
        proc.send_signal(signal.SIGTERM)                            # and a clean stop is quick
        t0 = time.monotonic()
        assert proc.wait(5) == 0 and time.monotonic() - t0 < 1.5
        rb, fill_ids, _ = journal_facts(jpath)
        assert len(fill_ids) == len(set(fill_ids))
        assert rb.orders["L0"].filled_size == D("1") and rb.orders["L0"].fills == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        client.close()
        risk.close()
        md.close()
    out = log.read_text()
    assert "journal" in out and "Traceback" not in out, out[-3000:]


def test_orders_caught_between_journal_and_venue_are_resolved_at_start(short_tmp, ctx):
    """NEW orders in the journal: never checked -> RISK_UNAVAILABLE; sent to the paper venue
    but not acknowledged -> VENUE_UNAVAILABLE; an immediate order cut between two fills -> the rest is
    CANCELLED (its fill stays booked). Nothing is sent again."""
    mesh = make_mesh("inproc", short_tmp)
    path = mesh.state_path("execution", "paper.journal")
    j = Journal(path)
    j.open()
    for coid, sent in (("unsent", False), ("sent", True)):
        o = OrderState.from_intent(OrderIntent(BTC, "BUY", "MARKET", size=D("1"), client_order_id=coid), "paper", 1)
        o.sent = sent
        j.order(o, 1)
    # died between the two fills of a market order walking the book
    o = OrderState.from_intent(OrderIntent(BTC, "BUY", "MARKET", size=D("1"), client_order_id="walk"), "paper", 1)
    o.sent, o.venue_order_id, o.status = True, "paper-1", "PARTIALLY_FILLED"
    o.apply_fill(D("65010"), D("0.5"), D("1"))
    j.fill(o, Fill("paper-1-1", "walk", BTC, "BUY", D("65010"), D("0.5"), D("1"), "TAKER", "paper"), 1)
    j.close()
    node = ExecutionNode(mesh, ExecutionConfig(), context=ctx).start()
    try:
        with RequestClient.for_node(mesh, "execution", context=ctx, timeout_ms=2000) as c:
            a, b = c.call(Query("order", "unsent")), c.call(Query("order", "sent"))
            assert (a.status, a.code) == ("REJECTED", Code.RISK_UNAVAILABLE) and "before the order was checked" in a.reason
            assert (b.status, b.code) == ("REJECTED", Code.VENUE_UNAVAILABLE) and "acknowledged" in b.reason
            w = c.call(Query("order", "walk"))
            assert (w.status, w.code, w.filled_size) == ("CANCELLED", Code.VENUE_UNAVAILABLE, D("0.5"))
            assert c.call(Query("positions"))[0].qty == D("0.5") and c.call(Query("orders")) == []
            assert node.venue.submitted == 0
    finally:
        node.stop()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["o"]["status"] for r in lines if r["k"] == "order"][-3:] == ["REJECTED", "REJECTED", "CANCELLED"]


def test_journal_compaction_at_start_keeps_positions_and_working_orders(short_tmp, ctx):
    from tests.integration.test_exec_support import Publisher, RiskSource, book, start_node, trade
    mesh = make_mesh("inproc", short_tmp)
    risk = RiskSource(ctx, mesh)
    md = Publisher(ctx, mesh, "marketdata")
    conf = ExecutionConfig(journal_compact_records=10, journal_keep_days=1)

    def run(fn):
        node = start_node(mesh, conf, ctx)
        try:
            with RequestClient.for_node(mesh, "execution", context=ctx, timeout_ms=2000) as c:
                md.until(topics.book(BTC), book(), lambda: BTC in node.venue.books)
                return fn(node, c)
        finally:
            node.stop()
    try:
        def trade_some(node, c):
            for i in range(4):
                c.call(OrderIntent(BTC, "BUY" if i % 2 else "SELL", "MARKET", size=D("0.1"), client_order_id=f"m{i}"))
            c.call(OrderIntent(BTC, "BUY", "LIMIT", size=D("1"), limit_price=D("64000"), client_order_id="rest"))
            return c.call(Query("positions")), c.call(Query("pnl")), node.journal.records
        pos, pnl, n = run(trade_some)
        assert n > 10

        def after(node, c):
            assert node.journal.records < n
            assert [o.client_order_id for o in c.call(Query("orders"))] == ["rest"]
            assert c.call(Query("order", "m0")).status == "FILLED"          # recent: kept
            md.send(topics.trade(BTC), trade(price="63000", size="1"))
            wait_until(lambda: c.call(Query("order", "rest")).status == "FILLED")
            return c.call(Query("positions")), c.call(Query("pnl"))
        pos2, pnl2 = run(after)
        assert pos2[0].qty == pos[0].qty + 1 and pos2[0].realized_pnl == pos[0].realized_pnl - D("256")
        pos3, pnl3 = run(lambda node, c: (c.call(Query("positions")), c.call(Query("pnl"))))
        assert [(p.qty, p.avg_cost, p.realized_pnl, p.fees) for p in pos3] == \
            [(p.qty, p.avg_cost, p.realized_pnl, p.fees) for p in pos2]
        assert pnl3.realized == pnl2.realized
    finally:
        risk.close()
        md.close()


def test_market_orders_fill_after_restarts(short_tmp, ctx):
    """The paper venue's order ids come from a seeded generator: a restarted node must not issue the
    ids of orders already in its journal again -- their fill ids would collide and the new fills be
    dropped as duplicates, leaving the order ACCEPTED forever (found by tests/e2e/test_faults.py)."""
    from tests.integration.test_exec_support import start_node
    mesh = make_mesh("tcp", short_tmp)
    risk = RiskSource(ctx, mesh)
    md = Publisher(ctx, mesh, "marketdata")
    client = RequestClient.for_node(mesh, "execution", timeout_ms=3000, source="test", context=ctx)
    try:
        for run in range(3):
            node = start_node(mesh, ExecutionConfig(), ctx)
            try:
                md.until(topics.book(BTC), book(asks=(("65010", "1000"),)), lambda: BTC in node.venue.books,
                         what="execution")
                r = client.request(OrderIntent(BTC, "BUY", "MARKET", size=D("0.01"), client_order_id=f"M{run}"))
                assert r.ok and r.data.status == "FILLED", (run, r)
            finally:
                node.stop()
        rb, fill_ids, _ = journal_facts(mesh.state_path("execution", "paper.journal"))
        assert [o.status for o in rb.orders.values()] == ["FILLED"] * 3
        assert len({o.venue_order_id for o in rb.orders.values()}) == 3 and len(set(fill_ids)) == 3
        assert sum(f.size for f, _ in rb.fills) == D("0.03")
    finally:
        client.close()
        risk.close()
        md.close()
