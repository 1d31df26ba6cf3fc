"""The live venue end to end: the execution node drives the real SDK (``coinbase.rest.RESTClient``)
over HTTPS (self-signed CA) against the fake Coinbase REST API, and follows fills on the fake's
authenticated ``user`` WebSocket channel. Rejections (success:false), 429/5xx backoff, fills on the
channel, REST polling, reconcile at start, adoption of a duplicate client order id, reconnects, and
the refusal to go live without both switches."""
import os
import subprocess
import sys
import time
from decimal import Decimal as D
from types import SimpleNamespace

import pytest

from nodes.client import RequestClient
from nodes.config import ROOT, Secret
from nodes.execution import ExecutionConfig
from nodes.execution.journal import read_records
from proto import CancelOrder, Code, OrderIntent, Query
from tests.conftest import make_mesh, wait_until
from tests.integration.test_exec_support import Publisher, RiskSource, book, start_node, topics
from tools.fakecoinbase.rest import FakeExchange, RestServer, make_api_key
from tools.fakecoinbase.user import UserChannelServer

BTC = "BTC-USD"
CREATE = "POST /orders"


@pytest.fixture
def fake():
    ex = FakeExchange([BTC, "ETH-USD"])
    name, pem, pub = make_api_key()
    ex.add_key(name, pub)
    rest = RestServer(ex).start()
    user = UserChannelServer(ex, heartbeat_s=0.2).start()
    yield SimpleNamespace(ex=ex, rest=rest, user=user, name=name, pem=pem)
    user.stop()
    rest.stop()


@pytest.fixture
def live(fake, ctx, collector, short_tmp):
    mesh = make_mesh("inproc", short_tmp)
    risk = RiskSource(ctx, mesh)
    md = Publisher(ctx, mesh, "marketdata")     # the checks need a market: the fake's touch
    made = []

    def start(**kw):
        conf = dict(venue="coinbase", live_trading=True, rest_base_url=fake.rest.base_url,
                    rest_ca_bundle=fake.rest.ca_bundle, ws_user_url=fake.user.url, ws_stale_s=1.0,
                    poll_interval_s=0.2, backoff_base_s=0.01, backoff_max_s=0.05, pnl_interval_s=0.1)
        conf.update(kw)
        secrets = {"TICKMESH_LIVE": Secret("yes"), "COINBASE_API_KEY": Secret(fake.name),
                   # one line with literal \n, as in conf/secrets.env
                   "COINBASE_API_SECRET": Secret(fake.pem.replace("\n", "\\n"))}
        node = start_node(mesh, ExecutionConfig(**conf), ctx, secrets=secrets)
        made.append(node)
        md.until(topics.book(BTC), book(bids=(("64999.99", "5000"),), asks=(("65000.01", "5000"),)),
                 lambda: node.pretrade.quotes[BTC].mid is not None, what="execution")
        if conf.get("use_user_ws", True):
            wait_until(lambda: node.venue.ws_healthy, 5, what="user channel subscribed")
        col = collector(mesh, ["execution"], ["order.", "fill.", "position.", "pnl"])
        col.wait_for(lambda e: e.topic == "pnl", 5)
        client = RequestClient.for_node(mesh, "execution", timeout_ms=3000, source="test", context=ctx)
        return SimpleNamespace(node=node, col=col, client=client, mesh=mesh)
    yield start
    for n in made:
        n.stop()
    risk.close()
    md.close()


def wait_event(col, coid, topic, timeout=5):
    seen = [e for e in col.events if e.topic == topic and getattr(e.msg, "client_order_id", None) == coid]
    if seen:
        return seen[0]
    return col.wait_for(lambda e: e.topic == topic and getattr(e.msg, "client_order_id", None) == coid, timeout)


def submit(n, **kw):
    kw.setdefault("product", BTC)
    kw.setdefault("side", "BUY")
    return n.client.request(OrderIntent(**kw))


