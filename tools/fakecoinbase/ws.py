"""The WebSocket side of a fake Coinbase Advanced Trade exchange, on 127.0.0.1.

It speaks the real protocol over real connections (``websockets`` server, legacy 13.x API): one
channel per subscribe message, the 5 s subscribe rule, per-connection ``sequence_num`` from 0
counting acks, ``client_id: ""``, cumulative ``subscriptions`` acks sent before or after the
snapshot, ``l2_data`` with ``bid``/``offer``, heartbeats with an integer counter, market_trades
with the maker side, ``{"type":"error"}`` for a wrong channel name or a private channel without
a JWT. The market behind it is ``nodes.marketdata.synthetic.Market`` (seeded): the same generator
as the market-data node's synthetic source.

Faults, injected from tests in-process (methods below; they return once applied) or from outside
through plain HTTP on the same port (``GET /_fake/<fault>?args``, see ``tools.fakecoinbase``):

* ``skip(n=1)``: the next enveloped frame of each connection jumps ``n`` sequence numbers
* ``silence()`` / ``resume()``: current connections get nothing (no data, no heartbeats) / again
* ``close(code=1011)``: close current connections with ``code``
* ``drop()``: drop current connections' TCP (no close frame)
* ``garbage()``: send malformed frames (see ``GARBAGE``) to current connections
* ``send(text)``: send one frame as given; ``inject(channel, events)``: one enveloped frame with
  the connection's next sequence number (exact hand-written channel data)
* ``reject(n=1)``: refuse the next ``n`` handshakes with HTTP 503

Observation for tests: ``connections`` (each with the messages it received, its handshake headers,
its close code), ``wait_for(pred, timeout)`` (woken on every change, never a sleep), ``state()``.
"""
import asyncio
import json
import logging
import random
import threading
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.legacy.server import serve

from nodes.marketdata.synthetic import Market, Session

log = logging.getLogger("tickmesh.fakecoinbase")

DEFAULT_PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
SEND_QUEUE = 10000            # frames queued per connection before it is cut off as too slow

# (kind, what the client should count): parse errors unless noted
GARBAGE = (
    ("text", "parse_error"),          # not JSON
    ("binary", "parse_error"),        # a binary frame of junk
    ("json_array", "parse_error"),    # JSON, not an object
    ("no_channel", "parse_error"),    # an object without channel/type
    ("bad_seq", "parse_error"),       # sequence_num of the wrong type
    ("bad_ticker", "parse_error"),    # a well-formed envelope (consumes a sequence number) with a bad price
    ("unknown_channel", "unknown"),   # a channel the client does not know (consumes a number)
    ("error", "error_frame"),         # {"type":"error",...}
)


class ConnInfo:
    """What the fake saw of one client connection."""

    def __init__(self, cid: int, ws, path: str):
        self.id = cid
        self.ws = ws
        self.path = path
        self.headers = {k.lower(): v for k, v in ws.request_headers.raw_items()}
        self.opened = time.monotonic()
        self.received: list = []          # parsed client messages (subscribe / unsubscribe / ...)
        self.sent = 0
        self.closed = False
        self.close_code = None
        self.silent = False
        self.subscribed = False
        self.session = None
        self.queue = None

    def channels(self, kind: str = "subscribe") -> list:
        """The channels of every ``kind`` message received, in order."""
        return [m.get("channel") for m in self.received if isinstance(m, dict) and m.get("type") == kind]

    def summary(self) -> dict:
        return {"id": self.id, "closed": self.closed, "close_code": self.close_code, "silent": self.silent,
                "sent": self.sent, "received": self.received[-50:], "subscriptions":
                {k: sorted(v) for k, v in (self.session.subs.items() if self.session else ())},
                "retry_counter": self.headers.get("x-cb-retry-counter"),
                "user_agent": self.headers.get("user-agent")}


