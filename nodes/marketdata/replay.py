"""Replay store JSON Lines files (``proto.jsonl``) into the node's normal publishing path.

What to replay (``resolve``): one file; a store directory (every ``*.jsonl`` in it); a glob
(``var/store/events-20261128-*.jsonl``); or a comma-separated list of any of these. Files that a
store rotated (each one's ``_open`` line names the file before it as ``previous``) are read one
after the other as one recording; independent recordings (two stores, or ``tickmesh history
fetch`` files of two products) are merged by exchange time (``ts_event``; ties in the order the
files were named), so a multi-product replay interleaves its products as the market did.

Two modes, chosen by the file's content:

* **raw**: the file holds ``RawFrame`` records (recorded with ``store_raw = true``). Each frame goes
  through a ``Normalizer`` of its recorded connection, exactly like a live frame (sequence checks,
  snapshots, books rebuilt from level2), and the normalised Tick/Trade/Book records of the file
  are ignored (they are re-derived).
* **events**: otherwise, the normalised records are replayed: ``Tick`` and ``Trade`` as they are,
  ``Book`` as a level2 snapshot of its product (the node's book, and what it publishes, is the
  recorded top of book). Status, gap and other records are skipped (the node makes its own).

Pace: the recorded receive times (``ts_recv``) divided by ``replay_speed``; ``"max"`` sends as fast
as the node consumes (bounded batches: backpressure, not an unbounded queue). ``ts_event`` keeps
the recorded exchange time; ``ts_recv`` is the replay time. When the file ends the source emits
``ReplayDone``: the node logs it, counts it (``replay_done`` = 1 in the heartbeat), answers it in
``Query("replay")`` and publishes a final FeedStatus (``DISCONNECTED``, "replay finished").
"""
import glob
import heapq
import itertools
import json
import mmap
import re
import threading
import time
from pathlib import Path

import proto
from nodes.config import ConfigError
from proto import jsonl

from .book import DeferredSnapshot
from .feed import Connected, Disconnected, ReplayDone
from .normalize import L2Ev, Normalizer, TickEv, TradeEv

BATCH = 256
_GLOB = re.compile(r"[*?[]")


def resolve(spec, bases=None) -> list:
    """The store files a replay source names, as ``Path``s in the order given (a directory's and a
    glob's files sorted by name: the store's names sort by day and index). ``spec``: a path, a
    directory, a glob, a comma-separated list of those, or a list. A relative path is looked up
    in each of ``bases`` (default: the current directory) in turn. Raises ConfigError naming
    what matched nothing."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    parts = [p.strip() for item in items for p in (str(item).split(",") if isinstance(item, str) else [str(item)])]
    bases = [Path(b) for b in (bases or [Path.cwd()])]
    out, seen = [], set()
    for part in parts:
        if not part:
            continue
        p = Path(part).expanduser()
        tries = [p] if p.is_absolute() else [b / p for b in bases]
        found = []
        for t in tries:
            if _GLOB.search(str(t)):
                found = sorted(Path(x) for x in glob.glob(str(t)) if Path(x).is_file())
            elif t.is_dir():
                found = sorted(x for x in t.glob("*.jsonl") if x.is_file())
                if not found:
                    raise ConfigError(f"marketdata.replay_file: no store files (*.jsonl) in directory {t}")
            elif t.is_file():
                found = [t]
            if found:
                break
        if not found:
            raise ConfigError(f"marketdata.replay_file: nothing matches {part!r} "
                              f"(looked in {' and '.join(str(b) for b in bases)})"
                              if not p.is_absolute() else f"marketdata.replay_file: nothing matches {part!r}")
        for f in found:
            r = f.resolve()
            if r not in seen:
                seen.add(r)
                out.append(r)
    if not out:
        raise ConfigError("marketdata.replay_file: no file named")
    return out


def _previous(path: Path):
    """The ``previous`` file named by a store file's ``_open`` line, or None."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
        if first.startswith(b'{"type":"_open"'):
            prev = json.loads(first).get("previous")
            return prev if isinstance(prev, str) and prev else None
    except (OSError, ValueError):
        pass
    return None


