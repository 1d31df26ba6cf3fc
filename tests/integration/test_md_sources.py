"""The node's offline sources (seeded synthetic market, store-file replay) through the same
publishing path as live data, on real ZeroMQ sockets; and a slow subscriber never blocks it.

Inproc collectors connect before the node binds (connect-before-bind attaches the subscription
with the pipe, so nothing is lost to the slow joiner); other transports wait for a first event.
"""
import time
from decimal import Decimal

import pytest
import zmq

import proto
from nodes import config
from nodes.client import RequestClient
from nodes.marketdata import MarketDataConfig, MarketDataNode
from nodes.runtime import NodeStartError
from proto import Book, FeedStatus, Query, RawFrame, Tick, Trade, jsonl, topics
from tests.conftest import Collector, make_mesh, wait_until

PRODUCTS = ("BTC-USD", "ETH-USD")


def start(mesh, ctx, **conf):
    node = MarketDataNode(mesh, MarketDataConfig(**conf), context=ctx)
    node.start()
    return node


def drain(col, quiet_s=0.3):
    """Receive until nothing arrives for ``quiet_s`` (the publisher has stopped)."""
    while col.sock.poll(int(quiet_s * 1000)):
        col.events.append(proto.decode(col.sock.recv()))
    return col.events


def test_synthetic_on_every_transport(mesh, ctx, collector):
    col = collector(mesh, ["marketdata"], ["md."])
    node = start(mesh, ctx, source="synthetic", seed=3, synthetic_rate_hz=50, status_interval_s=0.1)
    try:
        for p in mesh.products:
            col.wait_for(lambda e, p=p: e.topic == topics.md_status(p) and e.msg.healthy)
            tick = col.wait_for(lambda e, p=p: e.topic == topics.tick(p))
            assert tick.msg.bid < tick.msg.ask and type(tick.msg.price) is Decimal
            assert tick.ts_event > 0 and tick.ts_recv >= tick.ts_event
            book = col.wait_for(lambda e, p=p: e.topic == topics.book(p))
            assert len(book.msg.bids) == len(book.msg.asks) == 10
            assert book.msg.bids[0][0] < book.msg.asks[0][0]
            assert [lv[0] for lv in book.msg.bids] == sorted((lv[0] for lv in book.msg.bids), reverse=True)
            col.wait_for(lambda e, p=p: e.topic == topics.trade(p))
        with RequestClient.for_node(mesh, "marketdata", timeout_ms=2000, source="test", context=ctx) as rc:
            feed = rc.call(Query("feed"))
            assert feed["source"]["source"] == "synthetic" and feed["connected"]
            assert rc.call(Query("replay")) == {"replaying": False, "source": "synthetic", "done": False}
        c = node.extra_counters()
        assert c["feed_connections"] == 1 and c["feed_gaps"] == 0 and c["msgs.l2_data"] > 0
    finally:
        node.stop()


def _trades(seed, tmp):
    ctx = zmq.Context()          # a context per run: inproc names are reused
    f = tmp / "mesh.toml"
    f.write_text("[marketdata]\nsource = \"coinbase\"\n")
    cfg = config.load(f, env={}, read_dotenv=False)
    m = make_mesh("inproc", tmp, products=PRODUCTS)
    cfg = cfg.replace("mesh", **{k: getattr(m, k) for k in ("transport", "base_port", "ipc_dir", "state_dir",
                                                            "products", "heartbeat_s")})
    cfg = cfg.replace("marketdata", source="synthetic", seed=seed, synthetic_rate_hz=0.0)
    col = Collector(ctx, cfg.mesh, ["marketdata"], ["md.trade."])
    node = MarketDataNode.from_config(cfg, context=ctx)      # what offline mode does
    node.start()
    try:
        for _ in range(40):
            col.wait_for(lambda e: True)
    finally:
        node.stop()
        col.close()
        ctx.destroy(linger=0)
    return [(e.msg.product, e.msg.price, e.msg.size, e.msg.side) for e in col.events[:40]]


def test_synthetic_is_seeded(short_tmp):
    a, b, c = _trades(42, short_tmp), _trades(42, short_tmp), _trades(43, short_tmp)
    assert a == b and a != c


def _write(path, envs, extra_lines=()):
    with open(path, "w") as f:
        for line in extra_lines:
            f.write(line + "\n")
        for env in envs:
            f.write(jsonl.dumps(env) + "\n")


