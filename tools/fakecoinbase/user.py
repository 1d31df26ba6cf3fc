"""Fake Coinbase ``user`` WebSocket channel (the authenticated order-update feed).

Speaks the Advanced Trade protocol over a real WebSocket (``websockets`` sync server, ``ws://``):

* subscribe within ``subscribe_timeout_s`` (5 s) or the connection is closed; one channel per
  message; ``user`` (and ``futures_balance_summary``) need a valid JWT (ES256/EdDSA, no ``uri``,
  checked with the exchange's public keys), else ``{"type":"error","message":"authentication failure"}``;
* on a ``user`` subscribe: every OPEN order in ``snapshot`` batches of 50, then the ``subscriptions``
  ack; afterwards one ``update`` per order change carrying the order's full state (strings only);
* ``heartbeats``: one per second with an integer counter;
* envelope ``{"channel","client_id":"","timestamp","sequence_num","events"}`` with one sequence
  counter per connection from 0, acks included; error frames carry no sequence number.

``drop_all(code)`` closes every connection abnormally (the client must reconnect and resync).
"""
import itertools
import json
import logging
import queue
import threading
import time

from .rest import AuthError, FakeExchange, _iso

log = logging.getLogger("tickmesh.fakecoinbase.user")

CHANNELS = ("heartbeats", "user", "futures_balance_summary")
PRIVATE = ("user", "futures_balance_summary")


class _Conn:
    def __init__(self, server, ws):
        self.server, self.ws = server, ws
        self.q: queue.Queue = queue.Queue()
        self.seq = 0
        self.subs: dict = {}           # channel -> set(products) (empty: all)
        self.hb = itertools.count(1)
        self.closed = threading.Event()

    def envelope(self, channel, events):
        self.q.put(("env", channel, events))

    def raw(self, obj):
        self.q.put(("raw", obj))

    def on_order(self, o):
        """Exchange listener (called under the exchange lock): queue an update, never block."""
        products = self.subs.get("user")
        if products is None or (products and o["product_id"] not in products):
            return
        self.envelope("user", [{"type": "update", "orders": [FakeExchange.ws_view(o)]}])

    def sender(self):
        hb_every = self.server.heartbeat_s
        next_hb = time.monotonic() + hb_every
        try:
            while not self.closed.is_set():
                try:
                    item = self.q.get(timeout=max(0.01, next_hb - time.monotonic()))
                except queue.Empty:
                    item = None
                if time.monotonic() >= next_hb:
                    next_hb += hb_every
                    if "heartbeats" in self.subs:
                        now = time.time()
                        self._send_env("heartbeats", [{"current_time": time.strftime(
                            "%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d} +0000 UTC",
                            "heartbeat_counter": next(self.hb)}])
                if item is None:
                    continue
                if item[0] == "stop":
                    return
                if item[0] == "raw":
                    self.ws.send(json.dumps(item[1]))
                else:
                    self._send_env(item[1], item[2])
        except Exception as e:  # noqa: BLE001 - connection gone
            log.debug("sender ended: %s", e)
        finally:
            self.closed.set()

    def _send_env(self, channel, events):
        msg = {"channel": channel, "client_id": "", "timestamp": _iso(), "sequence_num": self.seq,
               "events": events}
        self.seq += 1
        self.ws.send(json.dumps(msg))


class UserChannelServer:
    def __init__(self, exchange: FakeExchange, host: str = "127.0.0.1", port: int = 0, *,
                 subscribe_timeout_s: float = 5.0, heartbeat_s: float = 1.0):
        self.exchange, self.host, self.port = exchange, host, port
        self.subscribe_timeout_s = subscribe_timeout_s
        self.heartbeat_s = heartbeat_s
        self.conns: set = set()
        self.connects = 0
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    def start(self) -> "UserChannelServer":
        from websockets.sync.server import serve
        self._server = serve(self._handler, self.host, self.port, compression=None, open_timeout=5,
                             close_timeout=1, logger=logging.getLogger("tickmesh.fakecoinbase.user.ws"))
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakecoinbase-user",
                                        daemon=True)
        self._thread.start()
        log.info("fake user channel on %s", self.url)
        return self

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._server is None:
            return
        self.drop_all(1001)
        self._server.shutdown()
        self._thread.join(2)
        self._server = None

    def drop_all(self, code: int = 1011) -> int:
        """Close every connection with ``code`` (non-1000/1001 makes clients reconnect)."""
        with self._lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.ws.close(code, "fake: dropped")
            except Exception:  # noqa: BLE001
                pass
        return len(conns)

    # --- one connection ----------------------------------------------------------------------
    def _handler(self, ws):
        c = _Conn(self, ws)
        with self._lock:
            self.conns.add(c)
            self.connects += 1
        sender = threading.Thread(target=c.sender, name="fakecoinbase-user-send", daemon=True)
        sender.start()
        deadline = time.monotonic() + self.subscribe_timeout_s
        try:
            while not c.closed.is_set():
                timeout = max(0.05, deadline - time.monotonic()) if not c.subs else 0.5
                try:
                    raw = ws.recv(timeout=timeout)
                except TimeoutError:
                    if not c.subs and time.monotonic() >= deadline:
                        ws.close(1000, "subscribe timeout")
                        return
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    c.raw({"type": "error", "message": "failure to parse message"})
                    continue
                self._on_message(c, msg)
        except Exception as e:  # noqa: BLE001 - closed by the peer or by drop_all
            log.debug("connection ended: %s", e)
        finally:
            with self.exchange.lock:
                if c.on_order in self.exchange.listeners:
                    self.exchange.listeners.remove(c.on_order)
            c.closed.set()
            c.q.put(("stop",))
            sender.join(2)
            with self._lock:
                self.conns.discard(c)

    def _on_message(self, c, msg):
        if not isinstance(msg, dict) or msg.get("type") not in ("subscribe", "unsubscribe"):
            c.raw({"type": "error", "message": "failure to subscribe"})
            return
        channel = msg.get("channel")
        products = msg.get("product_ids") or []
        if channel not in CHANNELS or not isinstance(products, list):
            c.raw({"type": "error", "message": "authentication failure"})   # what Coinbase says (sic)
            return
        if channel in PRIVATE:
            try:
                self.exchange.check_jwt(None, token=msg.get("jwt") or "")
            except AuthError as e:
                log.info("user channel auth failure: %s", e)
                c.raw({"type": "error", "message": "authentication failure"})
                return
        if msg["type"] == "unsubscribe":
            c.subs.pop(channel, None)
            if channel == "user":
                with self.exchange.lock:
                    if c.on_order in self.exchange.listeners:
                        self.exchange.listeners.remove(c.on_order)
        else:
            c.subs[channel] = set(products)
            if channel == "user":
                with self.exchange.lock:      # snapshot and listener atomically: no update lost between
                    orders = self.exchange.open_orders(products)
                    for i in range(0, max(1, len(orders)), 50):
                        c.envelope("user", [{"type": "snapshot", "orders": orders[i:i + 50],
                                             "positions": {"perpetual_futures_positions": [],
                                                           "expiring_futures_positions": []}}])
                    if len(orders) and len(orders) % 50 == 0:
                        c.envelope("user", [{"type": "snapshot", "orders": [], "positions": {}}])
                    if c.on_order not in self.exchange.listeners:
                        self.exchange.listeners.append(c.on_order)
        ack = {ch: (sorted(p) if ch != "user" else [self.exchange.user_id]) for ch, p in c.subs.items()}
        c.envelope("subscriptions", [{"subscriptions": ack}])
