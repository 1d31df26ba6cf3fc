"""The order state machine, client order ids, intent validation, and the node's name hygiene."""
import ast
import inspect
import itertools
import uuid
from decimal import Decimal as D

import pytest

import nodes.execution as execution
from nodes.config import DEFAULT_SPECS, MeshConfig
from nodes.execution import orders as O
from nodes.execution.orders import (IllegalTransition, OrderState, derive_client_order_id, same_intent,
                                    validate_intent)
from nodes.runtime import Node
from proto import Code, Order, OrderIntent, topics

LEGAL = {("NEW", "ACCEPTED"), ("NEW", "REJECTED"), ("ACCEPTED", "PARTIALLY_FILLED"), ("ACCEPTED", "FILLED"),
         ("ACCEPTED", "CANCELLED"), ("PARTIALLY_FILLED", "PARTIALLY_FILLED"), ("PARTIALLY_FILLED", "FILLED"),
         ("PARTIALLY_FILLED", "CANCELLED")}
STATES = ("NEW", "ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED")


def order(status="NEW", **kw):
    o = OrderState.from_intent(OrderIntent("BTC-USD", "BUY", "LIMIT", size=D("1"), limit_price=D("100"),
                                           client_order_id="c-1", origin_ns=42), "paper", 1)
    o.status = status
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_transition_table_is_exactly_the_documented_lifecycle():
    got = {(s, d) for s, nxt in O.TRANSITIONS.items() for d in nxt}
    assert got == LEGAL
    assert O.TERMINAL == {"FILLED", "CANCELLED", "REJECTED"}
    assert set(O.TRANSITIONS) == set(topics.ORDER_STATUS_TOPIC)


@pytest.mark.parametrize("src,dst", [p for p in itertools.product(STATES, STATES) if p not in LEGAL])
def test_illegal_transitions_raise_naming_both_states(src, dst):
    o = order(src)
    with pytest.raises(IllegalTransition) as e:
        o.transition(dst, 2)
    assert f"{src} -> {dst}" in str(e.value) and "c-1" in str(e.value)
    assert o.status == src


@pytest.mark.parametrize("src,dst", sorted(LEGAL))
def test_legal_transitions_give_the_full_order(src, dst):
    o = order(src)
    msg = o.transition(dst, 5, Code.OK, "why")
    assert type(msg) is Order and msg.status == dst and msg.updated_ns == 5 and msg.reason == "why"
    assert msg.origin_ns == 42 and msg.client_order_id == "c-1" and msg.limit_price == D("100")
    assert topics.ORDER_STATUS_TOPIC[msg.status].startswith("order.")


def test_fills_accumulate_exactly_and_plain_form_round_trips():
    o = order("ACCEPTED")
    o.apply_fill(D("100.01"), D("0.3"), D("0.18"))
    o.apply_fill(D("99.99"), D("0.2"), D("0.12"))
    assert o.filled_size == D("0.5") and o.filled_value == D("50.001") and o.fees == D("0.30")
    assert o.avg_price == D("100.002") and o.fills == 2 and o.remaining == D("0.5")
    back = OrderState.from_plain(o.to_plain())
    assert back == o and type(back.filled_value) is D


def test_derived_client_order_id_is_deterministic_and_uuid_shaped():
    a = OrderIntent("BTC-USD", "BUY", "MARKET", size=D("0.010"))
    b = OrderIntent("BTC-USD", "BUY", "MARKET", size=D("0.01"))          # same order, other spelling
    c = OrderIntent("BTC-USD", "BUY", "MARKET", size=D("0.01"), origin_ns=7)
    assert derive_client_order_id(a) == derive_client_order_id(b) != derive_client_order_id(c)
    assert str(uuid.UUID(derive_client_order_id(a))) == derive_client_order_id(a)
    assert derive_client_order_id(a._replace(side="SELL")) != derive_client_order_id(a)
    o = OrderState.from_intent(a._replace(client_order_id="x"), "paper", 1)
    assert same_intent(o, b) and not same_intent(o, b._replace(size=D("0.02")))


SPEC = DEFAULT_SPECS["BTC-USD"]


@pytest.mark.parametrize("intent,fragment", [
    (OrderIntent("BTC-USD", "HOLD", "MARKET", size=D(1), client_order_id="x"), "side"),
    (OrderIntent("BTC-USD", "BUY", "STOP", size=D(1), client_order_id="x"), "order_type"),
    (OrderIntent("BTC-USD", "BUY", "LIMIT", size=D(1), limit_price=D(1), tif="GTD", client_order_id="x"), "tif"),
    (OrderIntent("BTC-USD", "BUY", "MARKET", client_order_id="x"), "exactly one"),
    (OrderIntent("BTC-USD", "BUY", "MARKET", size=D(1), quote_size=D(1), client_order_id="x"), "exactly one"),
    (OrderIntent("BTC-USD", "BUY", "MARKET", size=D(-1), client_order_id="x"), "size must be > 0"),
    (OrderIntent("BTC-USD", "BUY", "LIMIT", size=D(1), client_order_id="x"), "limit_price"),
    (OrderIntent("BTC-USD", "BUY", "LIMIT", size=D(1), limit_price=D(1), tif="IOC", post_only=True,
                 client_order_id="x"), "post_only"),
    (OrderIntent("BTC-USD", "BUY", "MARKET", size=D(1), post_only=True, client_order_id="x"), "post_only"),
    (OrderIntent("BTC-USD", "BUY", "MARKET", size=D(1), client_order_id="x" * 129), "client_order_id"),
])
def test_invalid_intents_are_named(intent, fragment):
    code, reason = validate_intent(intent, SPEC)
    assert code == Code.INVALID_ORDER and fragment in reason


def test_valid_intents_and_unknown_products():
    ok = [OrderIntent("BTC-USD", "BUY", "MARKET", quote_size=D(10), client_order_id="x"),
          OrderIntent("BTC-USD", "SELL", "LIMIT", size=D(1), limit_price=D(1), tif="FOK", client_order_id="x"),
          OrderIntent("BTC-USD", "BUY", "LIMIT", size=D(1), limit_price=D(1), post_only=True, client_order_id="x")]
    assert all(validate_intent(i, SPEC) is None for i in ok)
    assert "no product spec" in validate_intent(ok[0]._replace(product="DOGE-USD"), None)[1]


def _assigned_attrs(cls):
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    out.add(t.attr)
    return out


def test_execution_node_does_not_shadow_runtime_internals():
    """The runtime's private names (e.g. ``_send``) must never be overwritten by the node."""
    base = Node(MeshConfig())
    runtime_names = set(dir(Node)) | set(vars(base))
    allowed = {"name", "subscriptions", "setup", "teardown", "extra_counters", "__init__", "__doc__",
               "__module__", "__qualname__", "__firstlineno__", "__static_attributes__", "on_gap", "from_config"}
    own = {k for k in vars(execution.ExecutionNode)} - allowed
    assert not own & runtime_names, own & runtime_names
    assert not (_assigned_attrs(execution.ExecutionNode) - {"conf"}) & runtime_names
