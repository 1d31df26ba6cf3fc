"""What every market-data source shares: connection events, jittered backoff, and ``WsFeed``,
the asyncio thread that keeps a Coinbase WebSocket connection alive.

A source runs in its own thread and hands lists of events to ``emit(batch, wait=False) -> bool``
(the node's thread-safe sink; it calls ``Node.call_soon``, so all publishing happens in the node's
loop thread). Events are the ``normalize`` records plus the connection events defined here.

``WsFeed`` owns the reconnect policy: connect (deadline ``connect_timeout_s``), subscribe to every
channel at once (one channel per message, well inside Coinbase's 5 s rule), read frames with the
stale deadline, and on any close, error or silence reconnect after a jittered exponential backoff
that resets once a connection stayed up ``backoff_reset_s``. ``stop()`` cancels the loop: every
await has a deadline, a close waits 0.2 s at most, so it returns well within a second even in the
middle of a handshake or a backoff wait. Subclasses (``raw_client.RawFeed``,
``sdk_client.SdkFeed``) implement one ``_session()`` and ``_refresh()`` (resubscribe for a fresh
snapshot after a gap or a crossed book).
"""
import asyncio
import random
import threading
import time
from typing import NamedTuple


class Connected(NamedTuple):
    """A new connection (its sequence numbers start again; books wait for a fresh snapshot)."""
    conn: str
    require_snapshot: bool = True


class Disconnected(NamedTuple):
    conn: str
    reason: str


class Stale(NamedTuple):
    """No frame at all for ``silent_s`` seconds (heartbeats included): the connection is dropped."""
    conn: str
    silent_s: float


class RawEv(NamedTuple):
    """An exchange frame as received (published as RawFrame when ``store_raw``)."""
    conn: str
    data: str


class ReplayDone(NamedTuple):
    records: int
    used: int
    skipped: int
    error: str = ""


class Backoff:
    """Exponential backoff with jitter: try n waits ``min(max, initial * mult**n)`` scaled by a
    uniform factor in ``[1 - jitter, 1]``. ``reset()`` after a healthy period."""

    def __init__(self, initial: float, maximum: float, multiplier: float, jitter: float, rng=None):
        self.initial, self.maximum, self.multiplier, self.jitter = initial, maximum, multiplier, jitter
        self.attempt = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(self.attempt, 60))
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self):
        self.attempt = 0


def subscribe_messages(channels, products, kind: str = "subscribe") -> list:
    """One message per channel (Coinbase's rule); heartbeats first, without products."""
    out = []
    for ch in sorted(channels, key=lambda c: c != "heartbeats"):
        msg = {"type": kind, "channel": ch}
        if ch != "heartbeats":
            msg["product_ids"] = list(products)
        out.append(msg)
    return out


class WsFeed:
    """A Coinbase WebSocket connection kept alive in its own thread (asyncio loop)."""

    kind = "coinbase"
    conn_prefix = "coinbase"

    def __init__(self, conf, products, emit, log, secrets=None, raw: bool = False):
        self.conf = conf
        self.products = list(products)
        self.channels = list(conf.channels)
        self.emit = emit
        self.log = log
        self.secrets = secrets or {}
        self.raw = raw
        self.backoff = Backoff(conf.backoff_initial_s, conf.backoff_max_s, conf.backoff_multiplier,
                               conf.backoff_jitter)
        self.conn = ""
        self.conn_n = 0
        self.sessions = 0
        self.state = "idle"
        self.last_reason = ""
        self.last_delay = 0.0
        self.frames = 0                 # frames received, every connection
        self._loop = None
        self._main = None
        self._thread = None
        self._stopping = False
        self._ready = threading.Event()

    # --- control (any thread) ---------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._thread_main, name=f"md-{self.kind}", daemon=True)
        self._thread.start()
        self._ready.wait(2.0)

    def stop(self, timeout: float = 0.8):
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive():
            # asyncio.wait_for (3.11) can swallow a cancellation that races a completing receive:
            # cancel again until the thread is gone (the loops also check _stopping)
            loop = self._loop
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(self._cancel)
                except RuntimeError:        # loop already closed
                    pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._thread.join(min(0.05, left))
        if self._thread is not None:
            if self._thread.is_alive():
                self.log.error("%s feed thread did not stop within %.1f s", self.kind, timeout)

    def resnapshot(self, products, reason: str = ""):
        """Resubscribe for a fresh snapshot (after a gap or a crossed book); thread-safe."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        try:
            loop.call_soon_threadsafe(self._spawn_refresh, list(products), reason)
        except RuntimeError:
            pass

    def info(self) -> dict:
        return {"source": self.kind, "url": self.conf.ws_url, "conn": self.conn, "state": self.state,
                "sessions": self.sessions, "frames": self.frames, "backoff_attempt": self.backoff.attempt,
                "last_reason": self.last_reason, "last_delay_s": round(self.last_delay, 3)}

    # --- the loop thread ------------------------------------------------------------------------------
    def _cancel(self):
        if self._main is not None and not self._main.done():
            self._main.cancel()

    def _spawn_refresh(self, products, reason):
        task = self._loop.create_task(self._refresh_guarded(products, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_guarded(self, products, reason):
        try:
            await self._refresh(products, reason)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the receive side sees a broken connection
            self.log.warning("resubscribe for %s failed: %s: %s", products, type(e).__name__, e)

    def _thread_main(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._tasks = set()
        self._main = loop.create_task(self._run())
        self._ready.set()
        try:
            loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001
            self.log.exception("%s feed loop failed", self.kind)
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=0.2))
            finally:
                self._loop = None
                loop.close()

    async def _run(self):
        while not self._stopping:
            self.conn_n += 1
            self.sessions += 1
            self.conn = f"{self.conn_prefix}#{self.conn_n}"
            self.state = "connecting"
            self._up_since = None
            try:
                reason = await self._session()
            except asyncio.CancelledError:
                self.state = "stopped"
                if self._up_since is not None:
                    self.emit([Disconnected(self.conn, "stopped")])
                raise
            except (asyncio.TimeoutError, TimeoutError):
                reason = f"timed out connecting to {self.conf.ws_url}"
            except Exception as e:  # noqa: BLE001 - any failure means: reconnect after a backoff
                reason = f"{type(e).__name__}: {e}"[:300]
            self.last_reason = reason
            self.state = "backoff"
            up = self._up_since
            if up is not None and time.monotonic() - up >= self.conf.backoff_reset_s:
                self.backoff.reset()
            self.emit([Disconnected(self.conn, reason)])
            if self._stopping:
                break
            delay = self.last_delay = self.backoff.next()
            self.log.warning("%s %s: %s; reconnecting in %.2f s", self.kind, self.conn, reason, delay)
            await asyncio.sleep(delay)

    def _connected(self, conn: str):
        """Call when the handshake succeeded (sets the healthy-period clock, emits Connected)."""
        self._up_since = time.monotonic()
        self.state = "connected"
        self.log.info("%s %s connected to %s", self.kind, conn, self.conf.ws_url)
        self.emit([Connected(conn, "level2" in self.channels)])

    def refresh_channels(self):
        """The channels to resubscribe for fresh data: level2 (its snapshot rebuilds the books),
        or every data channel when level2 is not used."""
        if "level2" in self.channels:
            return ["level2"]
        return [c for c in self.channels if c != "heartbeats"]

    async def _session(self) -> str:
        raise NotImplementedError

    async def _refresh(self, products, reason):
        raise NotImplementedError
