"""The execution journal: append-only JSON lines, fsync'd, the node's memory across crashes.

One record per line, each written with a single ``os.write`` on an ``O_APPEND`` descriptor (a
SIGKILL cannot leave half a record behind; a power cut can tear the last line, which ``open()``
truncates away). Records::

    {"k":"order","ts":..,"o":{OrderState}}                 the order's whole state after a change
    {"k":"fill","ts":..,"o":{OrderState},"f":{Fill}}       one execution and the order after it
    {"k":"day","ts":..,"day":"YYYY-MM-DD","start_equity":"..."}   daily PnL baseline
    {"k":"positions","ts":..,"book":{...}}                 compaction snapshot of the positions

The first record of an order (status NEW, ``sent`` false) is its intent, written before risk is
asked; a record with ``sent`` true is written and synced *before* the order goes to the venue. The
last record of an order wins. ``rebuild()`` turns the records back into orders, fills and the day.
The file is locked (flock) so a second execution process cannot write to it. When it grows past
``journal_compact_records`` the node rewrites it at start (``compacted`` + ``Journal.rewrite``).
"""
import dataclasses
import fcntl
import json
import os
import typing
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from nodes.fsutil import replace_durably, write_all
from proto import Fill, to_plain

from .orders import _FIELDS, OrderState


class JournalError(Exception):
    """The journal cannot be used (locked by another process, or corrupt before its last line)."""


class Journal:
    def __init__(self, path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._fd = None
        self._dirty = False
        self.records = 0
        self.syncs = 0

    def open(self) -> list:
        """Lock the file, read every record (dropping a torn last line), open it for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(f"{self.path} is locked by another process "
                               f"(is a second execution node running?)") from None
        try:
            records = self._read(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.records = len(records)
        return records

    def _read(self, fd) -> list:
        with open(self.path, "rb") as f:
            data = f.read()
        out = []
        lines = data.split(b"\n")
        tail = lines.pop()          # b"" when the file ends with a newline
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise JournalError(f"{self.path}:{n}: corrupt record ({e}); refusing to guess") from None
            if not isinstance(rec, dict) or "k" not in rec:
                raise JournalError(f"{self.path}:{n}: not a journal record")
            out.append(rec)
        if tail:
            # a torn last record (power cut mid-write): it never took effect; cut it off so the
            # next append starts on a fresh line
            os.ftruncate(fd, len(data) - len(tail))
            os.fsync(fd)
        return out

    def append(self, rec: dict) -> None:
        self._append_line(json.dumps(rec, separators=(",", ":")).encode("utf-8") + b"\n")

    def _append_line(self, line: bytes) -> None:
        n = os.write(self._fd, line)
        if n != len(line):          # a regular file short write: disk full; never continue silently
            raise JournalError(f"{self.path}: short write ({n} of {len(line)} bytes)")
        self.records += 1
        self._dirty = True

    def sync(self) -> None:
        if self._dirty and self._fd is not None:
            if self.fsync:
                os.fsync(self._fd)
                self.syncs += 1
            self._dirty = False

    def rewrite(self, records: list) -> None:
        """Replace the journal with ``records`` atomically (temp file, fsync, rename, fsync the
        directory) and go on appending to the new file under a lock. A crash at any point leaves
        either the old journal or the new one, whole."""
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_all(fd, b"".join(json.dumps(r, separators=(",", ":")).encode("utf-8") + b"\n" for r in records))
            replace_durably(fd, tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        old, self._fd = self._fd, fd
        os.close(old)            # the old inode (and its lock) goes away
        self.records = len(records)
        self._dirty = False

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)     # releases the lock
                self._fd = None

    # --- record builders ---------------------------------------------------------------------
    # order and fill records are on every order's path (four per filled market order): written by
    # compiled encoders, the same bytes as ``json.dumps(rec, separators=(",", ":"))`` in a fifth of the time
    def order(self, o: OrderState, ts: int) -> None:
        self._append_line(b'{"k":"order","ts":%d,"o":%s}\n' % (ts, _order_json(o)))

    def fill(self, o: OrderState, fill: Fill, ts: int) -> None:
        self._append_line(b'{"k":"fill","ts":%d,"o":%s,"f":%s}\n' % (ts, _order_json(o), _fill_json(fill)))

    def day(self, day: str, start_equity: Decimal, ts: int) -> None:
        self.append({"k": "day", "ts": ts, "day": day, "start_equity": str(start_equity)})


_esc = json.encoder.encode_basestring_ascii      # json.dumps' own escaping (ensure_ascii)


def _json_value(v) -> str:
    """One value as ``json.dumps`` writes it, Decimal as its exact string (``to_plain``)."""
    t = type(v)
    if t is str:
        return _esc(v)
    if t is Decimal:
        return '"%s"' % v              # digits, sign, point, exponent, Infinity/NaN: nothing to escape
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    return json.dumps(to_plain(v), separators=(",", ":"))


def _str_or_null(v) -> str:
    return "null" if v is None else _esc(str(v))


def _compile(cls, names, types, as_str=()):
    """``obj -> JSON bytes`` of ``{name: to_plain(value)}`` for a record type whose fields have
    these types: one format string, each value converted inline when its type is the declared one
    (the generic ``_json_value`` otherwise; ``as_str`` fields: None or ``str(value)``, as
    ``OrderState.to_plain`` writes its money). ``json.dumps``' bytes, in about 40% of its time."""
    inline = {str: "_esc({v})", int: "_int({v})", bool: "('true' if {v} else 'false')",
              Decimal: "'\"%s\"' % {v}"}
    parts, args = [], []
    for name, tp in zip(names, types):
        parts.append(_esc(name) + ":%s")
        v = f"o.{name}"
        opt = typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)
        base = next((t for t in typing.get_args(tp) if t is not type(None)), tp) if opt else tp
        if base in inline:
            expr = inline[base].format(v=v)
            other = "_sv" if name in as_str else "_jv"
            args.append(f"({expr} if type({v}) is {base.__name__} else {other}({v}))")
        else:
            args.append(f"_jv({v})")
    src = (f"def enc(o):\n"
           f"    return ({'{' + ','.join(parts) + '}'!r} % ({', '.join(args)},)).encode('ascii')\n")
    ns = {"_esc": _esc, "_int": int.__repr__, "_jv": _json_value, "_sv": _str_or_null, "Decimal": Decimal}
    exec(compile(src, f"<journal encoder for {cls.__name__}>", "exec"), ns)
    return ns["enc"]