def test_live_venue_end_to_end_through_the_sdk(live, fake):
    n = live()
    ex = fake.ex
    # a resting limit: accepted with Coinbase's order id
    r = submit(n, order_type="LIMIT", size=D("0.5"), limit_price=D("60000"), client_order_id="L1")
    assert r.ok and r.data.status == "NEW" and r.data.venue == "coinbase"     # handed to the venue
    acc = wait_event(n.col, "L1", topics.ORDER_ACCEPTED)
    assert acc.msg.venue_order_id == ex.by_coid["L1"]
    # a fill arrives on the user channel (no REST polling while the channel is up)
    ex.trade(BTC, "59999", "0.2")
    pf = wait_event(n.col, "L1", topics.ORDER_PARTIALLY_FILLED)
    f = wait_event(n.col, "L1", topics.fill(BTC)).msg
    assert (f.price, f.size, f.fee, f.liquidity, f.venue) == (D("60000"), D("0.2"), D("48.000"), "MAKER", "coinbase")
    assert pf.msg.filled_size == D("0.2") and pf.msg.avg_price == D("60000")
    assert n.node.venue.counters["polls"] == 0 and ex.requests["GET /orders/historical/{id}"] == 0
    # a market order fills at the touch
    r = submit(n, order_type="MARKET", size=D("0.01"), client_order_id="M1")
    m1 = wait_event(n.col, "M1", topics.ORDER_FILLED).msg
    assert m1.avg_price == D("65000.01") and m1.fees == D("3.90000060")
    # success:false -> rejected with Coinbase's reason
    submit(n, order_type="MARKET", size=D("1000"), client_order_id="X1")
    rej = wait_event(n.col, "X1", topics.ORDER_REJECTED).msg
    assert rej.code == Code.VENUE_REJECT and "INSUFFICIENT_FUND" in rej.reason
    submit(n, order_type="LIMIT", size=D("0.1"), limit_price=D("70000"), post_only=True, client_order_id="P1")
    rej = wait_event(n.col, "P1", topics.ORDER_REJECTED).msg
    assert rej.code == Code.VENUE_REJECT and "INVALID_LIMIT_PRICE_POST_ONLY" in rej.reason
    # 429, then success: retried with backoff, placed once
    creates = ex.requests[CREATE]
    ex.fail_next(1, 429, "POST", "/api/v3/brokerage/orders")
    submit(n, order_type="MARKET", size=D("0.02"), client_order_id="R1")
    wait_event(n.col, "R1", topics.ORDER_FILLED)
    assert ex.requests[CREATE] == creates + 2 and n.node.venue.counters["http_429"] == 1
    ex.fail_next(2, 503, "POST", "/api/v3/brokerage/orders")
    submit(n, order_type="MARKET", side="SELL", size=D("0.01"), client_order_id="R2")
    wait_event(n.col, "R2", topics.ORDER_FILLED)
    assert ex.requests[CREATE] == creates + 5 and n.node.venue.counters["http_5xx"] == 2
    assert list(ex.by_coid).count("R1") == 1 and len([o for o in ex.orders.values()
                                                       if o["client_order_id"] in ("R1", "R2")]) == 2
    # idempotent: the same id again is answered from the node's state, Coinbase never sees it
    again = submit(n, order_type="MARKET", size=D("0.02"), client_order_id="R1")
    assert again.code == Code.DUPLICATE and again.data.status == "FILLED" and ex.requests[CREATE] == creates + 5
    # cancel the partly filled limit
    c = n.client.request(CancelOrder("L1"))
    assert c.ok and c.reason == "cancel requested"
    cancelled = wait_event(n.col, "L1", topics.ORDER_CANCELLED).msg
    assert cancelled.filled_size == D("0.2") and ex.orders[ex.by_coid["L1"]]["status"] == "CANCELLED"
    # positions from the fills; they match what the exchange booked
    wait_until(lambda: n.client.call(Query("positions"))[0].qty == D("0.22"), 5)
    pos = n.client.call(Query("positions"))[0]
    fills = [x for x in ex.fills]
    assert pos.fees == sum(D(x["commission"]) for x in fills)
    assert pos.qty == sum(D(x["size"]) * (1 if x["side"] == "BUY" else -1) for x in fills)


def test_rest_polling_when_the_user_channel_is_off(live, fake):
    n = live(use_user_ws=False, poll_interval_s=0.1)
    submit(n, order_type="LIMIT", size=D("0.5"), limit_price=D("60000"), client_order_id="L1")
    wait_event(n.col, "L1", topics.ORDER_ACCEPTED)
    fake.ex.trade(BTC, "59000", "1")
    wait_event(n.col, "L1", topics.ORDER_FILLED)
    assert fake.ex.requests["GET /orders/historical/{id}"] >= 1 and n.node.venue.counters["polls"] >= 1


def test_reconcile_at_start_books_fills_made_while_down_once(live, fake):
    n = live()
    submit(n, order_type="LIMIT", size=D("0.5"), limit_price=D("60000"), client_order_id="L1")
    wait_event(n.col, "L1", topics.ORDER_ACCEPTED)
    n.node.stop()
    fake.ex.trade(BTC, "59999", "0.3")                       # fills while execution is down
    status, _ = fake.ex.create_order({"client_order_id": "manual", "product_id": BTC, "side": "SELL",
                                      "order_configuration": {"limit_limit_gtc": {"base_size": "0.1",
                                                                                  "limit_price": "90000"}}})
    assert status == 200
    n2 = live()
    wait_until(lambda: n2.client.call(Query("order", "L1")).filled_size == D("0.3"), 5)
    assert n2.client.call(Query("positions"))[0].qty == D("0.3")
    wait_until(lambda: n2.node.venue.counters["foreign_open_orders"] == 1, 5)
    n2.node.stop()
    n3 = live()                                                # again: nothing is booked twice
    wait_until(lambda: n3.node.venue.counters["ws_connects"] >= 1, 5)
    fake.ex.trade(BTC, "59999", "0.2")
    wait_until(lambda: n3.client.call(Query("order", "L1")).status == "FILLED", 5)
    fills = [r["f"] for r in read_records(n3.node.journal.path) if r["k"] == "fill"]
    assert [(f["size"], f["fill_id"].split("-")[-1]) for f in fills] == [("0.3", "1"), ("0.2", "2")]
    assert n3.client.call(Query("positions"))[0].qty == D("0.5")