def _env(topic, msg, ts_event, ts_recv, seq=1):
    return proto.Envelope(topic, seq, "marketdata", seq, ts_event, ts_recv, msg)


def test_replay_events_at_max_speed_then_reports_done(ctx, short_tmp):
    t0 = 1772366400 * 10**9
    D = Decimal
    recorded = [
        _env("md.status.BTC-USD", FeedStatus("BTC-USD", True, "OK", "", 0.1), t0, t0),
        _env("md.book.BTC-USD", Book("BTC-USD", [[D("64999.99"), D("1.5")], [D("64999.98"), D("2")]],
                                     [[D("65000.01"), D("0.25")]]), t0 + 1, t0 + 2),
        _env("md.tick.BTC-USD", Tick("BTC-USD", D("65000.01"), D("64999.99"), D("1.5"), D("65000.01"),
                                     D("0.25"), D("9000.5")), t0 + 3, t0 + 4),
        _env("md.trade.ETH-USD", Trade("ETH-USD", "77", D("3200.10"), D("0.5"), "SELL"), t0 + 5, t0 + 6),
        _env("md.tick.SOL-USD", Tick("SOL-USD", D("150"), D("149.99"), D("1"), D("150"), D("1"), D("5")), t0 + 7, t0 + 8),
        _env("md.book.BTC-USD", Book("BTC-USD", [[D("65000.00"), D("3")]], [[D("65000.02"), D("1")]]),
             t0 + 200_000_000, t0 + 200_000_001),
    ]
    path = short_tmp / "md.jsonl"
    _write(path, recorded, ['{"type":"_open","ts":1}'])
    mesh = make_mesh("inproc", short_tmp, products=PRODUCTS)
    col = Collector(ctx, mesh, ["marketdata"], ["md."])
    node = start(mesh, ctx, source="replay", replay_file=str(path), replay_speed="max", book_publish_hz=10.0)
    try:
        done = col.wait_for(lambda e: e.topic == "md.status.BTC-USD" and e.msg.reason == "replay finished")
        assert not done.msg.healthy and done.msg.state == "DISCONNECTED"
        got = {(e.topic, e.type): e for e in col.events if e.type in ("Tick", "Trade")}
        tick = got[("md.tick.BTC-USD", "Tick")]
        assert tick.msg == recorded[2].msg and tick.ts_event == t0 + 3 and tick.ts_recv > t0 + 4
        assert got[("md.trade.ETH-USD", "Trade")].msg == recorded[3].msg
        books = [e for e in col.events if e.type == "Book"]
        assert [b.msg for b in books] == [recorded[1].msg, recorded[5].msg]      # each recorded book
        assert [b.ts_event for b in books] == [t0 + 1, t0 + 200_000_000]
        assert not [e for e in col.events if "SOL-USD" in e.topic]               # not a mesh product
        assert node.extra_counters()["replay_done"] == 1
        with RequestClient.for_node(mesh, "marketdata", timeout_ms=2000, source="test", context=ctx) as rc:
            r = rc.call(Query("replay"))
        assert r["done"] and r["mode"] == "events" and r["records"] == 6 and r["used"] == 4
        assert r["skipped"] == 2 and r["error"] == ""
    finally:
        node.stop()


def test_replay_raw_frames_reproduces_the_live_events(ctx, short_tmp):
    """Record a synthetic run with store_raw, replay its frames: the same events come out."""
    m1 = make_mesh("inproc", short_tmp / "a", products=PRODUCTS)
    col = Collector(ctx, m1, ["marketdata"], ["md.tick.", "md.book.", "md.trade.", "raw."])
    node = start(m1, ctx, source="synthetic", seed=5, synthetic_rate_hz=100, store_raw=True, book_publish_hz=0.0)
    try:
        for _ in range(300):
            col.wait_for(lambda e: True)
    finally:
        node.stop()
    live = drain(col)
    col.close()
    raw = [e for e in live if type(e.msg) is RawFrame]
    assert raw and all(e.topic == "raw.coinbase" for e in raw)
    path = short_tmp / "raw.jsonl"
    _write(path, live)                   # raw frames and derived events: raw mode ignores the latter
    ctx2 = zmq.Context()          # the same inproc names again: a context of its own
    m2 = make_mesh("inproc", short_tmp / "b", products=PRODUCTS)
    col2 = Collector(ctx2, m2, ["marketdata"], ["md.tick.", "md.book.", "md.trade.", "md.gap"])
    node2 = start(m2, ctx2, source="replay", replay_file=str(path), replay_speed="max", book_publish_hz=0.0)
    try:
        wait_until(lambda: node2.extra_counters()["replay_done"] == 1, 10.0, what="replay done")
    finally:
        node2.stop()
    replayed = drain(col2)
    col2.close()
    ctx2.destroy(linger=0)

    def key(e):
        return e.topic, e.msg, e.ts_event
    want = [key(e) for e in live if type(e.msg) is not RawFrame]
    assert [key(e) for e in replayed] == want and len(want) > 100
    assert node2.extra_counters()["feed_gaps"] == 0


