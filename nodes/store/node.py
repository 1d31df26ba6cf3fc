"""The store node: every subscribed bus event, one JSON line each, in rotating files.

Decision logic lives in ``nodes.store.writer`` (no sockets); this module binds it to the bus:
events go to the writer's queue from the loop thread (never blocking), bus sequence gaps seen by the
runtime become ``_gap`` lines, and ``Query("store")`` / the heartbeat report what was stored.
"""
import json
import os
import re
import time
from pathlib import Path

from nodes.config import ROOT
from nodes.runtime import Node
from proto import jsonl

from .config import DEFAULT_PREFIXES, StoreConfig
from .writer import StoreWriter

__all__ = ["StoreNode", "StoreConfig"]


def store_dir(mesh, conf: StoreConfig) -> Path:
    """``store.dir``, or ``<mesh.state_dir>/store`` when empty; relative paths: to the checkout."""
    if not conf.dir:
        return mesh.state_path("store")
    p = Path(conf.dir)
    return p if p.is_absolute() else ROOT / p


class StoreNode(Node):
    """Event store: writes the configured topic prefixes to rotating JSON Lines files."""

    name = "store"
    subscriptions = DEFAULT_PREFIXES
    # market data arrives as its store line, validated and formatted in one step (proto.jsonl);
    # everything else as a decoded record, formatted by the writer
    frame_decoder = staticmethod(jsonl.decode_for_store)

    def __init__(self, mesh, conf: StoreConfig = None, **kw):
        conf = conf or StoreConfig()
        super().__init__(mesh, conf, **kw)
        subs = tuple(dict.fromkeys(conf.prefixes))
        if conf.store_raw and not any("raw.".startswith(p) for p in subs):
            subs += ("raw.",)
        self.subscriptions = subs
        # a catch-all prefix ("" or "r") would also match raw frames: keep them out unless asked
        self._skip_raw = not conf.store_raw and any("raw.".startswith(p) for p in subs)
        self.directory = store_dir(mesh, conf)
        self.writer = None
        self._resume = {}
        self.restart_gaps = 0        # events missed between the previous run and this one
        self.skipped_raw = 0
        self.events_in = 0           # events handed to the writer (stored + dropped, eventually)
        self.on_any(self._on_event)
        self.queries["store"] = self._query

    def setup(self):
        c = self.conf
        # where the previous run stopped, per (publisher, topic): what was published while no store
        # listened is a hole between two files, marked with _gap lines like any other
        self._resume = last_seqs(self.directory, c.basename)
        self.writer = StoreWriter(
            self.directory, basename=c.basename, rotate_bytes=c.rotate_bytes,
            flush_interval_s=c.flush_interval_s, fsync=c.fsync, queue_max=c.queue_max,
            batch_max=c.batch_max, log=self.log,
            header={"node": self.instance, "pid": os.getpid(), "prefixes": list(self.subscriptions),
                    "transport": self.mesh.transport, "started_ns": time.time_ns()})
        self.writer.start()
        self.every(max(1.0, self.mesh.heartbeat_s), self._check_writer)
        self.log.info("storing %s in %s (flush %.3f s, fsync %s, rotate at %d bytes)",
                      ",".join(self.subscriptions), self.directory, c.flush_interval_s, c.fsync,
                      c.rotate_bytes)

    def teardown(self):
        w = self.writer
        if w is not None:
            w.stop(timeout=0.7)
            s = w.stats()
            self.log.info("writer stopped: %d events stored, %d dropped, %d gap lines, %d files",
                          s["events_stored"], s["events_dropped"], s["gap_lines"], s["files"])

    def _check_writer(self):
        w = self.writer
        if not w.alive and not w._stop:
            # Nothing would be stored any more: stop with an error so supervisord restarts us.
            self.log.error("writer thread died (%s): stopping the node", w.error)
            self._error = RuntimeError(f"store writer died: {w.error}")
            self._stopping = True

    # --- bus -----------------------------------------------------------------------------------------
    def _on_event(self, env):
        if self._skip_raw and env.topic.startswith("raw."):
            self.skipped_raw += 1
            return
        self.events_in += 1
        if self._resume:
            last = self._resume.pop((env.source, env.topic), None)
            if last is not None and env.seq > last + 1:
                self._gap_across_restart(env.source, env.topic, env.seq - last - 1, last)
            elif last is not None and 1 < env.seq <= last:
                # the publisher restarted too while no store ran: its first seq-1 events are missing
                self._gap_across_restart(env.source, env.topic, env.seq - 1, 0)
        self.writer.put(env)

    def _gap_across_restart(self, source, topic, missing, last):
        """Events of a publisher that outlived the previous store run, published while no store
        listened: counted and marked like a bus gap (the runtime cannot see them: to it, this is
        the first event of that topic)."""
        self.counters["gaps"] += missing
        self.counters["gap_events"] += 1
        self.bus_gaps[source] = self.bus_gaps.get(source, 0) + missing
        self.restart_gaps += missing
        if self.counters["gap_events"] <= 20:
            self.log.warning("%d events from %s on %s were published while no store ran (seq %d stored last)",
                             missing, source, topic, last)
        self.writer.put_gap(source, topic, missing)

    def on_gap(self, source: str, topic: str, missing: int):
        if self.writer is not None:
            self.writer.put_gap(source, topic, missing)

    def on_joined_late(self, source: str, topic: str, missed: int):
        """Events published before this store connected: a gap line marks them, unless the
        previous run of this store stored that topic (then ``_on_event`` knows exactly what is
        missing from where it stopped)."""
        if (source, topic) not in self._resume:
            self.on_gap(source, topic, missed)

    # --- reporting ---------------------------------------------------------------------------------
    def extra_counters(self) -> dict:
        w = self.writer
        if w is None:
            return {"events_stored": 0}
        return {"events_stored": w.stored, "events_dropped": w.dropped, "events_in": self.events_in,
                "store_restart_gaps": self.restart_gaps,
                "store_queue": len(w.q),
                "store_lag_events": w.lag_events, "store_gap_lines": w.gap_lines,
                "store_files": w.file.files, "store_bytes": w.file.bytes,
                "store_write_errors": w.write_errors + w.format_errors,
                "store_writer_alive": int(w.alive)}

    def _query(self, arg: str):
        """``Query("store")``: counters and the current file; ``Query("store", "flush")`` first
        writes and flushes (and fsyncs unless fsync = never) everything queued."""
        w = self.writer
        if w is None:
            return {"events_stored": 0, "dir": str(self.directory)}
        out = {}
        if arg == "flush":
            out["flushed"] = w.flush(timeout=1.0)
        elif arg:
            from proto import Code, Reply
            return Reply(False, Code.BAD_REQUEST, f"store query takes '' or 'flush', not {arg!r}")
        out.update(w.stats())
        out["events_in"] = self.events_in
        out["prefixes"] = list(self.subscriptions)
        out["writer_alive"] = w.alive
        return out


_HEAD = re.compile(r'\{"topic":"([^"\\]*)","type":"[^"\\]*","source":"([^"\\]*)","seq":(\d+),')


def last_seqs(directory, basename: str, budget: int = 4 << 20) -> dict:
    """{(source, topic): last stored seq} from the end of the newest store files (at most ``budget``
    bytes, newest first): where a previous run stopped. Unreadable lines are skipped."""
    d = Path(directory)
    files = sorted(d.glob(f"{basename}-*.jsonl"), reverse=True) if d.is_dir() else []
    out: dict = {}
    for path in files:
        if budget <= 0:
            break
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(0, size - budget)
                f.seek(start)
                data = f.read()
        except OSError:
            continue
        budget -= len(data)
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]                 # a partial first line
        seen: dict = {}
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            m = _HEAD.match(line)
            if m is not None:
                seen[(m.group(2), m.group(1))] = int(m.group(3))
            elif line.startswith('{"topic":'):
                try:
                    e = json.loads(line)
                    seen[(e["source"], e["topic"])] = int(e["seq"])
                except (ValueError, KeyError, TypeError):
                    continue                  # a torn last line
        for k, v in seen.items():
            out.setdefault(k, v)              # a newer file wins
    return out