class FakeCoinbaseWS:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int = 1, products=DEFAULT_PRODUCTS,
                 rate_hz: float = 10.0, heartbeat_s: float = 1.0, subscribe_timeout_s: float = 5.0,
                 ack_order: str = "random", specs: dict = None):
        if ack_order not in ("random", "before", "after"):
            raise ValueError(f"ack_order: random, before or after, not {ack_order!r}")
        self.host, self.port = host, port
        self.seed = seed
        self.rate_hz = rate_hz
        self.heartbeat_s = heartbeat_s
        self.subscribe_timeout_s = subscribe_timeout_s
        self.ack_order = ack_order
        self.market = Market(list(products), seed=seed, specs=specs)
        self.rng = random.Random(seed)
        self.connections: list = []
        self.rejected = 0
        self._reject = 0
        self._cid = 0
        self._beats = 1000 + self.rng.randrange(100000)
        self._t0 = time.monotonic()
        self._cond = threading.Condition()
        self._loop = None
        self._thread = None
        self._server = None
        self._tasks: list = []
        self._closing: set = set()
        self._ready = threading.Event()
        self._error = None

    # --- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout: float = 5.0) -> "FakeCoinbaseWS":
        self._thread = threading.Thread(target=self._thread_main, name="fakecoinbase-ws", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fake Coinbase did not start in time")
        if self._error is not None:
            raise RuntimeError(f"fake Coinbase failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 2.0):
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                fut.result(timeout)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _thread_main(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except Exception as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            loop.close()

    async def _open(self):
        self._server = await serve(self._handler, self.host, self.port, process_request=self._http,
                                   max_size=2 ** 20, ping_interval=20, ping_timeout=20, close_timeout=1)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks = [asyncio.get_running_loop().create_task(self._ticker()),
                       asyncio.get_running_loop().create_task(self._heartbeats())]
        log.info("fake Coinbase WebSocket listening on %s", self.url)

    async def _shutdown(self):
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()
            for c in list(self.connections):
                if not c.closed and c.ws.transport is not None:
                    c.ws.transport.abort()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass

    # --- observation ---------------------------------------------------------------------------------
    def _changed(self):
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float = 5.0, what: str = "condition"):
        """Wait until ``pred(self)`` is truthy (re-checked on every change); return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred(self)
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake Coinbase: {what} not reached within {timeout} s; "
                                         f"connections: {[c.summary() for c in self.connections]}")
                self._cond.wait(left)

    @property
    def open_connections(self) -> list:
        return [c for c in self.connections if not c.closed]

    def state(self) -> dict:
        return {"url": self.url, "seed": self.seed, "rate_hz": self.rate_hz, "heartbeat_s": self.heartbeat_s,
                "products": sorted(self.market.products), "steps": self.market.steps, "rejected": self.rejected,
                "connections": [c.summary() for c in self.connections[-20:]]}

    # --- faults (any thread; return once applied) ---------------------------------------------------------
    def _call(self, fn, *args, timeout: float = 2.0):
        fut = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        return fut.result(timeout)

    def skip(self, n: int = 1, conn: int = None) -> int:
        return self._call(self._skip, n, conn)

    def silence(self, conn: int = None) -> int:
        return self._call(self._silence, True, conn)

    def resume(self, conn: int = None) -> int:
        return self._call(self._silence, False, conn)

    def close(self, code: int = 1011, reason: str = "fault injection", conn: int = None) -> int:
        return self._call(self._close, code, reason, conn)

    def drop(self, conn: int = None) -> int:
        return self._call(self._drop, conn)

    def garbage(self, conn: int = None) -> dict:
        return self._call(self._garbage, conn)

    def send(self, text: str, conn: int = None) -> int:
        return self._call(self._send_text, text, conn)

    def inject(self, channel: str, events: list, conn: int = None) -> int:
        """Send one enveloped frame built by each connection's session (its next sequence
        number): exact, hand-written channel data for tests."""
        return self._call(self._inject, channel, events, conn)

    def reject(self, n: int = 1) -> int:
        self._reject += n
        return self._reject

    def _targets(self, conn):
        return [c for c in self.connections if not c.closed and (conn is None or c.id == conn)]

    async def _skip(self, n, conn):
        cs = self._targets(conn)
        for c in cs:
            c.session.skip_next += n
        return len(cs)

    async def _silence(self, on, conn):
        cs = self._targets(conn)
        for c in cs:
            c.silent = on
        return len(cs)

    async def _close(self, code, reason, conn):
        """Start the closing handshake (the close frame queues behind frames already sent; a
        client that does not answer within the server's close_timeout is cut off)."""
        cs = self._targets(conn)
        loop = asyncio.get_running_loop()
        for c in cs:
            c.silent = True                    # nothing more after the close frame
            t = loop.create_task(c.ws.close(code, reason))
            self._closing.add(t)
            t.add_done_callback(self._closing.discard)
        return len(cs)

    async def _drop(self, conn):
        cs = self._targets(conn)
        for c in cs:
            c.ws.transport.abort()
        return len(cs)

    async def _send_text(self, text, conn):
        cs = self._targets(conn)
        for c in cs:
            self._enqueue(c, text)
        return len(cs)

    async def _inject(self, channel, events, conn):
        cs = self._targets(conn)
        now = time.time_ns()
        for c in cs:
            self._enqueue(c, c.session._frame(channel, events, now))
        return len(cs)

    async def _garbage(self, conn):
        counts = {"parse_error": 0, "unknown": 0, "error_frame": 0, "frames": 0}
        for c in self._targets(conn):
            now = time.time_ns()
            for kind, effect in GARBAGE:
                self._enqueue(c, _garbage_frame(kind, c.session, now))
                counts["frames"] += 1
            for kind, effect in GARBAGE:
                counts[effect] += 1
        return counts

    # --- HTTP: control commands and refused handshakes ----------------------------------------------------------
    async def _http(self, path, headers):
        if path.startswith("/_fake/"):
            status, body = await self._control(path)
            return status, [("Content-Type", "application/json")], (json.dumps(body) + "\n").encode()
        if self._reject > 0:
            self._reject -= 1
            self.rejected += 1
            self._changed()
            return HTTPStatus.SERVICE_UNAVAILABLE, [("Content-Type", "text/plain")], b"unavailable\n"
        return None

    async def _control(self, path):
        u = urlsplit(path)
        cmd = u.path[len("/_fake/"):].strip("/")
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        try:
            conn = int(q["conn"]) if "conn" in q else None
            if cmd == "state":
                return HTTPStatus.OK, self.state()
            if cmd == "skip":
                return HTTPStatus.OK, {"connections": await self._skip(int(q.get("n", 1)), conn)}
            if cmd == "silence":
                return HTTPStatus.OK, {"connections": await self._silence(True, conn)}
            if cmd == "resume":
                return HTTPStatus.OK, {"connections": await self._silence(False, conn)}
            if cmd == "close":
                return HTTPStatus.OK, {"connections": await self._close(int(q.get("code", 1011)),
                                                                        q.get("reason", "fault injection"), conn)}
            if cmd == "drop":
                return HTTPStatus.OK, {"connections": await self._drop(conn)}
            if cmd == "garbage":
                return HTTPStatus.OK, await self._garbage(conn)
            if cmd == "send":
                return HTTPStatus.OK, {"connections": await self._send_text(q.get("text", ""), conn)}
            if cmd == "reject":
                return HTTPStatus.OK, {"pending": self.reject(int(q.get("n", 1)))}
        except (ValueError, KeyError, asyncio.TimeoutError) as e:
            return HTTPStatus.BAD_REQUEST, {"error": f"{type(e).__name__}: {e}"}
        return HTTPStatus.NOT_FOUND, {"error": f"unknown command {cmd!r}",
                                      "commands": ["state", "skip?n=", "silence", "resume", "close?code=",
                                                   "drop", "garbage", "send?text=", "reject?n="]}

    # --- connections ---------------------------------------------------------------------------------------------
    async def _handler(self, ws, path="/"):
        self._cid += 1
        c = ConnInfo(self._cid, ws, path)
        c.session = Session(self.market, random.Random(self.rng.random()), ack_order=self.ack_order)
        c.queue = asyncio.Queue(SEND_QUEUE)
        self.connections.append(c)
        self._changed()
        log.info("connection %d from %s (retry counter %s)", c.id, ws.remote_address,
                 c.headers.get("x-cb-retry-counter"))
        writer = asyncio.get_running_loop().create_task(self._writer(c))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.subscribe_timeout_s
        try:
            while True:
                timeout = None if c.subscribed else max(0.0, deadline - loop.time())
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout)
                except asyncio.TimeoutError:
                    log.info("connection %d: no subscribe within %.1f s, closing", c.id, self.subscribe_timeout_s)
                    await asyncio.wait_for(ws.close(1008, "subscribe within 5 seconds"), 1.5)
                    break
                try:
                    msg = json.loads(text)
                except ValueError:
                    msg = None
                c.received.append(msg if msg is not None else {"_unparsed": str(text)[:200]})
                if isinstance(msg, dict) and msg.get("type") == "subscribe":
                    c.subscribed = True
                for f in c.session.handle(msg, time.time_ns()):
                    self._enqueue(c, f)
                self._changed()
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        finally:
            writer.cancel()
            c.closed = True
            c.close_code = ws.close_code
            self._changed()
            log.info("connection %d closed (code %s)", c.id, ws.close_code)

    def _enqueue(self, c: ConnInfo, frame):
        if c.closed or c.silent:
            return
        try:
            c.queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("connection %d too slow: %d frames queued, dropping it", c.id, SEND_QUEUE)
            c.ws.transport.abort()

    async def _writer(self, c: ConnInfo):
        ws, q = c.ws, c.queue
        try:
            while True:
                f = await q.get()
                if c.silent:
                    continue
                data = f if isinstance(f, (str, bytes)) else json.dumps(f)
                await ws.send(data)
                c.sent += 1
        except (ConnectionClosed, asyncio.CancelledError):
            pass

    # --- the market -------------------------------------------------------------------------------------------------
    async def _ticker(self):
        dt = 1.0 / self.rate_hz if self.rate_hz > 0 else 0.1
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            nxt += dt
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            up = self.market.step(dt, time.time_ns())
            for c in self.connections:
                if not c.closed and not c.silent and c.session.subs:
                    for f in c.session.on_step(up):
                        self._enqueue(c, f)

    async def _heartbeats(self):
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            nxt += self.heartbeat_s
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            self._beats += 1
            now = time.time_ns()
            up = time.monotonic() - self._t0
            for c in self.connections:
                if not c.closed and not c.silent:
                    f = c.session.heartbeat(self._beats, now, up)
                    if f is not None:
                        self._enqueue(c, f)


def _garbage_frame(kind: str, session: Session, now_ns: int):
    if kind == "text":
        return "this is {not json"
    if kind == "binary":
        return b"\x00\xff\xfe\x01 binary junk"
    if kind == "json_array":
        return "[1, 2, 3]"
    if kind == "no_channel":
        return json.dumps({"hello": "world"})
    if kind == "bad_seq":
        return json.dumps({"channel": "ticker", "client_id": "", "timestamp": "2026-03-01T12:00:00Z",
                           "sequence_num": "seven", "events": []})
    if kind == "bad_ticker":
        return session._frame("ticker", [{"type": "update", "tickers": [
            {"type": "ticker", "product_id": "BTC-USD", "price": "sixty-five thousand"}]}], now_ns)
    if kind == "unknown_channel":
        return session._frame("future_channel", [{"type": "update", "whatever": [1, 2, 3]}], now_ns)
    if kind == "error":
        return json.dumps({"type": "error", "message": "failure to subscribe"})
    raise ValueError(kind)
