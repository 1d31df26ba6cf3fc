"""The store's JSON Lines format: one event per line, money as exact strings.

A line is ``proto.envelope_to_plain(env)`` as compact JSON::

    {"topic":"md.tick.BTC-USD","type":"Tick","source":"marketdata","seq":17,"msg_id":...,
     "ts_event":...,"ts_recv":...,"body":{"product":"BTC-USD","price":"65000.01",...}}

Bookkeeping lines have a ``type`` starting with ``_`` and no envelope: ``_gap`` (a bus sequence gap
the writer saw: ``{"type":"_gap","source":..,"topic":..,"missing":..,"ts":..}``), ``_lag`` (the
writer fell behind), ``_open`` (file header). Readers skip them unless asked.
"""
import json
import logging
from decimal import Decimal
from typing import Iterator

from . import codec
from .codec import Envelope, envelope_to_plain, record_from_plain
from .errors import DecodeError
from .messages import REGISTRY, field_kinds

log = logging.getLogger("tickmesh.jsonl")


def dumps_py(env: Envelope) -> str:
    """The definition of a store line."""
    return json.dumps(envelope_to_plain(env), separators=(",", ":"))


def _c_dump_line():
    """proto._speedups.dump_line (the same text, in C) when the extension was built."""
    sp = codec._SP
    if sp is None:
        return None
    from json.encoder import encode_basestring_ascii as esc   # json's own C escaper
    records = {cls: tuple(esc(f) + ":" for f in cls._fields) for cls in REGISTRY.values()}
    type_parts = {cls: ',"type":' + esc(cls.TAG) + ',"source":' for cls in REGISTRY.values()}
    sp.configure_lines(records, type_parts, esc, Decimal, Envelope)
    return sp.dump_line


dump_line_c = _c_dump_line()      # None without the extension; raises codec._Unsupported when unsure


class Line(str):
    """A store line formatted straight from a wire frame (``decode_for_store``), in place of the
    record in an Envelope: the text ``dumps`` would write for the decoded record, nothing else."""
    __slots__ = ()


def _c_store_envelope():
    if dump_line_c is None:
        return None
    kinds = {tag: k for tag, cls in REGISTRY.items() if (k := field_kinds(cls)) is not None}
    codec._SP.configure_store(kinds, Line)
    return codec._SP.store_envelope


# decode_for_store(frame) -> Envelope: ``codec.decode(frame)``, except that a frame of plain market
# data (bodies of canonical decimal strings, str, int, bool, float, book levels) comes back with its
# store line (a ``Line``) in place of the record: validated exactly as ``decode`` validates it and
# formatted exactly as ``dumps`` formats the decoded record, without building its Decimals
# (tests/unit/test_store_lines.py checks both against decode + dumps_py). Raises DecodeError as
# ``decode`` does. Without the C extension it is ``codec.decode``.
_store_envelope = _c_store_envelope()
decode_for_store = _store_envelope if _store_envelope is not None else codec.decode


def dumps(env: Envelope) -> str:
    """One store line (no newline): the C formatter when built and sure, else ``dumps_py``."""
    if dump_line_c is not None:
        try:
            return dump_line_c(env)
        except codec._Unsupported:
            pass
    return dumps_py(env)


# tag -> (class, field names, its validating decoder without the error-naming wrapper): the common
# line (every field present, every value what the record's decoder takes) skips the generic walk
_FAST = {tag: (cls, cls._fields, cls._decode_fast) for tag, cls in REGISTRY.items()}
_scan = json.JSONDecoder().scan_once      # json.loads without its two Python layers and regexes
_new_envelope = Envelope._make


def loads(line: str) -> Envelope:
    """Parse one event line back into a typed Envelope. Raises DecodeError."""
    try:
        d, end = _scan(line, 0)
        if end != len(line) and line[end:].strip():
            raise ValueError("extra data")
    except (ValueError, StopIteration):
        try:                                    # the error json.loads names
            d = json.loads(line)
        except ValueError as e:
            raise DecodeError(f"not JSON: {e}") from None
    if type(d) is dict:
        fast = _FAST.get(d.get("type"))
        body = d.get("body")
        if fast is not None and type(body) is dict:
            try:
                msg = fast[2]([body[f] for f in fast[1]])
                return _new_envelope((d["topic"], int(d["msg_id"]), d["source"], int(d["seq"]),
                                      int(d["ts_event"]), int(d["ts_recv"]), msg))
            except Exception:  # noqa: BLE001 - the full path below gives the named error
                pass
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise DecodeError("not an event line")
    try:
        msg = record_from_plain(d["type"], d["body"])
        return Envelope(d["topic"], int(d["msg_id"]), d["source"], int(d["seq"]), int(d["ts_event"]),
                        int(d["ts_recv"]), msg)
    except KeyError as e:
        raise DecodeError(f"missing key {e}") from None


def read(path, *, with_meta: bool = False, skip: tuple = ()) -> Iterator:
    """Yield Envelopes from a store file (and bookkeeping dicts when ``with_meta``). ``skip``:
    topic prefixes whose lines are passed over without being parsed (a reader that does not need
    every book or trade of a long run).

    A torn last line (a crash mid-write) is skipped with a warning; a bad line elsewhere raises
    DecodeError naming the line number."""
    skip = tuple('{"topic":"' + t for t in skip)
    with open(path, "r", encoding="utf-8") as f:   # one line at a time: a reader that stops early reads no more
        for i, line in enumerate(f, 1):
            if skip and line.startswith(skip):
                continue
            if not line.strip():
                continue
            torn = not line.endswith("\n")        # only the last line can lack its newline
            try:
                if line.startswith('{"type":"_'):
                    if with_meta:
                        yield json.loads(line)
                    continue
                yield loads(line)
            except (DecodeError, ValueError) as e:
                if torn:
                    log.warning("%s: skipped torn last line %d (%s)", path, i, e)
                    return
                raise DecodeError(f"{path}:{i}: {e}") from None