def recordings(paths) -> list:
    """Group files into recordings: a store's rotated files chained by their ``_open`` line's
    ``previous`` (same directory), each chain in order; a file that is no one's successor starts
    a recording. Recordings keep the order of their first file in ``paths``."""
    paths = list(paths)
    index = {p: i for i, p in enumerate(paths)}
    succ, has_prev = {}, set()
    for p in paths:
        prev = _previous(p)
        if prev is not None:
            q = p.parent / prev
            if q in index and q not in succ and q != p:
                succ[q] = p
                has_prev.add(p)
    chains, used = [], set()
    for p in paths:
        if p in has_prev or p in used:
            continue
        chain = []
        while p is not None and p not in used:
            chain.append(p)
            used.add(p)
            p = succ.get(p)
        chains.append(chain)
    chains.extend([p] for p in paths if p not in used)     # a cycle of "previous": each on its own
    return chains


def read_events(paths):
    """Every Envelope of ``paths``: recordings one after the other inside, merged by ``ts_event``."""
    chains = recordings(paths)
    streams = [itertools.chain.from_iterable(jsonl.read(p) for p in c) for c in chains]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda env: env.ts_event)


def replay_products(spec, bases=None) -> tuple:
    """The products of the market-data events in the files ``spec`` names (one pass over their bytes)."""
    pat = re.compile(rb'"topic":"md\.(?:tick|trade|book)\.([A-Za-z0-9-]+)"')
    found = set()
    for path in resolve(spec, bases):
        with open(path, "rb") as f:
            for line in f:
                m = pat.search(line, 0, 80)
                if m:
                    found.add(m.group(1).decode())
    return tuple(sorted(found))


