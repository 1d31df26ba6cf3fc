"""The same feed through the official SDK: ``coinbase.websocket.WSClient`` (coinbase-advanced-py).

Every SDK call runs on *our* feed loop (the ``*_async`` methods), never on the SDK's private loop
thread, so stopping stays bounded. Workarounds for the SDK's known faults (docs/marketdata.md,
"Coinbase protocol facts"):

* **credentials read at import**: ``WSClient``'s defaults come from ``COINBASE_API_KEY`` /
  ``COINBASE_API_SECRET`` at import time. We always pass ``api_key`` / ``api_secret`` explicitly
  (from ``self.secrets``, or ``None`` for the public feed), so the environment at import is ignored.
* **an exception in ``on_message`` silently kills its receive loop**: our ``on_message`` never
  raises (everything is caught, counted and logged).
* **heartbeats not resubscribed after its own reconnect**: ``on_open`` fires on every (re)connect;
  from the second one on we resubscribe ``heartbeats`` ourselves.
* **a clean 1000 close or exhausted retries end its loop quietly**: we watch its receive task and
  reconnect with our own backoff; our stale watchdog also covers a retry that hangs.
* its retry backoff is set from ``backoff_initial_s`` / ``backoff_multiplier`` (private
  ``_retry_factor`` / ``_retry_base``, the knobs its own tests use).
* its logger ``coinbase.WSClient`` gets its own stderr handler at import; we remove that handler so
  its lines go through the node's logging once.
"""
import asyncio
import logging
import time

from .feed import Disconnected, RawEv, Stale, WsFeed
from .normalize import Normalizer

_sdk_logging_fixed = False


def _import_sdk():
    global _sdk_logging_fixed
    from coinbase.websocket import WSClient
    if not _sdk_logging_fixed:
        lg = logging.getLogger("coinbase.WSClient")
        for h in list(lg.handlers):
            lg.removeHandler(h)
        _sdk_logging_fixed = True
    return WSClient


class SdkFeed(WsFeed):
    kind = "coinbase-sdk"
    conn_prefix = "sdk"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._client = None
        self._norm = None
        self._opens = 0
        self._last_frame = time.monotonic()
        self.sdk_reconnects = 0
        self.callback_errors = 0
        self._creds = self._credentials()

    def _credentials(self):
        key, secret = self.secrets.get("COINBASE_API_KEY"), self.secrets.get("COINBASE_API_SECRET")
        key = key.reveal() if key else None
        secret = secret.reveal() if secret else None
        if bool(key) != bool(secret):
            self.log.warning("only one of COINBASE_API_KEY / COINBASE_API_SECRET is set: the SDK feed "
                             "connects without credentials (market data is public)")
            return None, None
        return (key, secret) if key else (None, None)

    def info(self) -> dict:
        d = super().info()
        d.update(sdk_reconnects=self.sdk_reconnects, callback_errors=self.callback_errors,
                 authenticated=self._creds[0] is not None)
        return d

    # --- SDK callbacks (run on our loop, inside the SDK's receive task) -------------------------------
    def _on_open(self):
        try:
            self._opens += 1
            if self._opens > 1:
                # the SDK reconnected on its own after an error close: a new connection
                old = self.conn
                self.sdk_reconnects += 1
                self.conn_n += 1
                self.conn = f"{self.conn_prefix}#{self.conn_n}"
                self.emit([Disconnected(old, "closed with an error; the SDK reconnected")])
            self._norm = Normalizer(self.conn)
            self._last_frame = time.monotonic()
            client = self._client
            if client is not None and client.websocket is not None:
                client.websocket.close_timeout = 0.2
            self._connected(self.conn)
            if self._opens > 1 and "heartbeats" in self.channels and client is not None:
                # SDK fault: its _resubscribe skips channels stored with no products (heartbeats)
                t = asyncio.get_running_loop().create_task(self._subscribe_heartbeats(client))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except Exception:  # noqa: BLE001 - never let a callback exception reach the SDK
            self.callback_errors += 1
            self.log.exception("SDK on_open handler failed")

    def _on_message(self, msg):
        try:
            self._last_frame = time.monotonic()
            self.frames += 1
            norm = self._norm
            if norm is None:
                return
            now = time.time_ns()
            if self.raw:
                text = msg if isinstance(msg, str) else bytes(msg).decode("utf-8", "replace")
                batch = [RawEv(norm.conn, text)]
                batch.extend(norm.feed(msg, now))
            else:
                batch = norm.feed(msg, now)
            self.emit(batch)
        except Exception:  # noqa: BLE001 - an exception here would kill the SDK's receive loop
            self.callback_errors += 1
            if self.callback_errors <= 20:
                self.log.exception("SDK on_message handler failed")

    async def _subscribe_heartbeats(self, client):
        try:
            await asyncio.wait_for(client.subscribe_async([], ["heartbeats"]), self.conf.send_timeout_s)
            self.log.info("%s: resubscribed heartbeats after the SDK's reconnect", self.conn)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.log.warning("resubscribing heartbeats failed: %s: %s", type(e).__name__, e)

    # --- one session: a WSClient from open to its end ----------------------------------------------------
    async def _session(self) -> str:
        WSClient = _import_sdk()
        conf = self.conf
        key, secret = self._creds
        client = WSClient(api_key=key, api_secret=secret, base_url=conf.ws_url,
                          timeout=conf.connect_timeout_s, max_size=conf.max_message_bytes,
                          on_message=self._on_message, on_open=self._on_open, retry=True)
        client._retry_max_tries = 5
        client._retry_base = conf.backoff_multiplier
        client._retry_factor = conf.backoff_initial_s
        self._client = client
        self._opens = 0
        try:
            await asyncio.wait_for(client.open_async(), conf.connect_timeout_s + 0.5)
            data_channels = [c for c in self.channels if c != "heartbeats"]
            if data_channels:
                await asyncio.wait_for(client.subscribe_async(self.products, data_channels),
                                       conf.send_timeout_s * len(data_channels))
            if "heartbeats" in self.channels:
                await asyncio.wait_for(client.subscribe_async([], ["heartbeats"]), conf.send_timeout_s)
            stale = conf.stale_timeout_s
            while not self._stopping:
                task = client._task
                if task is None or task.done():
                    exc = client._background_exception
                    client._background_exception = None
                    return f"SDK receive loop ended: {exc}" if exc else "SDK receive loop ended (clean close)"
                silent = time.monotonic() - self._last_frame
                if silent >= stale:
                    self.emit([Stale(self.conn, round(silent, 3))])
                    return f"stale: no frame for {silent:.1f} s"
                await asyncio.wait({task}, timeout=min(0.1, stale - silent))
            return "stopped"
        finally:
            self._client = None
            self._norm = None
            await self._dispose(client)

    async def _dispose(self, client):
        task = client._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await asyncio.wait({task}, timeout=0.2)
            except asyncio.CancelledError:
                pass
        ws = client.websocket
        client.websocket = None
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 0.2)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            finally:
                t = getattr(ws, "transport", None)
                if t is not None:
                    t.abort()

    async def _refresh(self, products, reason):
        client = self._client
        if client is None or not client._is_websocket_open():
            return
        chans = self.refresh_channels()
        self.log.info("resubscribing %s for %s (%s)", chans, products, reason)
        await asyncio.wait_for(client.unsubscribe_async(list(products), chans), self.conf.send_timeout_s * len(chans))
        await asyncio.wait_for(client.subscribe_async(list(products), chans), self.conf.send_timeout_s * len(chans))