_order_json = _compile(OrderState, _FIELDS, [f.type for f in dataclasses.fields(OrderState)], OrderState._DEC)
_fill_json = _compile(Fill, Fill._fields, [typing.get_type_hints(Fill)[k] for k in Fill._fields])


def compacted(rb: "Rebuilt", book_plain: dict, keep_since_ns: int, ts: int) -> list:
    """The records of a compacted journal: one ``positions`` snapshot (replacing every fill so
    far), the day baseline, and the last state of every working order and of every order updated
    since ``keep_since_ns`` (older finished orders are forgotten: their ids stop being duplicates)."""
    out = [{"k": "positions", "ts": ts, "book": book_plain}]
    if rb.day is not None:
        out.append({"k": "day", "ts": ts, "day": rb.day[0], "start_equity": str(rb.day[1])})
    for o in rb.orders.values():
        if o.working or o.updated_ns >= keep_since_ns:
            out.append({"k": "order", "ts": o.updated_ns, "o": o.to_plain()})
    return out


def read_records(path) -> list:
    """Read-only view of a journal (no lock; a torn last line is ignored): tools and tests."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    lines.pop()
    return [json.loads(x) for x in lines if x.strip()]


class Rebuilt(NamedTuple):
    orders: dict        # coid -> OrderState (last state; insertion order = creation order)
    fills: list         # [(Fill, ts)] in journal order, after the positions snapshot if any
    day: tuple          # (day, start_equity) of the last day record, or None
    book: dict = None   # the positions snapshot of a compacted journal (PositionBook.to_plain)


def fill_from_plain(d: dict) -> Fill:
    return Fill(d["fill_id"], d["client_order_id"], d["product"], d["side"], Decimal(d["price"]),
                Decimal(d["size"]), Decimal(d["fee"]), d["liquidity"], d["venue"])


def rebuild(records) -> Rebuilt:
    """Pure: the orders, fills and daily baseline the records describe. Duplicate fill ids (which
    the node never writes) are ignored so that a fill can never count twice."""
    orders, fills, seen, day, book = {}, [], set(), None, None
    for rec in records:
        k = rec.get("k")
        if k == "positions":            # a compaction snapshot: the fills before it are in it
            book, fills = rec["book"], []
        elif k in ("order", "fill"):
            o = OrderState.from_plain(rec["o"])
            orders[o.client_order_id] = o
            if k == "fill":
                f = fill_from_plain(rec["f"])
                if f.fill_id not in seen:
                    seen.add(f.fill_id)
                    fills.append((f, int(rec["ts"])))
        elif k == "day":
            day = (rec["day"], Decimal(rec["start_equity"]))
    return Rebuilt(orders, fills, day, book)