class ReplaySource:
    kind = "replay"

    def __init__(self, conf, products, emit, log, path):
        self.conf = conf
        self.products = set(products)
        self.emit = emit
        self.log = log
        self.paths = resolve(path)
        # what the logs and Query("replay") name: the spec as given, or the files it resolved to
        self.path = path if isinstance(path, (str, Path)) else ", ".join(str(p) for p in self.paths)
        self.speed = conf.speed
        self.batch = BATCH
        self._stop = threading.Event()
        self._thread = None
        self.mode = ""
        self.records = 0        # envelopes read
        self.used = 0           # turned into events
        self.skipped = 0        # other types / other products
        self.error = ""
        self.done = False

    def start(self):
        self._thread = threading.Thread(target=self._run, name="md-replay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.8):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def resnapshot(self, products, reason: str = ""):
        """A recording cannot be asked again: the books recover at the next recorded snapshot."""

    def info(self) -> dict:
        return {"source": "replay", "file": str(self.path), "files": len(self.paths), "mode": self.mode,
                "speed": self.conf.replay_speed, "done": self.done, "records": self.records,
                "used": self.used, "skipped": self.skipped, "error": self.error}

    def _has_raw(self) -> bool:
        return any(self._file_has_raw(p) for p in self.paths)

    @staticmethod
    def _file_has_raw(path) -> bool:
        # a file without the tag anywhere holds no RawFrame record: no need to parse it twice
        with open(path, "rb") as f:
            try:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    if m.find(b"RawFrame") < 0:
                        return False
            except ValueError:              # an empty file cannot be mapped
                return False
        for env in jsonl.read(path):
            if type(env.msg) is proto.RawFrame:
                return True
        return False

    def decide_mode(self):
        """``mode``: "raw" when a file holds RawFrame records, else "events" (``error`` set when
        the files cannot be read)."""
        if self.mode or self.error:
            return
        try:
            self.mode = "raw" if self._has_raw() else "events"
        except (OSError, proto.DecodeError) as e:
            self.error = str(e)

    def records_read(self, catch: bool = False):
        """What ``batches()`` consumes, per record of the files in order: ``(type, record,
        ts_event, ts_recv)`` for a record the mode uses, else ``(1, ts)`` (a record skipped, and
        its time: the replay's end is the last record's). With ``catch`` (a ``Prefetch``'s helper
        process) a failed read ends with ``("error", kind, message, None)`` instead of raising."""
        raw_mode = self.mode == "raw"
        products = self.products
        tick, trade, book, rawf = proto.Tick, proto.Trade, proto.Book, proto.RawFrame
        try:
            for env in read_events(self.paths):
                msg = env.msg
                t = type(msg)
                if (t is rawf) if raw_mode else ((t is tick or t is trade or t is book) and msg.product in products):
                    yield (t, msg, env.ts_event, env.ts_recv)
                else:
                    yield (1, env.ts_event or env.ts_recv)
        except (OSError, proto.DecodeError) as e:
            if not catch:
                raise
            yield ("error", "decode", str(e), None)
        except Exception as e:  # noqa: BLE001 - handed to batches() in the parent, which reports it
            if not catch:
                raise
            yield ("error", "other", f"{type(e).__name__}: {e}", None)

    def batches(self, stamp=None, prefetch=None):
        """Generator of ``(ts_event, events)``, one record at a time, in file order (merged by
        exchange time across recordings), ending with ``ReplayDone``. No thread, no wait: the
        offline engine pulls it on the market clock. ``stamp(ts_event)`` gives the events'
        ``ts_recv`` (default: the wall clock when the record is read). ``prefetch``: a
        ``Prefetch`` of this source, whose helper process reads and parses the files."""
        self.decide_mode()
        self.log.info("replaying %s (%d file%s, %s mode, speed %s)", self.path, len(self.paths),
                      "" if len(self.paths) == 1 else "s", self.mode or "?", self.conf.replay_speed)
        conn = ""
        norms: dict = {}
        raw_mode = self.mode == "raw"
        ts = 0
        try:
            if self.error:
                raise proto.DecodeError(self.error)
            if not raw_mode:
                conn = "replay"
                yield 0, [Connected(conn, False)]
            for item in (prefetch if prefetch is not None else self.records_read()):
                if len(item) == 2:                     # records skipped, the last one's time
                    n, ts = item
                    self.records += n
                    self.skipped += n
                    continue
                t, msg, ts_event, ts_recv = item
                if t == "error":                        # the helper process's read failed
                    raise (proto.DecodeError if msg == "decode" else _ReadFailed)(ts_event)
                self.records += 1
                ts = ts_event or ts_recv
                now = stamp(ts) if stamp is not None else time.time_ns()
                if raw_mode:
                    batch = []
                    if msg.connection != conn:
                        if conn:
                            batch.append(Disconnected(conn, "recorded connection ended"))
                        conn = msg.connection
                        batch.append(Connected(conn, "level2" in self.conf.channels))
                    norm = norms.get(conn)
                    if norm is None:
                        norm = norms[conn] = Normalizer(conn)
                    batch.extend(norm.feed(msg.data, now))
                    self.used += 1
                    yield ts_recv or ts, batch
                elif t is proto.Tick:
                    self.used += 1
                    yield ts, [TickEv(msg.product, msg.price, msg.bid, msg.bid_size, msg.ask, msg.ask_size,
                                      msg.volume_24h, ts_event, now)]
                elif t is proto.Trade:
                    self.used += 1
                    yield ts, [TradeEv(msg.product, msg.trade_id, msg.price, msg.size, msg.side, ts_event, now)]
                elif t is DeferredSnapshot:             # a Book from the Prefetch: levels decoded when read
                    self.used += 1
                    yield ts, [L2Ev(msg.product, True, msg, None, ts_event, now)]
                else:                                   # a Book
                    self.used += 1
                    # [price, size] pairs as decoded (fresh lists, nothing else holds them)
                    yield ts, [L2Ev(msg.product, True, msg.bids, msg.asks, ts_event, now)]
        except (OSError, proto.DecodeError) as e:
            self.error = str(e)[:300]
            self.log.error("replay of %s stopped: %s", self.path, self.error)
        except _ReadFailed as e:
            self.error = str(e)[:300]
            self.log.error("replay of %s failed: %s", self.path, self.error)
        except Exception as e:  # noqa: BLE001 - report it, and still tell the node the replay ended
            self.error = f"{type(e).__name__}: {e}"[:300]
            self.log.exception("replay of %s failed", self.path)
        self.done = True
        yield ts, [ReplayDone(self.records, self.used, self.skipped, self.error)]

    def _run(self):
        """The threaded source: ``batches()`` paced by the recorded receive times / ``replay_speed``
        (0: as fast as the node takes it), in bounded batches."""
        batch: list = []
        speed = self.speed
        t0 = None
        w0 = time.monotonic()
        stop = self._stop
        for ts, events in self.batches():
            if stop.is_set():
                return
            if speed > 0 and ts:
                if t0 is None:
                    t0 = ts
                delay = w0 + (ts - t0) / 1e9 / speed - time.monotonic()
                if delay > 0.001:
                    if batch and not self.emit(batch, wait=True):
                        return
                    batch = []
                    if stop.wait(delay):
                        return
            batch.extend(events)
            if len(batch) >= self.batch or self.done:
                if not self.emit(batch, wait=True):
                    return
                batch = []


class _ReadFailed(Exception):
    """A replay's helper process failed to read the files (its message names the error)."""


class Prefetch:
    """``ReplaySource.records_read()`` run by a helper process a chunk ahead of ``batches()``, so
    the recording is read, merged and parsed into records (JSON, validation, Decimals) on the
    other cpu while the offline engine runs the mesh on this one, as the synthetic market is
    simulated (``synthetic.Prefetch``).

    Deterministic: the records arrive in the order the files give them, whatever the timing; the
    helper stays at most two chunks ahead (memory stays flat). A record crosses the pipe as its
    wire frame (the helper validated it; the parent's C decoder builds it again, at ~7 us a record
    against ~10 us to parse its JSON line; unpickling records cost more than that). A read error
    reaches ``batches()`` at the record where it happened, with the same message. Start it before
    the process makes threads or ZeroMQ sockets (it forks)."""

    def __init__(self, source: ReplaySource, chunk: int = 1000):
        import multiprocessing as mp
        source.decide_mode()
        self.chunk = chunk
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=self._child, args=(child, source), daemon=True,
                                 name="md-replay-prefetch")
        self._proc.start()
        child.close()
        self._conn.send(True)                # ask for chunk 0 ...
        self._conn.send(True)                # ... and chunk 1

    def _child(self, conn, source):
        from .synthetic import run_helper
        run_helper(self._conn, conn, lambda: self._serve(conn, source))

    def _serve(self, conn, source):
        items, skipped, last = [], 0, 0
        encode = proto.Encoder("replay").encode
        if not source.error:
            for item in source.records_read(catch=True):
                if len(item) == 2:           # a run of skipped records travels as one
                    skipped += 1
                    last = item[1]
                    continue
                if skipped:
                    items.append((skipped, last))
                    skipped = 0
                t, msg, ts_event, ts_recv = item
                frame = None
                if t != "error" and ts_event and ts_recv:
                    # a wire frame: bytes cross the pipe as they are, and the parent's C
                    # decoder builds the record (cheaper than unpickling one)
                    try:
                        frame = encode("r", msg, ts_event, ts_recv)
                    except proto.EncodeError:
                        pass
                if frame is not None and t is proto.Book:
                    # judged here; its levels are decoded only if the node reads the book
                    frame = (frame, DeferredSnapshot.judge(msg.product, msg.bids, msg.asks),
                             msg.product, ts_event, ts_recv)
                items.append(item if frame is None else frame)
                if len(items) >= self.chunk:
                    if not conn.recv():
                        return
                    conn.send(items)
                    items = []
        if skipped:
            items.append((skipped, last))
        if items and conn.recv():
            conn.send(items)
        conn.send(None)                  # the end

    def __iter__(self):
        while True:
            try:
                chunk = self._conn.recv()
            except EOFError:
                raise _ReadFailed("the replay's helper process ended") from None
            if chunk is None:
                return
            try:
                self._conn.send(True)        # the chunk after next, while this one is consumed
            except (BrokenPipeError, OSError):
                pass                         # the helper has sent its last chunk and ended
            decode = proto.decode
            for item in chunk:
                if type(item) is bytes:
                    env = decode(item)
                    yield (type(env.msg), env.msg, env.ts_event, env.ts_recv)
                elif len(item) == 5:            # a Book: (frame, crossed, product, ts_event, ts_recv)
                    frame, crossed, product, ts_event, ts_recv = item
                    yield (DeferredSnapshot, DeferredSnapshot(product, frame, crossed), ts_event, ts_recv)
                else:
                    yield item

    def close(self):
        from .synthetic import stop_helper
        stop_helper(self._conn, self._proc, False)
