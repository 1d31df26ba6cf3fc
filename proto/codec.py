"""The msgpack codec and the versioned envelope.

Wire frame (one ZeroMQ frame; multipart measured 4-6x slower here)::

    <topic ascii> NUL msgpack([major, minor, type_tag, msg_id, source, seq, ts_event, ts_recv, body])

* ``major`` / ``minor``: protocol version. A newer major is refused; a newer minor may append
  fields (ignored by older decoders).
* ``msg_id``: 64-bit integer, unique per publisher incarnation (random base + counter).
* ``seq``: per publisher *and topic*, starting at 1 on every publisher start, so a subscriber that
  filters by topic still sees contiguous numbers and can detect gaps; a drop back to 1 is a restart.
* ``ts_event``: when the event happened (exchange time for market data), ``ts_recv``: when the
  publishing node received or created it; both integer nanoseconds since the Unix epoch, UTC.
* ``body``: the message fields as an array in declaration order (see ``proto.messages``).

Decimal fields travel as their exact string (e.g. ``"65000.01"``); the schema in
``proto.messages`` turns them back into ``Decimal``. NaN and infinities are refused at both ends.
Inside free-form fields (``Reply.data``) a Decimal travels as msgpack ext type 1 holding its string
and a typed record as ext type 2 holding msgpack ``[type_tag, body]``.
"""
import random
import time
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import msgpack

from . import _native
from .errors import DecodeError, EncodeError
from .messages import REGISTRY, decode_body, encode_body
from .topics import SEP

MAJOR = 1
MINOR = 0
EXT_DECIMAL = 1
EXT_RECORD = 2
MAX_FRAME = 4 * 1024 * 1024   # larger frames are refused (counted as malformed by nodes)

_time_ns = time.time_ns


class Envelope(NamedTuple):
    topic: str
    msg_id: int
    source: str
    seq: int
    ts_event: int
    ts_recv: int
    msg: Any

    @property
    def type(self) -> str:
        return self.msg.TAG


def _ext_hook(code, data):
    if code == EXT_DECIMAL:
        try:
            d = Decimal(data.decode("ascii"))
        except (InvalidOperation, UnicodeDecodeError, ValueError):
            raise DecodeError(f"bad Decimal payload {bytes(data)[:40]!r}") from None
        if not d.is_finite():
            raise DecodeError(f"non-finite Decimal {d} on the wire")
        return d
    if code == EXT_RECORD:
        inner = _unpack(data)
        if type(inner) is not list or len(inner) != 2:
            raise DecodeError("bad nested record")
        cls = REGISTRY.get(inner[0]) if type(inner[0]) is str else None
        if cls is None:
            raise DecodeError(f"unknown nested message type {inner[0]!r:.40}")
        return decode_body(cls, inner[1])
    raise DecodeError(f"unknown msgpack ext type {code}")


def _unpack(data):
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, use_list=True, strict_map_key=True)
    except DecodeError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"malformed msgpack: {type(e).__name__}: {e}"[:200]) from None


class Encoder:
    """Encodes envelopes for one publisher. Not thread-safe: one per thread/socket."""

    __slots__ = ("source", "_pack", "_base", "_count", "_seqs", "_topics", "_tags")

    def __init__(self, source: str):
        self.source = source
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._base = random.getrandbits(62)
        self._count = 0
        self._seqs: dict = {}
        self._topics: dict = {}
        self._tags: dict = {}          # record class -> tag, for classes checked against REGISTRY

    def encode(self, topic: str, msg, ts_event: int = 0, ts_recv: int = 0, msg_id: int = 0) -> bytes:
        """Encode ``msg`` on ``topic``. ``msg_id`` is given for replies (the request's id)."""
        tb = self._topics.get(topic)
        if tb is None:
            if not topic or type(topic) is not str or not topic.isascii() or "\x00" in topic:
                raise EncodeError(f"bad topic {topic!r}")
            tb = self._topics[topic] = topic.encode("ascii") + SEP
        cls = type(msg)
        tag = self._tags.get(cls)
        if tag is None:
            tag = getattr(cls, "TAG", None)
            if tag is None or REGISTRY.get(tag) is not cls:
                raise EncodeError(f"not a registered message: {cls.__name__}")
            self._tags[cls] = tag
        try:
            body = cls._encode(msg)
        except EncodeError:
            raise
        except (AttributeError, TypeError, ValueError) as e:
            raise EncodeError(f"cannot encode {cls.__name__}: {e}") from None
        seq = self._seqs.get(topic, 0) + 1
        self._count += 1
        if not (ts_event and ts_recv):
            now = _time_ns()
            ts_event = ts_event or now
            ts_recv = ts_recv or now
        env = [MAJOR, MINOR, tag, msg_id or self._base + self._count, self.source, seq, ts_event, ts_recv, body]
        if _pack_frame is not None:
            try:
                frame = _pack_frame(tb, env)
                self._seqs[topic] = seq
                return frame
            except _Unsupported:       # an ext type, a subclass, a huge int...: msgpack's packer
                pass
        try:
            payload = self._pack(env)
        except (TypeError, ValueError, OverflowError) as e:
            raise EncodeError(f"cannot encode {tag}: {e}") from None   # seq unchanged: nothing went out
        self._seqs[topic] = seq
        return tb + payload

    def next_id(self) -> int:
        self._count += 1
        return self._base + self._count


