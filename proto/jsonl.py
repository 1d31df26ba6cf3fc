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
from typing import Iterator

from .codec import Envelope, envelope_to_plain, record_from_plain
from .errors import DecodeError

log = logging.getLogger("tickmesh.jsonl")


def dumps(env: Envelope) -> str:
    return json.dumps(envelope_to_plain(env), separators=(",", ":"))


def loads(line: str) -> Envelope:
    """Parse one event line back into a typed Envelope. Raises DecodeError."""
    try:
        d = json.loads(line)
    except ValueError as e:
        raise DecodeError(f"not JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise DecodeError("not an event line")
    try:
        msg = record_from_plain(d["type"], d["body"])
        return Envelope(d["topic"], int(d["msg_id"]), d["source"], int(d["seq"]), int(d["ts_event"]),
                        int(d["ts_recv"]), msg)
    except KeyError as e:
        raise DecodeError(f"missing key {e}") from None


def read(path, *, with_meta: bool = False) -> Iterator:
    """Yield Envelopes from a store file (and bookkeeping dicts when ``with_meta``).

    A torn last line (a crash mid-write) is skipped with a warning; a bad line elsewhere raises
    DecodeError naming the line number."""
    with open(path, "r", encoding="utf-8") as f:
        lines = f.readlines()
    n = len(lines)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        torn = i == n and not line.endswith("\n")
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
