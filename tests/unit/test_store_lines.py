"""nodes.store.lines.dumps writes exactly proto.jsonl.dumps's line for every message type, whatever the
values (escapes, unicode, None, big numbers, NaN, nested free-form data), and falls back to it."""
import math
from decimal import Decimal
from typing import Any, get_type_hints

from hypothesis import given, settings, strategies as st

from nodes.store import lines
from proto import jsonl
from proto.codec import Envelope
from proto.messages import REGISTRY, DecMap, IntMap, Levels

TEXT = st.text(max_size=12)
DEC = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: d.is_finite())
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), TEXT, DEC,
                   st.floats(allow_nan=True, allow_infinity=True))
ANY = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)


def field_strategy(tp):
    args = getattr(tp, "__args__", ())
    if getattr(tp, "__origin__", None) is not None and type(None) in args:     # Optional[X]
        return st.one_of(st.none(), field_strategy([a for a in args if a is not type(None)][0]))
    if tp is Decimal:
        return DEC
    if tp is Levels:
        return st.lists(st.tuples(DEC, DEC).map(list), max_size=4)
    if tp is DecMap:
        return st.dictionaries(TEXT, DEC, max_size=3)
    if tp is IntMap:
        return st.dictionaries(TEXT, st.integers(-2**40, 2**40), max_size=3)
    if tp is float:
        return st.floats(allow_nan=True, allow_infinity=True)
    if tp is int:
        return st.integers(-2**70, 2**70)
    if tp is str:
        return TEXT
    if tp is bool:
        return st.booleans()
    if tp is bytes:
        return st.binary(max_size=8)
    if tp is list:
        return st.lists(ANY, max_size=3)
    if tp is dict:
        return st.dictionaries(TEXT, ANY, max_size=3)
    if tp is Any:
        return ANY
    raise AssertionError(f"no strategy for {tp!r}")


def record_strategy(cls):
    hints = get_type_hints(cls)
    return st.tuples(*[field_strategy(hints[f]) for f in cls._fields]).map(lambda vals: cls(*vals))


RECORD = st.one_of([record_strategy(c) for c in REGISTRY.values()])
ENVELOPE = st.builds(Envelope, TEXT, st.integers(0, 2**64), TEXT, st.integers(0, 2**40), st.integers(0, 2**63),
                     st.integers(0, 2**63), RECORD)


@settings(max_examples=300, deadline=None)
@given(ENVELOPE)
def test_same_line_as_proto_jsonl(env):
    assert lines.dumps(env) == jsonl.dumps(env)


@settings(max_examples=100, deadline=None)
@given(RECORD, st.lists(RECORD, max_size=2))
def test_nested_records_and_odd_containers(rec, nested):
    from proto import Reply
    data = {"records": nested, "tuple": (Decimal("1.50"), "x"), 7: "non-str key", "n": math.pi}
    for body in (rec, Reply(True, "OK", "", data), Reply(False, "X", "\"quoted\"\n\u00e9", [rec, (1, 2)])):
        env = Envelope("rep", 1, "src", 1, 2, 3, body)
        assert lines.dumps(env) == jsonl.dumps(env)


def test_every_message_type_has_a_formatter():
    assert set(lines._BODY) == set(REGISTRY.values())
