"""supervisord event-listener protocol, without sockets (pure functions + one stream loop).

supervisord writes ``<header line>\\n<payload of len bytes>`` to the listener's stdin after the
listener wrote ``READY\\n`` to its stdout; the listener answers ``RESULT 2\\nOK`` (or ``FAIL``).
Because stdout is the protocol channel, nothing else may ever be written to it.
"""
import os
import select

from proto import ProcessEvent

EVENTS = ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL", "PROCESS_STATE_RUNNING", "PROCESS_STATE_BACKOFF")
READY = b"READY\n"
OK = b"RESULT 2\nOK"
FAIL = b"RESULT 4\nFAIL"


class ProtocolError(Exception):
    pass


def parse_tokens(line: str) -> dict:
    """``"a:1 b:2"`` -> ``{"a": "1", "b": "2"}`` (supervisor's childutils.get_headers)."""
    out = {}
    for tok in line.split():
        k, sep, v = tok.partition(":")
        if not sep:
            raise ProtocolError(f"bad token {tok!r:.60}")
        out[k] = v
    return out


def to_process_event(eventname: str, payload: str):
    """A supervisord PROCESS_STATE_* event -> ProcessEvent, or None for other events."""
    if not eventname.startswith("PROCESS_STATE_"):
        return None
    state = eventname[len("PROCESS_STATE_"):]
    first, _, _data = payload.partition("\n")
    h = parse_tokens(first)
    try:
        pid = int(h.get("pid", "0") or 0)
    except ValueError:
        pid = 0
    expected = h.get("expected", "1") == "1"
    detail = f"from {h.get('from_state', '?')}"
    if state == "EXITED":
        detail += ", expected exit" if expected else ", unexpected exit"
    if state in ("BACKOFF", "FATAL") and "tries" in h:
        detail += f", tries {h['tries']}"
    return ProcessEvent(h.get("processname", "?"), h.get("groupname", "?"), state, pid,
                        expected if state == "EXITED" else state == "RUNNING", detail)


def serve(stdin, stdout, handle, log) -> int:
    """Run the protocol until EOF: ``handle(ProcessEvent)`` for every process event. Returns the
    number of events handled. ``stdin``/``stdout`` are binary streams."""
    n = 0
    while True:
        stdout.write(READY)
        stdout.flush()
        line = stdin.readline()
        if not line:
            return n
        try:
            headers = parse_tokens(line.decode("utf-8", "replace"))
            length = int(headers["len"])
            payload = stdin.read(length) if length else b""
            if len(payload) < length:
                return n
            ev = to_process_event(headers.get("eventname", ""), payload.decode("utf-8", "replace"))
        except (ProtocolError, KeyError, ValueError) as e:
            log.warning("bad event from supervisord: %s", e)
            stdout.write(FAIL)
            stdout.flush()
            continue
        if ev is not None:
            try:
                handle(ev)
                n += 1
            except Exception:  # noqa: BLE001 - never break the protocol
                log.exception("handling %s failed", ev)
        stdout.write(OK)
        stdout.flush()


class StoppableReader:
    """Unbuffered reads of a file descriptor that give up (as EOF) once ``stopped()`` is true, so a
    thread blocked on supervisord's stdin can be joined at shutdown."""

    def __init__(self, fd: int, stopped, poll_s: float = 0.2):
        self.fd, self.stopped, self.poll_s = fd, stopped, poll_s

    def _wait(self) -> bool:
        while not self.stopped():
            if select.select([self.fd], [], [], self.poll_s)[0]:
                return True
        return False

    def readline(self) -> bytes:
        out = bytearray()
        while not out.endswith(b"\n"):
            if not self._wait():
                return b""
            b = os.read(self.fd, 1)
            if not b:
                return bytes(out)
            out += b
        return bytes(out)

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self._wait():
                return bytes(out)
            b = os.read(self.fd, n - len(out))
            if not b:
                break
            out += b
        return bytes(out)
