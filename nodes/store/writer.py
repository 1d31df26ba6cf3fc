"""The store's writer: a bounded queue drained by one thread into rotating JSON Lines files.

The node's loop thread only appends decoded envelopes to a ``deque`` (O(1), never blocks, never
does I/O), so the store can never slow the bus. One writer thread wakes every ``flush_interval_s``
(or early, once ``batch_max`` events wait), formats the batch (``nodes.store.lines.dumps``: exactly
``proto.jsonl.dumps``'s lines, 2-4x faster), writes it with one ``write()`` and flushes it to the
OS. ``fsync`` decides when the OS is made to put it on disk: ``never``, ``interval`` (at most once
per flush interval) or ``always`` (after every batch).

Falling behind is never silent: past ``queue_max`` waiting events new events are dropped, counted
(``dropped``), logged, and a ``_lag`` line with the count goes into the file where it happened; a
queue more than half full also writes a ``_lag`` line (``dropped: 0``) and a warning. Bus sequence
gaps become ``_gap`` lines in event order (they are queued like events and are never dropped).

Files are ``<dir>/<basename>-YYYYMMDD-NNNN.jsonl`` (UTC day of writing, a per-day counter), each
opened exclusively (an existing file is never appended to, so a torn line left by a crash stays the
*last* line of its file, which ``proto.jsonl.read`` skips). The first line is ``_open``; a file
closed cleanly (rotation, stop) ends with ``_close``; a file without one was cut by a crash.
"""
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from proto.codec import Envelope
from proto.jsonl import Line

from . import lines as _lines

FORMAT = "tickmesh.jsonl/1"
CLOSE_RESERVE = 128       # bytes kept free for the _close line
_log = logging.getLogger("tickmesh.store.writer")


