"""The default Coinbase client: raw ``websockets`` (the legacy 13.x client API, which the pinned
``websockets<14`` of coinbase-advanced-py forces on the whole venv)."""
import asyncio
import json
import time

from websockets.exceptions import ConnectionClosed
from websockets.legacy.client import connect

from .feed import RawEv, Stale, WsFeed, subscribe_messages
from .normalize import Normalizer

USER_AGENT = "tickmesh-marketdata/0.1"


class RawFeed(WsFeed):
    kind = "coinbase"
    conn_prefix = "coinbase"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._ws = None

    async def _session(self) -> str:
        conf = self.conf
        conn = self.conn
        ws = await asyncio.wait_for(
            connect(conf.ws_url, open_timeout=conf.connect_timeout_s, close_timeout=0.2,
                    max_size=conf.max_message_bytes, max_queue=1024, user_agent_header=USER_AGENT,
                    ping_interval=20, ping_timeout=20),
            timeout=conf.connect_timeout_s + 0.5)
        try:
            norm = Normalizer(conn)
            self._connected(conn)
            for msg in subscribe_messages(self.channels, self.products):
                await asyncio.wait_for(ws.send(json.dumps(msg)), conf.send_timeout_s)
            self._ws = ws
            stale = conf.stale_timeout_s
            emit, raw, recv, feed = self.emit, self.raw, ws.recv, norm.feed
            while not self._stopping:
                try:
                    frame = await asyncio.wait_for(recv(), timeout=stale)
                except asyncio.TimeoutError:
                    self.emit([Stale(conn, stale)])
                    return f"stale: no frame for {stale:g} s"
                except ConnectionClosed as e:
                    return _closed_reason(e)
                self.frames += 1
                now = time.time_ns()
                if raw:
                    text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                    batch = [RawEv(conn, text)]
                    batch.extend(feed(frame, now))
                else:
                    batch = feed(frame, now)
                emit(batch)
            return "stopped"
        finally:
            self._ws = None
            await _close(ws)

    async def _refresh(self, products, reason):
        ws = self._ws
        if ws is None:
            return
        chans = self.refresh_channels()
        self.log.info("resubscribing %s for %s (%s)", chans, products, reason)
        for kind in ("unsubscribe", "subscribe"):
            for ch in chans:
                msg = {"type": kind, "product_ids": list(products), "channel": ch}
                await asyncio.wait_for(ws.send(json.dumps(msg)), self.conf.send_timeout_s)


def _closed_reason(e) -> str:
    rcvd = getattr(e, "rcvd", None)
    if rcvd is not None:
        return f"closed by server: code {rcvd.code} {rcvd.reason!r}"[:200]
    return "connection lost (no close frame)"


async def _close(ws):
    """A polite close bounded to 0.2 s, then the transport is aborted."""
    try:
        await asyncio.wait_for(ws.close(), 0.2)
    except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
        pass
    finally:
        t = getattr(ws, "transport", None)
        if t is not None:
            t.abort()
