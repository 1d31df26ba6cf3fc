"""Request client: the zguide's Lazy Pirate over a DEALER socket.

``request()`` sends one frame, polls for the reply with the same ``msg_id`` until the deadline, and
on timeout closes and reopens its socket (a dead or restarted server leaves nothing stuck) and
raises ``RequestTimeout``. Not thread-safe: one client per thread.
"""
import time

import zmq

import proto
from proto import Code, Reply


class RequestError(Exception):
    """The server answered ``ok=False``. ``.code`` is a proto.errors.Code."""

    def __init__(self, code: str, reason: str, data=None):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.data = code, reason, data


class RequestTimeout(RequestError):
    """No reply before the deadline (server down, restarting or overloaded)."""

    def __init__(self, endpoint: str, timeout_ms: int):
        super().__init__(Code.TIMEOUT, f"no reply from {endpoint} within {timeout_ms} ms")
        self.endpoint = endpoint


class RequestClient:
    def __init__(self, endpoint: str, *, context: zmq.Context = None, timeout_ms: int = 1000,
                 source: str = "client", secure=None):
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._ctx = context or zmq.Context.instance()
        self._enc = proto.Encoder(source)
        self._secure = secure       # callable(sock) applying CURVE client keys, or None
        self._sock = None
        self.timeouts = 0

    @classmethod
    def for_node(cls, mesh, node: str, **kw):
        secure = None
        if mesh.curve and mesh.transport == "tcp":
            from . import security
            name = kw.pop("key_name", None) or kw.get("source", "client")
            secure = lambda s: security.apply(s, mesh, name, server=False, server_node=node)  # noqa: E731
        return cls(mesh.endpoint(node, "rep"), secure=secure, timeout_ms=kw.pop("timeout_ms", mesh.request_timeout_ms), **kw)

    def _open(self):
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.IMMEDIATE, 1)     # do not queue to a peer that is not connected yet
        if self._secure:
            self._secure(s)
        s.connect(self.endpoint)
        self._sock = s

    def close(self):
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, msg, timeout_ms: int = None) -> Reply:
        """Send ``msg`` and return the Reply. Raises RequestTimeout; never blocks past the deadline."""
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        if self._sock is None:
            self._open()
        mid = self._enc.next_id()
        frame = self._enc.encode("req", msg, msg_id=mid)
        deadline = time.monotonic() + timeout_ms / 1000
        sock = self._sock
        # IMMEDIATE: a send to a not-yet-connected peer would block; poll for room with the deadline
        while True:
            try:
                sock.send(frame, zmq.NOBLOCK)
                break
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(max(1, int(left * 1000)), zmq.POLLOUT):
                    return self._timeout(timeout_ms)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                return self._timeout(timeout_ms)
            raw = sock.recv()
            try:
                env = proto.decode(raw)
            except proto.DecodeError:
                continue
            if env.msg_id == mid and type(env.msg) is Reply:
                return env.msg
            # a late reply to an earlier request: ignore it

    def _timeout(self, timeout_ms):
        self.timeouts += 1
        self.close()        # Lazy Pirate: a fresh socket for the next request
        raise RequestTimeout(self.endpoint, timeout_ms)

    def call(self, msg, timeout_ms: int = None):
        """``request()`` that returns ``data`` on success and raises RequestError otherwise."""
        r = self.request(msg, timeout_ms)
        if not r.ok:
            raise RequestError(r.code, r.reason, r.data)
        return r.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
