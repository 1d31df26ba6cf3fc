"""Coinbase venue logic without the network: the live-mode switches, order configurations, rejection
reasons, cumulative snapshots -> fills (booked once), and the backoff."""
import random
from decimal import Decimal as D

import pytest

from nodes.config import ConfigError, MeshConfig, Secret
from nodes.execution import ExecutionNode
from nodes.execution.coinbase import (OrderUpdate, backoff_delay, order_configuration, parse_rest_order,
                                      parse_ws_order, reject_reason, update_events)
from nodes.execution.config import ExecutionConfig, LiveTradingRefused, check_live
from nodes.execution.orders import Accepted, Cancelled, Completed, Filled, OrderState, Rejected
from proto import Code, OrderIntent

SECRETS = {"TICKMESH_LIVE": Secret("yes"), "COINBASE_API_KEY": Secret("k"), "COINBASE_API_SECRET": Secret("s")}


def test_paper_is_the_default_and_needs_no_switch():
    check_live(ExecutionConfig(), {})
    assert ExecutionConfig().venue == "paper"


@pytest.mark.parametrize("live_trading,secrets,missing", [
    (False, SECRETS, ["live_trading is false"]),
    (True, {k: v for k, v in SECRETS.items() if k != "TICKMESH_LIVE"}, ["TICKMESH_LIVE=yes is not set"]),
    (True, dict(SECRETS, TICKMESH_LIVE=Secret("true")), ["TICKMESH_LIVE=yes is not set"]),
    (False, {}, ["live_trading is false", "TICKMESH_LIVE=yes", "COINBASE_API_KEY", "COINBASE_API_SECRET"]),
])
def test_live_mode_refuses_to_start_and_says_exactly_why(live_trading, secrets, missing):
    conf = ExecutionConfig(venue="coinbase", live_trading=live_trading)
    with pytest.raises(LiveTradingRefused) as e:
        check_live(conf, secrets)
    for m in missing:
        assert m in str(e.value)
    assert isinstance(e.value, ConfigError) and "secret" not in str(SECRETS["COINBASE_API_SECRET"])
    with pytest.raises(LiveTradingRefused):          # the node checks it before anything else
        ExecutionNode(MeshConfig(), conf, secrets=secrets)


def test_live_mode_with_both_switches():
    check_live(ExecutionConfig(venue="coinbase", live_trading=True), SECRETS)


