"""Replay a store JSON Lines file (``proto.jsonl``) into the node's normal publishing path.

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
import threading
import time

import proto
from proto import jsonl

from .feed import Connected, Disconnected, ReplayDone
from .normalize import L2Ev, Normalizer, TickEv, TradeEv

BATCH = 256


class ReplaySource:
    kind = "replay"

    def __init__(self, conf, products, emit, log, path):
        self.conf = conf
        self.products = set(products)
        self.emit = emit
        self.log = log
        self.path = path
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
        return {"source": "replay", "file": str(self.path), "mode": self.mode,
                "speed": self.conf.replay_speed, "done": self.done, "records": self.records,
                "used": self.used, "skipped": self.skipped, "error": self.error}

    def _has_raw(self) -> bool:
        # a file without the tag anywhere holds no RawFrame record: no need to parse it twice
        tag, tail = b"RawFrame", b""
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(1 << 22)
                if not chunk:
                    return False
                if tag in tail + chunk:
                    break
                tail = chunk[-len(tag):]
        for env in jsonl.read(self.path):
            if type(env.msg) is proto.RawFrame:
                return True
        return False

    def _run(self):
        try:
            self.mode = "raw" if self._has_raw() else "events"
        except (OSError, proto.DecodeError) as e:
            self.error = str(e)
        self.log.info("replaying %s (%s mode, speed %s)", self.path, self.mode or "?", self.conf.replay_speed)
        batch: list = []
        conn = ""
        norms: dict = {}
        speed = self.speed
        t0 = None
        w0 = time.monotonic()
        stop = self._stop
        raw_mode = self.mode == "raw"
        try:
            if self.error:
                raise proto.DecodeError(self.error)
            if not raw_mode:
                conn = "replay"
                batch.append(Connected(conn, False))
            for env in jsonl.read(self.path):
                if stop.is_set():
                    break
                self.records += 1
                msg = env.msg
                t = type(msg)
                if speed > 0:
                    ts = env.ts_recv or env.ts_event
                    if t0 is None:
                        t0 = ts
                    delay = w0 + (ts - t0) / 1e9 / speed - time.monotonic()
                    if delay > 0.001:
                        if batch and not self.emit(batch, wait=True):
                            return
                        batch = []
                        if stop.wait(delay):
                            break
                now = time.time_ns()
                if raw_mode:
                    if t is not proto.RawFrame:
                        self.skipped += 1
                        continue
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
                elif t is proto.Tick and msg.product in self.products:
                    batch.append(TickEv(msg.product, msg.price, msg.bid, msg.bid_size, msg.ask, msg.ask_size,
                                        msg.volume_24h, env.ts_event, now))
                    self.used += 1
                elif t is proto.Trade and msg.product in self.products:
                    batch.append(TradeEv(msg.product, msg.trade_id, msg.price, msg.size, msg.side, env.ts_event, now))
                    self.used += 1
                elif t is proto.Book and msg.product in self.products:
                    batch.append(L2Ev(msg.product, True, [tuple(lv) for lv in msg.bids],
                                      [tuple(lv) for lv in msg.asks], env.ts_event, now))
                    self.used += 1
                else:
                    self.skipped += 1
                if len(batch) >= self.batch:
                    if not self.emit(batch, wait=True):
                        return
                    batch = []
        except (OSError, proto.DecodeError) as e:
            self.error = str(e)[:300]
            self.log.error("replay of %s stopped: %s", self.path, self.error)
        except Exception as e:  # noqa: BLE001 - report it, and still tell the node the replay ended
            self.error = f"{type(e).__name__}: {e}"[:300]
            self.log.exception("replay of %s failed", self.path)
        if stop.is_set():
            return
        self.done = True
        batch.append(ReplayDone(self.records, self.used, self.skipped, self.error))
        self.emit(batch, wait=True)
