"""A faster ``proto.jsonl.dumps``: the same store line, character for character, built directly.

``proto.jsonl.dumps(env)`` is ``json.dumps(envelope_to_plain(env), separators=(",", ":"))``: a
generic recursive conversion to plain dicts, then the generic encoder. ``dumps(env)`` here writes
the same text with one precompiled formatter per message type (field names quoted once, Decimal
fields as their exact string, strings through the json module's own C escaping), and falls back to
the generic path for any value it does not know exactly (nested records, maps of other kinds,
bytes, subclasses). tests/unit/test_store_lines.py checks it against ``proto.jsonl.dumps`` on every
registered message type.
"""
import json
from decimal import Decimal

from proto import codec, jsonl
from proto.codec import to_plain
from proto.messages import REGISTRY

try:                                     # the C function json.dumps itself uses (ensure_ascii)
    from _json import encode_basestring_ascii as _esc
except ImportError:  # pragma: no cover - CPython always has it
    from json.encoder import py_encode_basestring_ascii as _esc

_generic = json.JSONEncoder(separators=(",", ":")).encode
_INF = float("inf")
_float_repr = float.__repr__
_int_repr = int.__repr__


def _float(v) -> str:
    if v != v:
        return "NaN"
    if v == _INF:
        return "Infinity"
    if v == -_INF:
        return "-Infinity"
    return _float_repr(v)


def value(v) -> str:
    """One plain value as ``json.dumps(to_plain(v), separators=(",", ":"))`` writes it."""
    t = type(v)
    if t is str:
        return _esc(v)
    if t is Decimal:
        return '"' + str(v) + '"'       # digits, sign, point, exponent: nothing to escape
    if t is int:
        return _int_repr(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return _float(v)
    if t is list or t is tuple:
        return "[" + ",".join([value(x) for x in v]) + "]"
    fmt = _BODY.get(t)
    if fmt is not None and REGISTRY.get(getattr(t, "TAG", None)) is t:
        return "{" + fmt(v) + "}"
    if t is dict and all(type(k) is str for k in v):
        return "{" + ",".join([_esc(k) + ":" + value(x) for k, x in v.items()]) + "}"
    return _generic(to_plain(v))


def levels(v) -> str:
    """A book side (``[[Decimal price, Decimal size], ...]``), else the generic ``value``."""
    if type(v) is list:
        out = []
        add = out.append
        for lv in v:
            if type(lv) is list and len(lv) == 2:
                p, q = lv
                if type(p) is Decimal and type(q) is Decimal:
                    add('["' + str(p) + '","' + str(q) + '"]')
                    continue
            return value(v)
        return "[" + ",".join(out) + "]"
    return value(v)


def _compile(cls):
    """``body(msg) -> '"f1":v1,"f2":v2,...'`` for one message class."""
    from typing import get_type_hints
    from proto.messages import Levels
    hints = get_type_hints(cls)
    keys = [_esc(f) + ":" for f in cls._fields]
    ns = {"_v": value, "_D": Decimal, "_s": str, "_esc": _esc, "_levels": levels}
    parts = []
    for i, k in enumerate(keys):
        ns[f"k{i}"] = k
        if hints.get(cls._fields[i]) is Levels:
            parts.append(f"k{i} + _levels(a{i})")
            continue
        parts.append(f"k{i} + ('\"' + _s(a{i}) + '\"' if type(a{i}) is _D else "
                     f"_esc(a{i}) if type(a{i}) is _s else _v(a{i}))")
    args = ", ".join(f"a{i}" for i in range(len(keys))) + ("," if len(keys) == 1 else "")
    src = f"def body(m):\n    {args} = m\n    return ','.join([{', '.join(parts)}])\n"
    exec(src, ns)
    return ns["body"]


_BODY = {cls: _compile(cls) for cls in REGISTRY.values()}


_TYPE = {cls: ',"type":' + _esc(cls.TAG) + ',"source":' for cls in REGISTRY.values()}


def dumps(env) -> str:
    """``proto.jsonl.dumps(env)``, faster: one store line (no newline). The C formatter
    (``proto.jsonl.dump_line_c``) when it was built and knows every value, else the Python one."""
    if _c is not None:
        try:
            return _c(env)
        except _Unsupported:
            pass
    return dumps_py(env)


_c = jsonl.dump_line_c
_Unsupported = codec._Unsupported


def dumps_py(env) -> str:
    """The Python formatter (precompiled per message type)."""
    topic, msg_id, source, seq, ts_event, ts_recv, msg = env
    cls = type(msg)
    body = _BODY.get(cls)
    if body is None or REGISTRY.get(getattr(cls, "TAG", None)) is not cls:
        return jsonl.dumps_py(env)
    if type(topic) is str and type(source) is str and type(seq) is int and type(msg_id) is int \
            and type(ts_event) is int and type(ts_recv) is int:
        return (f'{{"topic":{_esc(topic)}{_TYPE[cls]}{_esc(source)},"seq":{seq},"msg_id":{msg_id},'
                f'"ts_event":{ts_event},"ts_recv":{ts_recv},"body":{{{body(msg)}}}}}')
    return ('{"topic":' + value(topic) + _TYPE[cls] + value(source) + ',"seq":' + value(seq)
            + ',"msg_id":' + value(msg_id) + ',"ts_event":' + value(ts_event) + ',"ts_recv":' + value(ts_recv)
            + ',"body":{' + body(msg) + "}}")