@pytest.mark.parametrize("kw,fragment", [
    ({"venue": "binance"}, "execution.venue"),
    ({"rest_base_url": "https://127.0.0.1:8443"}, "execution.rest_base_url"),
    ({"ws_user_url": "http://x"}, "execution.ws_user_url"),
    ({"taker_fee_bps": D(-1)}, "execution.taker_fee_bps"),
    ({"latency_ms": -1.0}, "execution.latency_ms"),
])
def test_bad_config_names_the_key(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ExecutionConfig(**kw)


def state(otype="LIMIT", tif="GTC", size="1", quote=None, limit="100", post_only=False, status="NEW", **kw):
    o = OrderState.from_intent(OrderIntent("BTC-USD", "BUY", otype, size=D(size) if size else None,
                                           quote_size=D(quote) if quote else None,
                                           limit_price=D(limit) if limit else None, tif=tif, post_only=post_only,
                                           client_order_id="c1"), "coinbase", 1)
    o.status = status
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_order_configurations_match_the_sdk_helpers():
    assert order_configuration(state("MARKET", size="0.01", limit=None)) == {"market_market_ioc": {"base_size": "0.01"}}
    assert order_configuration(state("MARKET", size=None, quote="10", limit=None)) == \
        {"market_market_ioc": {"quote_size": "10"}}
    assert order_configuration(state("MARKET", tif="FOK", size="1E+1", limit=None)) == \
        {"market_market_fok": {"base_size": "10"}}
    assert order_configuration(state(post_only=True, limit="65000.50")) == \
        {"limit_limit_gtc": {"base_size": "1", "limit_price": "65000.50", "post_only": True}}
    assert order_configuration(state(tif="IOC")) == {"sor_limit_ioc": {"base_size": "1", "limit_price": "100"}}
    assert order_configuration(state(tif="FOK")) == {"limit_limit_fok": {"base_size": "1", "limit_price": "100"}}


def test_reject_reason_is_coinbases():
    assert reject_reason({"success": False, "error_response": {
        "error": "INSUFFICIENT_FUND", "message": "Insufficient balance in source account"}}) == \
        "INSUFFICIENT_FUND: Insufficient balance in source account"
    assert reject_reason({"error_response": {"error": "UNKNOWN_FAILURE_REASON",
                                             "new_order_failure_reason": "INVALID_LIMIT_PRICE_POST_ONLY"}}) == \
        "INVALID_LIMIT_PRICE_POST_ONLY"
    assert reject_reason({"failure_reason": "UNKNOWN_FAILURE_REASON"}) == "UNKNOWN_FAILURE_REASON"


def ws(status, cum="0", value="", fees="0", n="0", **kw):
    d = {"order_id": "v1", "client_order_id": "c1", "product_id": "BTC-USD", "status": status,
         "cumulative_quantity": cum, "filled_value": value, "avg_price": "0", "total_fees": fees,
         "number_of_fills": n}
    d.update(kw)
    return parse_ws_order(d, 7)


def test_cumulative_snapshots_become_fills_exactly_once():
    o = state()
    assert update_events(o, ws("OPEN")) == [Accepted("c1", "v1", 7)]
    o.status, o.venue_order_id = "ACCEPTED", "v1"
    ev = update_events(o, ws("OPEN", "0.4", "40.004", "0.16", "1"))
    assert ev == [Filled("c1", "v1-1", D("100.01"), D("0.4"), D("0.16"), "MAKER", 7, False)]
    o.apply_fill(D("100.01"), D("0.4"), D("0.16"))
    o.status = "PARTIALLY_FILLED"
    assert update_events(o, ws("OPEN", "0.4", "40.004", "0.16", "1")) == []     # same snapshot again
    ev = update_events(o, ws("FILLED", "1", "100.0028", "0.40", "3"))           # two more fills at once
    assert ev == [Filled("c1", "v1-3", D("99.998"), D("0.6"), D("0.24"), "MAKER", 7, True)]
    o.apply_fill(D("99.998"), D("0.6"), D("0.24"))
    o.status = "FILLED"
    assert update_events(o, ws("FILLED", "1", "100.0028", "0.40", "3")) == []


def test_terminal_statuses():
    assert update_events(state(), ws("FAILED", reject_reason="INSUFFICIENT_FUND")) == \
        [Rejected("c1", Code.VENUE_REJECT, "Coinbase: INSUFFICIENT_FUND", 7)]
    ev = update_events(state(status="ACCEPTED", venue_order_id="v1"), ws("CANCELLED", cancel_reason="User requested"))
    assert ev == [Cancelled("c1", Code.OK, "cancelled at Coinbase: User requested", 7)]
    ev = update_events(state(status="ACCEPTED"), ws("CANCELLED"), (Code.KILL_SWITCH, "kill switch engaged"))
    assert ev[-1].code == Code.KILL_SWITCH
    ev = update_events(state(tif="IOC", status="ACCEPTED"), ws("CANCELLED", "0.5", "50", "0.3", "1"))
    assert [type(e) for e in ev] == [Filled, Cancelled] and ev[1].code == Code.IOC_NO_LIQUIDITY
    ev = update_events(state("MARKET", size=None, quote="10", limit=None), ws("FILLED", "0.0001", "6.5", "0.04", "1"))
    assert [type(e) for e in ev] == [Accepted, Filled] and ev[1].done and ev[1].liquidity == "TAKER"
    o = state("MARKET", size=None, quote="10", limit=None, status="PARTIALLY_FILLED", filled_size=D("0.0001"))
    assert update_events(o, ws("FILLED", "0.0001", "6.5")) == [Completed("c1", 7)]


def test_rest_and_ws_views_parse_to_the_same_update():
    rest = parse_rest_order({"order_id": "v1", "client_order_id": "c1", "product_id": "BTC-USD",
                             "status": "OPEN", "filled_size": "0.4", "filled_value": "40.004",
                             "average_filled_price": "100.01", "total_fees": "0.16", "number_of_fills": "1"}, 7)
    w = ws("OPEN", "0.4", "40.004", "0.16", "1", avg_price="100.01")
    assert rest._replace(source="ws") == w and isinstance(w, OrderUpdate)
    assert parse_ws_order({"cumulative_quantity": "garbage"}, 1).cum_size == 0


def test_backoff_is_full_jitter_and_capped():
    rng = random.Random(1)
    for attempt in range(12):
        cap = min(8.0, 0.25 * 2 ** attempt)
        samples = [backoff_delay(attempt, 0.25, 8.0, rng) for _ in range(200)]
        assert all(0 <= s <= cap for s in samples) and max(samples) > cap * 0.8


def test_a_secret_that_cannot_sign_stops_the_start_without_showing_it():
    import logging
    from nodes.execution.coinbase import CoinbaseVenue
    from nodes.runtime import NodeStartError
    conf = ExecutionConfig(venue="coinbase", live_trading=True)
    bad = dict(SECRETS, COINBASE_API_SECRET=Secret("hunter2-not-a-key"))
    with pytest.raises(NodeStartError) as e:
        CoinbaseVenue(conf, MeshConfig(), bad, post=None, log=logging.getLogger("t"))
    assert "cannot sign a JWT" in str(e.value) and "hunter2" not in str(e.value)