def test_duplicate_client_order_id_at_coinbase_adopts_the_existing_order(live, fake):
    """An earlier attempt got through (e.g. before a crash): Coinbase says DUPLICATE_CLIENT_ORDER_ID,
    the node finds that order by client_order_id and adopts it instead of placing another."""
    cfg = {"limit_limit_gtc": {"base_size": "0.5", "limit_price": "60000", "post_only": False}}
    fake.ex.create_order({"client_order_id": "A1", "product_id": BTC, "side": "BUY", "order_configuration": cfg})
    n = live()
    submit(n, order_type="LIMIT", size=D("0.5"), limit_price=D("60000"), client_order_id="A1")
    acc = wait_event(n.col, "A1", topics.ORDER_ACCEPTED).msg
    assert acc.venue_order_id == fake.ex.by_coid["A1"] and len(fake.ex.orders) == 1


def test_unanswered_create_is_looked_up_before_it_is_given_up(live, fake):
    n = live(max_retries=1)
    fake.ex.fail_next(4, 500, None, "/api/v3/brokerage/orders")   # create x2 and the lookup x2 fail
    submit(n, order_type="MARKET", size=D("0.01"), client_order_id="U1")
    rej = wait_event(n.col, "U1", topics.ORDER_REJECTED).msg
    assert rej.code == Code.VENUE_UNAVAILABLE and "never placed" in rej.reason and not fake.ex.orders


def test_user_channel_reconnects_after_an_abnormal_close(live, fake):
    n = live()
    submit(n, order_type="LIMIT", size=D("0.5"), limit_price=D("60000"), client_order_id="L1")
    wait_event(n.col, "L1", topics.ORDER_ACCEPTED)
    assert fake.user.drop_all(1011) == 1
    wait_until(lambda: n.node.venue.counters["ws_connects"] == 2 and n.node.venue.ws_healthy, 5)
    fake.ex.trade(BTC, "59000", "0.5")
    wait_event(n.col, "L1", topics.ORDER_FILLED)


def test_live_mode_refuses_to_start_without_both_switches(short_tmp):
    conf = short_tmp / "mesh.toml"
    conf.write_text(f'[mesh]\nstate_dir = "{short_tmp}"\n[execution]\nvenue = "coinbase"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("TICKMESH_LIVE", "TICKMESH_LIVE_TRADING")}
    env.update(TICKMESH_CONF=str(conf), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "nodes.execution"], env=env, cwd=str(ROOT), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2
    assert "live_trading is false" in p.stderr and "TICKMESH_LIVE=yes is not set" in p.stderr, p.stderr
    env.update(TICKMESH_LIVE_TRADING="true")
    p = subprocess.run([sys.executable, "-m", "nodes.execution"], env=env, cwd=str(ROOT), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "live_trading is false" not in p.stderr and "TICKMESH_LIVE=yes" in p.stderr


def test_fake_rest_follows_the_synthetic_market_and_serves_the_sdk(tmp_path):
    """``serve(market=...)`` (what ``python -m tools.fakecoinbase --rest`` runs): the REST touch
    follows the WebSocket fake's synthetic market; the key file it writes works with the SDK."""
    import json
    from coinbase.rest import RESTClient
    from nodes.marketdata.synthetic import Market
    from tools.fakecoinbase.rest import serve
    market = Market([BTC], seed=3)
    served = serve("127.0.0.1", 0, 0, [BTC], directory=str(tmp_path), market=market)
    try:
        for i in range(20):
            market.step(0.1, time.time_ns())
        t = market.products[BTC].ticker()
        wait_until(lambda: served.exchange.market[BTC]["ask"] == D(t["best_ask"]), 5, what="the touch following")
        key = json.loads(open(served.key_file).read())
        c = RESTClient(api_key=key["name"], api_secret=key["privateKey"], base_url=served.rest.base_url, timeout=5)
        c.session.verify, c.session.trust_env = served.rest.ca_bundle, False
        r = c.market_order_buy(client_order_id="sdk-1", product_id=BTC, base_size="0.001")
        assert r.success
        o = c.get_order(r.success_response["order_id"]).order
        assert o.status == "FILLED" and D(o.average_filled_price) == D(t["best_ask"])
    finally:
        served.stop()