_unpackb = msgpack.unpackb
_tuple_new = tuple.__new__


def decode_py(frame) -> Envelope:
    """Decode one wire frame. Raises ``DecodeError`` for anything that is not a valid envelope.

    The pure Python decoder. ``decode`` is the C envelope decoder (``proto._speedups``) when it was
    built: it runs the well-formed fast path and hands every other frame to this function, so both
    accept, refuse and explain exactly the same frames."""
    if type(frame) is not bytes:
        frame = bytes(frame)
    if len(frame) > MAX_FRAME:
        raise DecodeError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    i = frame.find(SEP)
    if i <= 0:
        raise DecodeError("no topic separator")
    try:
        obj = _unpackb(frame[i + 1:], ext_hook=_ext_hook, raw=False)
        topic = frame[:i].decode("ascii")
        major, _minor, tag, msg_id, source, seq, ts_event, ts_recv, body = obj
    except DecodeError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"malformed envelope: {type(e).__name__}: {e}"[:200]) from None
    if major != MAJOR or type(major) is not int:
        raise DecodeError(f"unsupported protocol major version {major!r:.20} (this build speaks {MAJOR})")
    cls = REGISTRY.get(tag) if type(tag) is str else None
    if cls is None:
        raise DecodeError(f"unknown message type {tag!r:.40}")
    if not (type(msg_id) is int and type(seq) is int and type(ts_event) is int
            and type(ts_recv) is int and type(source) is str):
        raise DecodeError(f"{tag}: envelope ids and times must be integers, source a string")
    if type(body) is not list or len(body) != len(cls._fields):
        return _tuple_new(Envelope, (topic, msg_id, source, seq, ts_event, ts_recv, decode_body(cls, body)))
    return _tuple_new(Envelope, (topic, msg_id, source, seq, ts_event, ts_recv, cls._decode(body)))


def _speedups():
    sp = _native.SP
    if sp is None:
        return None
    # tag -> (record class, its unwrapped body decoder, field count); a tag registered later is
    # not in it and takes the Python path
    fast = {tag: (cls, cls._decode_fast, len(cls._fields)) for tag, cls in REGISTRY.items()}
    sp.configure(_unpackb, {"ext_hook": _ext_hook, "raw": False}, fast, Envelope, decode_py,
                 MAJOR, MAX_FRAME, SEP)
    return sp


_SP = _speedups()
decode = _SP.decode if _SP is not None else decode_py
_pack_frame = _SP.pack_frame if _SP is not None else None
_Unsupported = _SP.Unsupported if _SP is not None else ()
SPEEDUPS = _SP is not None   # reported by `tickmesh` tools and the bus benchmark


def encode(topic: str, msg, source: str = "anon", ts_event: int = 0, ts_recv: int = 0) -> bytes:
    """One-off encode (tests, tools). Publishers keep an ``Encoder`` for their sequence numbers."""
    return Encoder(source).encode(topic, msg, ts_event, ts_recv)


def to_plain(value):
    """Convert a decoded value to JSON-friendly plain data: Decimal -> exact string, records -> dicts."""
    t = type(value)
    if t is Decimal:
        return str(value)
    if hasattr(value, "_asdict") and hasattr(value, "TAG"):
        return {k: to_plain(v) for k, v in zip(value._fields, value)}
    if t is list or t is tuple:
        return [to_plain(v) for v in value]
    if t is dict:
        return {k: to_plain(v) for k, v in value.items()}
    if t is bytes:
        return value.hex()
    return value


def envelope_to_plain(env: Envelope) -> dict:
    """The store/tap JSON shape of an envelope (money as exact strings)."""
    return {"topic": env.topic, "type": env.msg.TAG, "source": env.source, "seq": env.seq,
            "msg_id": env.msg_id, "ts_event": env.ts_event, "ts_recv": env.ts_recv,
            "body": to_plain(env.msg)}


def record_from_plain(tag: str, body: dict):
    """Rebuild a typed record from ``to_plain`` output (store files, JSON tools).

    The plain form of every field is its wire form (Decimals as exact strings), so the same
    validation as ``decode`` applies."""
    cls = REGISTRY.get(tag)
    if cls is None:
        raise DecodeError(f"unknown message type {tag!r}")
    if not isinstance(body, dict):
        raise DecodeError(f"{tag}: body must be an object")
    vals = []
    for name in cls._fields:
        if name in body:
            vals.append(body[name])
        elif name in cls._field_defaults:
            vals.append(cls._field_defaults[name])
        else:
            raise DecodeError(f"{tag}: missing field {name}")
    return decode_body(cls, vals)
