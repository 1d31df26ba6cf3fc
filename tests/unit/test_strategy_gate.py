"""The strategy node's order gate: kill switch, risk states, pending orders, backoff, cooldown."""
from decimal import Decimal

from proto import OrderIntent
from nodes.strategy.gate import Gate, reduces

S = 1_000_000_000


def gate(**kw):
    d = dict(cooldown_ns=1 * S, backoff_ns=2 * S, max_backoff_ns=10 * S, pending_timeout_ns=5 * S)
    d.update(kw)
    return Gate(**d)


def buy(coid="a-1", size="0.01"):
    return OrderIntent("BTC-USD", "BUY", "MARKET", size=Decimal(size), client_order_id=coid)


def sell(coid="a-2", size="0.01"):
    return OrderIntent("BTC-USD", "SELL", "MARKET", size=Decimal(size), client_order_id=coid)


def test_kill_switch_and_halted_stop_everything_until_released():
    g = gate()
    assert g.check("a", buy(), 0, Decimal(0)) is None
    g.set_killswitch(True)
    assert g.check("a", buy(), 0, Decimal(0)) == "killswitch"
    assert g.check("a", sell(), 0, Decimal("0.01")) == "killswitch"   # not even reducing orders
    g.set_killswitch(False)
    g.set_risk_state("HALTED")
    assert g.check("a", sell(), 0, Decimal("0.01")) == "halted"
    g.set_risk_state("ACTIVE")
    assert g.check("a", buy(), 0, Decimal(0)) is None


def test_reducing_lets_only_position_reducing_orders_through():
    g = gate()
    g.set_risk_state("REDUCING")
    assert g.check("a", buy(), 0, Decimal(0)) == "reducing"
    assert g.check("a", buy(), 0, Decimal("0.02")) == "reducing"
    assert g.check("a", sell(size="0.03"), 0, Decimal("0.02")) == "reducing"   # would flip short
    assert g.check("a", sell(size="0.02"), 0, Decimal("0.02")) is None
    assert reduces(buy(size="0.01"), Decimal("-0.05"))


def test_pending_until_done_or_timeout():
    g = gate(cooldown_ns=0)
    it = buy("a-1")
    g.sent("a", it, 0)
    assert g.is_pending("a", "BTC-USD")
    assert g.check("a", buy("a-2"), 1 * S, Decimal(0)) == "pending"
    assert g.check("b", buy("b-1"), 1 * S, Decimal(0)) is None          # other plugins are independent
    g.order_done("a", "BTC-USD", "a-0")                                  # an older order: no effect
    assert g.is_pending("a", "BTC-USD")
    g.order_done("a", "BTC-USD", "a-1")
    assert g.check("a", buy("a-2"), 1 * S, Decimal(0)) is None
    g.sent("a", buy("a-2"), 2 * S)
    assert g.check("a", buy("a-3"), 6 * S, Decimal(0)) == "pending"
    assert g.check("a", buy("a-3"), 7 * S, Decimal(0)) is None           # outcome never came: expired
    assert g.expired_pending == 1


def test_backoff_doubles_caps_and_resets_on_success():
    g = gate(cooldown_ns=0)
    pauses = []
    t = 0
    for i in range(5):
        it = buy(f"a-{i}")
        assert g.check("a", it, t, Decimal(0)) is None
        g.sent("a", it, t)
        pauses.append(g.rejected("a", it, t))
        assert g.check("a", buy("x"), t + pauses[-1] - 1, Decimal(0)) == "backoff"
        t += pauses[-1]
    assert pauses == [2 * S, 4 * S, 8 * S, 10 * S, 10 * S]
    it = buy("a-ok")
    assert g.check("a", it, t, Decimal(0)) is None
    g.sent("a", it, t)
    g.accepted("a", it)
    assert g.is_pending("a", "BTC-USD")              # accepted is not done: fills may follow
    g.order_done("a", "BTC-USD", "a-ok")
    assert g.rejected("a", buy("a-n"), t) == 2 * S   # the backoff level was reset


def test_timeout_keeps_the_order_pending_and_backs_off():
    g = gate(cooldown_ns=0)
    it = buy("a-1")
    g.sent("a", it, 0)
    g.rejected("a", it, 0, outcome_known=False)
    assert g.check("a", buy("a-2"), 3 * S, Decimal(0)) == "pending"      # maybe it went out after all
    g.order_done("a", "BTC-USD", "a-1")
    assert g.check("a", buy("a-2"), 1 * S, Decimal(0)) == "backoff"
    assert g.check("a", buy("a-2"), 3 * S, Decimal(0)) is None


def test_cooldown_by_market_time():
    g = gate()
    it = buy()
    g.sent("a", it, 10 * S)
    g.order_done("a", "BTC-USD", it.client_order_id)
    assert g.check("a", buy("n"), 10 * S + S // 2, Decimal(0)) == "cooldown"
    assert g.check("a", buy("n"), 11 * S, Decimal(0)) is None
