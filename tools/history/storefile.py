"""The output of ``tickmesh history fetch``: a store file (``proto.jsonl``) written chunk by chunk.

Layout (every line is a store line; bookkeeping lines start with ``{"type":"_`` and are skipped by
every reader, as in the store node's files)::

    {"type":"_open", "format":"tickmesh.jsonl/1", "node":"history", "history":{product, granularity, start_s, ...}}
    ... the events of chunk 1, in time order ...
    {"type":"_chunk", "start":S, "end":E, "seq":{topic: last seq}, "msgs":N, counts...}
    ... the events of chunk 2 ...
    {"type":"_chunk", ...}
    {"type":"_close", "reason":"complete", ...}        (once the whole range is written)

A chunk's events and its ``_chunk`` line go to the file in one ``write`` followed by ``fsync``, so
the file always ends with a complete chunk, or with part of one that a crash cut. Resuming
(``open()`` on an existing file) keeps everything up to the last ``_chunk`` line, truncates what
follows (a cut chunk, a ``_close``) and continues at that chunk's end: nothing is fetched twice and
nothing is written twice.
"""
import json
import os
import time
from pathlib import Path

from proto import jsonl

FORMAT = "tickmesh.jsonl/1"
CHUNK = b'{"type":"_chunk"'
OPEN = b'{"type":"_open"'


class NotResumable(Exception):
    """The file exists and cannot be continued by this request (one line: why)."""


def _meta(d: dict) -> str:
    return json.dumps(d, separators=(",", ":"))


class Resume:
    """Where an opened file stands: the last complete chunk (or None) and the lines kept."""

    def __init__(self, header: dict, checkpoint: dict = None, lines: int = 1, resumed: bool = False):
        self.header, self.checkpoint, self.lines, self.resumed = header, checkpoint, lines, resumed


class HistoryFile:
    def __init__(self, path, history: dict):
        """``history``: what identifies the request (product, granularity, start_s, ...); a file
        is continued only when its product, granularity and start match."""
        self.path = Path(path)
        self.history = dict(history)
        self.f = None
        self.lines = 0

    def open(self) -> Resume:
        if self.path.exists() and self.path.stat().st_size > 0:
            r = self._resume()
            if r is not None:
                self.f = open(self.path, "ab")
                self.lines = r.lines
                return r
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"type": "_open", "ts": time.time_ns(), "format": FORMAT, "file": self.path.name, "index": 0,
                  "previous": None, "node": "history", "history": self.history}
        self.f = open(self.path, "wb")
        self._write((_meta(header) + "\n").encode())
        self.lines = 1
        return Resume(header)

    def _resume(self):
        with open(self.path, "rb") as f:
            data = f.read()
        first, nl, _rest = data.partition(b"\n")
        if not first.startswith(OPEN):
            raise NotResumable(f"{self.path} exists and is not a file written by `tickmesh history fetch` "
                               f"(choose another --out)")
        if not nl:
            return None              # cut while its header was written: start again
        try:
            header = json.loads(first)
        except ValueError:
            raise NotResumable(f"{self.path}: unreadable header line") from None
        h = header.get("history")
        if not isinstance(h, dict) or header.get("node") != "history":
            raise NotResumable(f"{self.path} exists and is not a file written by `tickmesh history fetch` "
                               f"(choose another --out)")
        for k in ("product", "granularity", "start_s"):
            if h.get(k) != self.history.get(k):
                raise NotResumable(f"{self.path} holds {h.get('product')} {h.get('granularity')} from "
                                   f"{h.get('start')}; this request is {self.history.get('product')} "
                                   f"{self.history.get('granularity')} from {self.history.get('start')} "
                                   f"(choose another --out, or repeat that request to continue it)")
        end = data.rfind(b"\n" + CHUNK)
        checkpoint = None
        keep = len(first) + 1
        if end >= 0:
            line_end = data.find(b"\n", end + 1)
            if line_end < 0:       # the checkpoint line itself was cut: the chunk before it counts
                end = data.rfind(b"\n" + CHUNK, 0, end)
                line_end = data.find(b"\n", end + 1) if end >= 0 else -1
            if end >= 0 and line_end >= 0:
                checkpoint = json.loads(data[end + 1:line_end])
                keep = line_end + 1
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        return Resume(header, checkpoint, data.count(b"\n", 0, keep), resumed=True)

    def trades(self):
        """The Trade envelopes already in the (resumed) file, in file order."""
        with open(self.path, "r", encoding="utf-8") as f:
            for line in f:
                if line.startswith('{"topic":"md.trade.'):
                    yield jsonl.loads(line)

    def write_chunk(self, lines: list, checkpoint: dict):
        body = "\n".join(lines) + ("\n" if lines else "") + _meta({"type": "_chunk", **checkpoint}) + "\n"
        self._write(body.encode())
        self.lines += len(lines) + 1

    def close(self, reason: str = None):
        if self.f is None:
            return
        try:
            if reason is not None:
                self._write((_meta({"type": "_close", "ts": time.time_ns(), "reason": reason,
                                    "lines": self.lines + 1}) + "\n").encode())
                self.lines += 1
        finally:
            self.f.close()
            self.f = None

    def _write(self, b: bytes):
        self.f.write(b)
        self.f.flush()
        os.fsync(self.f.fileno())
