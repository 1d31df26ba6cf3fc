"""The journal: records survive, a torn last line is cut off, corruption elsewhere stops the node,
one writer at a time, and ``rebuild`` gives the last state of each order and every fill once."""
import json
from decimal import Decimal as D

import pytest

from nodes.execution.journal import Journal, JournalError, rebuild
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
