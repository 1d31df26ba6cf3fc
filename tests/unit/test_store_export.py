"""tools.export: store events flattened to CSV, money as the exact strings of the bus."""
import csv
import io
from decimal import Decimal

import proto
from proto import jsonl, topics
from proto.codec import Envelope
from tools import export


def _file(tmp_path):
    evs = [
        Envelope(topics.tick("BTC-USD"), 1, "marketdata", 1, 10, 11,
                 proto.Tick("BTC-USD", Decimal("65000.10"), Decimal("65000.00"), Decimal("0.50000000"),
                            Decimal("65000.20"), Decimal("1E-8"), Decimal("0"))),
        Envelope(topics.book("BTC-USD"), 2, "marketdata", 1, 12, 13,
                 proto.Book("BTC-USD", [[Decimal("65000.00"), Decimal("0.5")], [Decimal("64999.99"), Decimal("2")]],
                            [[Decimal("65000.20"), Decimal("1.25")]])),
        Envelope(topics.RISK_KILLSWITCH, 3, "risk", 1, 14, 15,
                 proto.KillSwitch(True, "daily loss", "auto:daily_loss", 14)),
        Envelope(topics.PNL, 4, "execution", 1, 16, 17,
                 proto.PnL(Decimal("-12.3400"), Decimal("0.10"), Decimal("-12.24"), Decimal("9987.76"),
                           Decimal("0.0060"), "2026-11-28")),
    ]
    path = tmp_path / "events.jsonl"
    with open(path, "w") as f:
        f.write('{"type":"_open","ts":1,"format":"tickmesh.jsonl/1"}\n')
        for e in evs[:2]:
            f.write(jsonl.dumps(e) + "\n")
        f.write('{"type":"_gap","source":"marketdata","topic":"md.tick.BTC-USD","missing":3,"ts":2}\n')
        for e in evs[2:]:
            f.write(jsonl.dumps(e) + "\n")
    return path


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_every_column_with_exact_money(tmp_path):
    out = io.StringIO()
    n = export.export(str(_file(tmp_path)), out)
    rows = _rows(out.getvalue())
    assert n == 4 and len(rows) == 4                    # the _open/_gap lines are not rows
    tick, book, ks, pnl = rows
    assert tick["topic"] == "md.tick.BTC-USD" and tick["type"] == "Tick" and tick["seq"] == "1"
    assert tick["price"] == "65000.10" and tick["bid_size"] == "0.50000000" and tick["ask_size"] == "1E-8"
    assert tick["ts_event"] == "10" and tick["ts_recv"] == "11"
    assert book["bids.0.0"] == "65000.00" and book["bids.1.1"] == "2" and book["asks.0.1"] == "1.25"
    assert book["price"] == ""                          # a column this event does not have
    assert ks["source"] == "risk" and ks["body.source"] == "auto:daily_loss" and ks["engaged"] == "true"
    assert pnl["realized"] == "-12.3400" and pnl["fees"] == "0.0060" and pnl["day"] == "2026-11-28"


def test_fields_and_topics_select(tmp_path):
    out = io.StringIO()
    export.export(str(_file(tmp_path)), out, fields=["ts_event", "topic", "realized", "equity"], prefixes=["pnl"])
    assert out.getvalue().splitlines() == ["ts_event,topic,realized,equity", "16,pnl,-12.3400,9987.76"]


def test_cli_writes_csv(tmp_path, capsys):
    f = _file(tmp_path)
    out = tmp_path / "out.csv"
    assert export.main([str(f), "--csv", str(out), "--topics", "md.", "--meta"]) == 0
    rows = _rows(out.read_text())
    assert [r["type"] for r in rows] == ["Tick", "Book"]
    err = capsys.readouterr().err
    assert "2 events" in err and "_gap" in err


def test_cli_reports_a_missing_file(tmp_path, capsys):
    assert export.main([str(tmp_path / "nope.jsonl"), "--csv", str(tmp_path / "o.csv")]) == 1
    assert "nope.jsonl" in capsys.readouterr().err


def test_digest_ignores_wall_clock_and_random_ids_but_not_what_happened(tmp_path):
    def order_file(name, coid, created, venue_id, price):
        o = proto.Order(coid, venue_id, "BTC-USD", "BUY", "MARKET", "GTC", Decimal("0.001"), None, None, False,
                        False, "FILLED", Decimal("0.001"), Decimal(price), Decimal("0.39"), Decimal("0.001"),
                        Decimal(price), "OK", "", "sma", "paper", created, created + 5, created - 9)
        f = proto.Fill("fill-" + venue_id, coid, "BTC-USD", "BUY", Decimal(price), Decimal("0.001"),
                       Decimal("0.39"), "TAKER", "paper")
        p = proto.PnL(Decimal("-0.39"), Decimal("0"), Decimal("-0.39"), Decimal("99999.61"), Decimal("0.39"),
                      "2026-11-%02d" % (created % 28 + 1))
        path = tmp_path / name
        with open(path, "w") as fh:
            for i, (t, m) in enumerate([(topics.ORDER_FILLED, o), (topics.fill("BTC-USD"), f), (topics.PNL, p)]):
                fh.write(jsonl.dumps(Envelope(t, created + i, "execution", 1, created, created, m)) + "\n")
        return str(path)
    a = export.digest(order_file("a.jsonl", "sma-aaaa-1", 1000, "paper-1", "65000.12"))
    b = export.digest(order_file("b.jsonl", "sma-bbbb-1", 2000, "paper-2", "65000.12"))
    c = export.digest(order_file("c.jsonl", "sma-aaaa-1", 1000, "paper-1", "65000.13"))
    assert a == b and a[1] == 3
    assert c != a                                       # a different fill price is a different run