def test_replay_paced_by_recorded_time(ctx, short_tmp):
    t0 = 1772366400 * 10**9
    recs = [_env("md.tick.BTC-USD", Tick("BTC-USD", Decimal(1), Decimal(1), Decimal(1), Decimal(2), Decimal(1),
                                         Decimal(1)), t0 + i * 100_000_000, t0 + i * 100_000_000, i + 1)
            for i in range(5)]                # 0.4 s of recording
    path = short_tmp / "paced.jsonl"
    _write(path, recs)
    mesh = make_mesh("inproc", short_tmp, products=PRODUCTS)
    col = Collector(ctx, mesh, ["marketdata"], ["md.tick."])
    t = time.monotonic()
    node = start(mesh, ctx, source="replay", replay_file=str(path), replay_speed="2")
    try:
        for _ in range(5):
            col.wait_for(lambda e: True)
        assert time.monotonic() - t >= 0.19        # 0.4 s at twice the pace: never early
    finally:
        node.stop()


def test_replay_problems(ctx, short_tmp):
    mesh = make_mesh("tcp", short_tmp, products=PRODUCTS)
    with pytest.raises(NodeStartError, match="marketdata.replay_file"):
        start(mesh, ctx, source="replay", replay_file=str(short_tmp / "missing.jsonl"))
    mesh = make_mesh("inproc", short_tmp, products=PRODUCTS)
    t0 = 1772366400 * 10**9
    tick = _env("md.tick.BTC-USD", Tick("BTC-USD", *(Decimal(x) for x in (2, 1, 1, 2, 1, 1))), t0, t0)
    bad = short_tmp / "bad.jsonl"
    with open(bad, "w") as f:
        f.write(jsonl.dumps(tick) + "\n" + "{not json\n" + jsonl.dumps(tick) + "\n")
    node = start(mesh, ctx, source="replay", replay_file=str(bad), replay_speed="max")
    try:
        wait_until(lambda: node.extra_counters()["replay_done"] == 1, 5.0, what="replay done")
        r = node._q_replay("")
        assert r["done"] and "bad.jsonl:2" in r["error"]
        assert node.health["BTC-USD"].reason.startswith("replay finished (")
    finally:
        node.stop()


def test_slow_subscriber_never_blocks_the_publisher(ctx, short_tmp):
    mesh = make_mesh("inproc", short_tmp, products=PRODUCTS, hwm=500)
    slow = ctx.socket(zmq.SUB)
    slow.setsockopt(zmq.RCVHWM, 10)
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.SUBSCRIBE, b"md.tick.BTC-USD")
    slow.connect(mesh.endpoint("marketdata", "pub"))         # never reads until the end
    col = Collector(ctx, mesh, ["marketdata"], ["md.tick.BTC-USD"])
    node = start(mesh, ctx, source="synthetic", seed=1, synthetic_rate_hz=0.0)   # as fast as it goes
    try:
        first = col.wait_for(lambda e: True)
        # far more events than the slow subscriber's queue holds reach the fast one
        last = col.wait_for(lambda e: e.seq >= first.seq + 1500, timeout=20.0)
        assert node.alive
        n0 = node.counters["published"]
        wait_until(lambda: node.counters["published"] > n0 + 500, 5.0, what="still publishing")
    finally:
        node.stop()
    seqs = []
    while slow.poll(100):
        seqs.append(proto.decode(slow.recv()).seq)
    slow.close()
    # the slow subscriber holds at most its pipe (SNDHWM 500 + RCVHWM 10 on inproc): the publisher
    # dropped for it instead of waiting, while the fast one got 1500 more
    assert seqs and len(seqs) <= 600 < last.seq - first.seq
