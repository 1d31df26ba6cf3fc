"""The journal: records survive, a torn last line is cut off, corruption elsewhere stops the node,
one writer at a time, and ``rebuild`` gives the last state of each order and every fill once."""
import json
from decimal import Decimal as D

import pytest

from nodes.execution.journal import Journal, JournalError, read_records, rebuild
from nodes.execution.orders import OrderState
from proto import Fill, OrderIntent


def order(coid="c1", status="NEW", **kw):
    o = OrderState.from_intent(OrderIntent("BTC-USD", "BUY", "LIMIT", size=D("1"), limit_price=D("100"),
                                           client_order_id=coid), "paper", 1)
    o.status = status
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def fill(fid, coid="c1", size="0.4"):
    return Fill(fid, coid, "BTC-USD", "BUY", D("100"), D(size), D("0.24"), "MAKER", "paper")


def test_records_round_trip_and_rebuild_keeps_the_last_state(tmp_path):
    j = Journal(tmp_path / "x.journal")
    assert j.open() == []
    j.order(order(), 1)
    j.order(order(sent=True), 2)
    o = order(status="PARTIALLY_FILLED", sent=True, venue_order_id="v1")
    o.apply_fill(D("100"), D("0.4"), D("0.24"))
    j.fill(o, fill("v1-1"), 3)
    j.fill(o, fill("v1-1"), 3)                       # a duplicate fill id never counts twice
    j.day("2026-03-01", D("100000.5"), 4)
    j.order(order("c2", status="REJECTED", code="RISK_UNAVAILABLE"), 5)
    j.sync()
    j.close()
    j2 = Journal(tmp_path / "x.journal")
    rb = rebuild(j2.open())
    j2.close()
    assert list(rb.orders) == ["c1", "c2"]
    c1 = rb.orders["c1"]
    assert (c1.status, c1.filled_size, c1.venue_order_id, c1.sent, c1.fees) == \
        ("PARTIALLY_FILLED", D("0.4"), "v1", True, D("0.24"))
    assert [(f.fill_id, f.size, ts) for f, ts in rb.fills] == [("v1-1", D("0.4"), 3)]
    assert rb.day == ("2026-03-01", D("100000.5"))
    assert rb.orders["c2"].code == "RISK_UNAVAILABLE"


def test_torn_last_line_is_cut_and_appends_continue_cleanly(tmp_path):
    p = tmp_path / "x.journal"
    j = Journal(p)
    j.open()
    j.order(order(), 1)
    j.close()
    with open(p, "ab") as f:
        f.write(b'{"k":"order","ts":2,"o":{"client_order_id":"c9"')       # power cut mid-record
    j = Journal(p)
    recs = j.open()
    assert len(recs) == 1 and p.read_bytes().endswith(b"\n")
    j.order(order("c3"), 3)
    j.close()
    assert [json.loads(x)["o"]["client_order_id"] for x in p.read_text().splitlines()] == ["c1", "c3"]


def test_corruption_before_the_last_line_refuses_to_guess(tmp_path):
    p = tmp_path / "x.journal"
    p.write_text('{"k":"order"}\nnot json\n{"k":"day","day":"x","start_equity":"1"}\n')
    with pytest.raises(JournalError, match=r"x.journal:2: corrupt record"):
        Journal(p).open()


def test_one_writer_at_a_time(tmp_path):
    a = Journal(tmp_path / "x.journal")
    a.open()
    with pytest.raises(JournalError, match="locked by another process"):
        Journal(tmp_path / "x.journal").open()
    a.close()
    b = Journal(tmp_path / "x.journal")
    b.open()
    b.close()


def test_sync_only_when_dirty(tmp_path):
    j = Journal(tmp_path / "x.journal", fsync=True)
    j.open()
    j.sync()
    assert j.syncs == 0
    j.order(order(), 1)
    j.sync()
    j.sync()
    assert j.syncs == 1 and j.records == 1
    j.close()


def test_compaction_keeps_positions_working_and_recent_orders(tmp_path):
    from nodes.execution.journal import compacted
    from nodes.execution.positions import PositionBook
    p = tmp_path / "x.journal"
    j = Journal(p)
    j.open()
    book = PositionBook(D("1000"))
    old = order("old", status="FILLED", sent=True, updated_ns=10)
    old.apply_fill(D("100"), D("1"), D("0.5"))
    f1 = Fill("v-1", "old", "BTC-USD", "BUY", D("100"), D("1"), D("0.5"), "TAKER", "paper")
    j.fill(old, f1, 10)
    book.apply_fill(f1, 10)
    work = order("work", status="ACCEPTED", sent=True, updated_ns=20)
    j.order(work, 20)
    recent = order("recent", status="CANCELLED", updated_ns=30)
    j.order(recent, 30)
    j.day("2026-03-01", D("1000"), 30)
    j.sync()
    rb = rebuild(read_records(p))
    recs = compacted(rb, book.to_plain(), keep_since_ns=25, ts=40)
    j.rewrite(recs)
    j.order(order("after", status="NEW"), 50)                # appends go to the new file
    f2 = Fill("w-1", "work", "BTC-USD", "SELL", D("110"), D("0.4"), D("0.1"), "MAKER", "paper")
    work.apply_fill(D("110"), D("0.4"), D("0.1"))
    j.fill(work, f2, 60)
    with pytest.raises(JournalError, match="locked"):         # the lock moved to the new file
        Journal(p).open()
    j.close()
    rb2 = rebuild(read_records(p))
    assert list(rb2.orders) == ["work", "recent", "after"] and rb2.day == ("2026-03-01", D("1000"))
    again = PositionBook(D("1000"))
    again.restore(rb2.book)
    for f, ts in rb2.fills:
        again.apply_fill(f, ts)
    book.apply_fill(f2, 60)
    assert again.position("BTC-USD") == book.position("BTC-USD") and again.pnl().realized == book.pnl().realized
    assert not (tmp_path / "x.journal.compact").exists()


def test_order_and_fill_records_are_json_dumps_bytes(tmp_path):
    """The compiled record encoders write exactly what json.dumps wrote, odd values included."""
    from proto import to_plain
    o = OrderState.from_intent(OrderIntent("BTC-USD", "BUY", "LIMIT", size=D("0.001"), limit_price=D("65000.01"),
                                           client_order_id='q"\\é€\u2028-1', strategy="s\n"), "paper", 123)
    o.apply_fill(D("65000.01"), D("0.0005"), D("0.39"))
    o.reason = "odd \x00 \u00ff reason"
    f = Fill("f-1", o.client_order_id, "BTC-USD", "BUY", D("65000.01"), D("0.0005"), D("-1E+2"), "MAKER", "paper")
    j = Journal(tmp_path / "j", fsync=False)
    j.open()
    want = []
    j.order(o, 5)
    want.append({"k": "order", "ts": 5, "o": o.to_plain()})
    j.fill(o, f, 6)
    want.append({"k": "fill", "ts": 6, "o": o.to_plain(), "f": to_plain(f)})
    o.est_size, o.sent, o.fills, o.code, o.quote_size = 3, 1, True, None, "12.5"    # not the declared types
    j.order(o, 7)
    want.append({"k": "order", "ts": 7, "o": o.to_plain()})
    j.close()
    assert (tmp_path / "j").read_bytes() == b"".join(
        json.dumps(r, separators=(",", ":")).encode("utf-8") + b"\n" for r in want)