def utc_day(ts_ns: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts_ns // 1_000_000_000))


def _meta(d: dict) -> str:
    # compact, "type" first: proto.jsonl.read recognises bookkeeping lines by their '{"type":"_' start
    return json.dumps(d, separators=(",", ":"))


class RotatingFile:
    """Append-only JSON Lines files rotated by size and by UTC day. Used by one thread only."""

    def __init__(self, directory, *, basename: str = "events", rotate_bytes: int = 256 << 20,
                 fsync: str = "interval", header: dict = None):
        self.dir = Path(directory)
        self.basename = basename
        self.rotate_bytes = rotate_bytes
        self.fsync_policy = fsync
        self.header = dict(header or {})
        self.f = None
        self.path = None
        self.day = None
        self.size = 0
        self.lines = 0           # event and bookkeeping lines written to the current file
        self.files = 0           # files opened
        self.bytes = 0           # bytes written, all files
        self.fsyncs = 0

    def _next_index(self, day: str) -> int:
        head = f"{self.basename}-{day}-"
        idx = -1
        for p in self.dir.glob(f"{head}*.jsonl"):
            tail = p.name[len(head):-len(".jsonl")]
            if tail.isdigit():
                idx = max(idx, int(tail))
        return idx + 1

    def open(self, now_ns: int):
        self.dir.mkdir(parents=True, exist_ok=True)
        day = utc_day(now_ns)
        idx = self._next_index(day)
        while True:
            path = self.dir / f"{self.basename}-{day}-{idx:04d}.jsonl"
            try:
                f = open(path, "x", encoding="utf-8", newline="")
                break
            except FileExistsError:
                idx += 1
        previous = self.path.name if self.path is not None else None
        self.f, self.path, self.day, self.size, self.lines = f, path, day, 0, 0
        self.files += 1
        hdr = {"type": "_open", "ts": now_ns, "format": FORMAT, "file": path.name, "index": idx,
               "previous": previous}
        hdr.update(self.header)
        self._write_text(_meta(hdr) + "\n")
        self.lines += 1
        self.f.flush()
        if self.fsync_policy != "never":
            self._fsync_file()
            self._fsync_dir()
        _log.info("store: opened %s", path)

    def close(self, now_ns: int, reason: str):
        if self.f is None:
            return
        try:
            self._write_text(_meta({"type": "_close", "ts": now_ns, "reason": reason,
                                    "lines": self.lines + 1}) + "\n")
            self.f.flush()
            if self.fsync_policy != "never":
                self._fsync_file()
        finally:
            self.f.close()
            self.f = None

    def abandon(self):
        """Drop the current file after a write error (the next write opens a new one)."""
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None

    def write_lines(self, lines: list, now_ns: int):
        """Write lines (no newline) to the current file, rotating by UTC day and by size."""
        if not lines:
            return
        if self.f is None:
            self.open(now_ns)
        elif utc_day(now_ns) != self.day:
            self.close(now_ns, "day")
            self.open(now_ns)
        size = self.size
        limit = self.rotate_bytes - CLOSE_RESERVE      # a file ends with its _close line under the limit
        if size + sum(map(len, lines)) + len(lines) <= limit:
            self._write_chunk(lines)                    # the usual case: the batch fits
            return
        chunk = []
        for line in lines:
            n = len(line) + 1     # json.dumps output is ASCII: characters == bytes
            if size + n > limit and self.lines - 1 + len(chunk) > 0:   # never rotate an empty file
                self._write_chunk(chunk)
                chunk = []
                self.close(now_ns, "size")
                self.open(now_ns)
                size = self.size
            chunk.append(line)
            size += n
        self._write_chunk(chunk)

    def _write_chunk(self, chunk):
        if chunk:
            self._write_text("\n".join(chunk) + "\n")
            self.lines += len(chunk)

    def _write_text(self, s: str):
        self.f.write(s)
        self.size += len(s)
        self.bytes += len(s)

    def flush(self):
        if self.f is not None:
            self.f.flush()

    def fsync(self):
        if self.f is not None:
            self.f.flush()
            self._fsync_file()

    def _fsync_file(self):
        os.fsync(self.f.fileno())
        self.fsyncs += 1

    def _fsync_dir(self):
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Gap:
    __slots__ = ("source", "topic", "missing", "ts")

    def __init__(self, source, topic, missing, ts):
        self.source, self.topic, self.missing, self.ts = source, topic, missing, ts


class StoreWriter:
    """A bounded queue and the thread that drains it into a ``RotatingFile``.

    ``put()``/``put_gap()``/``flush()`` are called from the node's loop thread; everything else
    that touches the file runs in the writer thread."""

    WARN_EVERY_S = 10.0

    def __init__(self, directory, *, basename: str = "events", rotate_bytes: int = 256 << 20,
                 flush_interval_s: float = 0.2, fsync: str = "interval", queue_max: int = 200_000,
                 batch_max: int = 5000, header: dict = None, clock=time.time_ns, log=None):
        self.file = RotatingFile(directory, basename=basename, rotate_bytes=rotate_bytes, fsync=fsync,
                                 header=header)
        self.flush_interval_s = flush_interval_s
        self.fsync_policy = fsync
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.clock = clock
        self.log = log or _log
        self.q = deque()
        # counters (each written by one thread only; read anywhere)
        self.stored = 0          # writer: events handed to the OS
        self.dropped = 0         # loop thread: events refused because the queue was full
        self.gap_lines = 0
        self.lag_lines = 0
        self.lag_events = 0      # writer: times it found itself behind (queue > half full or drops)
        self.write_errors = 0
        self.write_lost = 0      # events of batches whose write failed
        self.format_errors = 0
        self.max_depth = 0
        self._dropped_seen = 0
        self._last_drop_log = -1e9
        self._last_lag_line = -1e9
        self._last_lag_log = -1e9
        self._wake = threading.Event()
        self._cv = threading.Condition()
        self._flush_req = 0
        self._flush_done = 0
        self._stop = False
        self._thread = None
        self.error = None

    # --- loop-thread side -------------------------------------------------------------------------
    def put(self, env) -> bool:
        """Queue one event. Never blocks: a full queue drops it, counts it and says so."""
        q = self.q
        n = len(q)
        if n >= self.queue_max:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= self.WARN_EVERY_S:
                self._last_drop_log = now
                self.log.warning("store writer behind: queue full (%d), %d events dropped so far",
                                 n, self.dropped)
                self._wake.set()
            return False
        q.append(env)
        if n + 1 == self.batch_max:
            self._wake.set()
        return True

    def put_gap(self, source: str, topic: str, missing: int):
        """Queue a ``_gap`` line (bookkeeping is never dropped: it marks where a file is incomplete)."""
        self.q.append(_Gap(source, topic, int(missing), self.clock()))

    def flush(self, timeout: float = 1.0) -> bool:
        """Ask the writer to write and flush (and fsync unless ``never``) what is queued; wait."""
        if not self.alive:
            return False
        with self._cv:
            self._flush_req += 1
            target = self._flush_req
        self._wake.set()
        with self._cv:
            return self._cv.wait_for(lambda: self._flush_done >= target or not self.alive, timeout) \
                and self._flush_done >= target

    @property
    def depth(self) -> int:
        return len(self.q)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 0.8) -> bool:
        """Write what is queued, close the file with a ``_close`` line, join the thread."""
        self._stop = True
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.log.error("store writer did not finish within %.1f s (%d events still queued)",
                           timeout, len(self.q))
            return False
        return True

    def stats(self) -> dict:
        f = self.file
        return {"events_stored": self.stored, "events_dropped": self.dropped, "queue": len(self.q),
                "queue_max": self.queue_max, "max_depth": self.max_depth, "gap_lines": self.gap_lines,
                "lag_lines": self.lag_lines, "lag_events": self.lag_events, "files": f.files,
                "bytes": f.bytes, "fsyncs": f.fsyncs, "write_errors": self.write_errors,
                "write_lost": self.write_lost, "format_errors": self.format_errors,
                "file": str(f.path) if f.path else None, "dir": str(f.dir), "fsync": self.fsync_policy}

    # --- writer thread ------------------------------------------------------------------------------
    def _run(self):
        interval = self.flush_interval_s
        last_fsync = time.monotonic()
        dirty = False        # written since the last fsync
        try:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                stopping = self._stop
                with self._cv:
                    req = self._flush_req
                wrote = self._drain()
                dirty = dirty or wrote
                self.file.flush()
                now = time.monotonic()
                if dirty and self.fsync_policy != "never" and (
                        self.fsync_policy == "always" or req != self._flush_done or stopping
                        or now - last_fsync >= interval):
                    self._fsync()
                    last_fsync, dirty = now, False
                if req != self._flush_done:
                    with self._cv:
                        self._flush_done = req
                        self._cv.notify_all()
                if stopping and not self.q:
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the node; never dies silently
            self.error = e
            self.log.exception("store writer failed")
        finally:
            try:
                self.file.close(self.clock(), "stop" if self.error is None else "error")
            except OSError as e:
                self.write_errors += 1
                self.log.error("store: cannot close %s: %s", self.file.path, e)
            with self._cv:
                self._cv.notify_all()

    def _fsync(self):
        try:
            self.file.fsync()
        except OSError as e:
            self.write_errors += 1
            self.log.error("store: fsync of %s failed: %s", self.file.path, e)

    def _drain(self) -> bool:
        """Write everything queued now, in chunks of ``batch_max``. Returns True if anything was."""
        q = self.q
        depth = len(q)
        if depth > self.max_depth:
            self.max_depth = depth
        new_drops = self.dropped - self._dropped_seen
        behind = new_drops > 0 or depth > self.queue_max // 2
        lines = []
        if behind:
            self.lag_events += 1
            now = time.monotonic()
            if new_drops or now - self._last_lag_line >= 1.0:
                self._dropped_seen += new_drops
                self._last_lag_line = now
                lines.append(_meta({"type": "_lag", "ts": self.clock(), "queued": depth,
                                    "dropped": new_drops, "dropped_total": self._dropped_seen}))
                self.lag_lines += 1
            if now - self._last_lag_log >= self.WARN_EVERY_S:
                self._last_lag_log = now
                self.log.warning("store writer behind: %d events queued (max %d), %d dropped in total",
                                 depth, self.queue_max, self.dropped)
        if not depth and not lines:
            return False
        dumps = _lines.dumps
        pop = q.popleft
        todo = depth
        while True:
            events = 0
            n = min(todo, self.batch_max)
            for _ in range(n):
                item = pop()
                if type(item) is Envelope:
                    if type(item[6]) is Line:       # formatted from its frame already
                        lines.append(item[6])
                        events += 1
                        continue
                    try:
                        lines.append(dumps(item))
                        events += 1
                    except Exception as e:  # noqa: BLE001 - a record we cannot format is counted
                        self.format_errors += 1
                        if self.format_errors <= 10:
                            self.log.error("store: cannot format %s on %s: %s", type(item.msg).__name__,
                                           item.topic, e)
                else:
                    lines.append(_meta({"type": "_gap", "source": item.source, "topic": item.topic,
                                        "missing": item.missing, "ts": item.ts}))
                    self.gap_lines += 1
            todo -= n
            self._write(lines, events)
            lines = []
            if todo <= 0:
                return True

    def _write(self, lines, events):
        try:
            self.file.write_lines(lines, self.clock())
        except OSError as e:
            self.write_errors += 1
            self.write_lost += events
            if self.write_errors <= 10 or self.write_errors % 100 == 0:
                self.log.error("store: write to %s failed (%d events lost, %d errors so far): %s",
                               self.file.path, events, self.write_errors, e)
            self.file.abandon()
            return
        self.stored += events
