"""Trading states, the kill-switch latch and its state file.

Trading states (a transition table, like supervisor's states)::

    ACTIVE   -> REDUCING | HALTED
    REDUCING -> ACTIVE   | HALTED
    HALTED   -> ACTIVE   | REDUCING      (only once the kill switch is released)

* ACTIVE: every check applies.
* REDUCING: only orders that shrink a position pass (entered manually with ``KillSwitchCmd
  ("reduce")``, or automatically while the daily loss exceeds ``reduce_at_loss_fraction`` of the
  daily loss limit).
* HALTED: nothing passes; with ``flatten_on_halt`` the risk node sends reduce-only exits itself and
  approves exactly those. HALTED is the kill switch: the state is HALTED if and only if the switch
  is engaged.

The kill switch latches: once engaged (manually, or by an automatic trigger) only a manual release
clears it. Its state is written atomically (temp file + fsync + ``os.replace`` + directory fsync) on
every change and read back at start, so a crash or restart never re-enables trading. An unreadable
state file engages the switch (fail closed) instead of guessing.
"""
import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

from nodes.fsutil import replace_durably, write_all
from proto import KillSwitch, RiskState

ACTIVE = "ACTIVE"
REDUCING = "REDUCING"
HALTED = "HALTED"
STATES = (ACTIVE, REDUCING, HALTED)

TRANSITIONS = {
    ACTIVE: frozenset({REDUCING, HALTED}),
    REDUCING: frozenset({ACTIVE, HALTED}),
    HALTED: frozenset({ACTIVE, REDUCING}),
}

# KillSwitch.source values
MANUAL = "manual"
AUTO_DAILY_LOSS = "auto:daily_loss"
AUTO_DRAWDOWN = "auto:drawdown"
AUTO_ERROR_RATE = "auto:error_rate"
AUTO_STALE_FEED = "auto:stale_feed"
AUTO_EXECUTION_DOWN = "auto:execution_down"
AUTO_STATE_FILE = "auto:state_file"

STATE_FILE_VERSION = 1


class IllegalTransition(RuntimeError):
    """A trading-state change the table does not allow; the message names both states."""


class StateFileError(Exception):
    """The state file exists but cannot be read or understood."""


class TradingStateMachine:
    def __init__(self, state: str = ACTIVE):
        if state not in STATES:
            raise ValueError(f"unknown trading state {state!r}")
        self.state = state
        self.reason = "start"

    def transition(self, new: str, reason: str):
        """Move to ``new``; returns the RiskState event, or None if already there."""
        if new == self.state:
            return None
        if new not in TRANSITIONS.get(self.state, ()):
            raise IllegalTransition(f"trading state {self.state} -> {new} is not allowed")
        ev = RiskState(new, self.state, reason)
        self.state = new
        self.reason = reason
        return ev


class KillSwitchLatch:
    """Engaged stays engaged until ``release()``; the first cause is kept."""

    def __init__(self):
        self.engaged = False
        self.reason = ""
        self.source = ""
        self.since_ns = 0

    def engage(self, reason: str, source: str, now_ns: int) -> bool:
        if self.engaged:
            return False
        self.engaged, self.reason, self.source, self.since_ns = True, reason, source, now_ns
        return True

    def release(self, reason: str, now_ns: int) -> bool:
        if not self.engaged:
            return False
        self.engaged, self.reason, self.source, self.since_ns = False, reason, MANUAL, now_ns
        return True

    def record(self) -> KillSwitch:
        return KillSwitch(self.engaged, self.reason, self.source, self.since_ns)

    def to_dict(self) -> dict:
        return {"engaged": self.engaged, "reason": self.reason, "source": self.source,
                "since_ns": self.since_ns}

    def restore(self, d: dict):
        if type(d) is not dict or type(d.get("engaged")) is not bool:
            raise StateFileError("killswitch: expected {engaged: bool, ...}")
        self.engaged = d["engaged"]
        self.reason = str(d.get("reason", ""))
        self.source = str(d.get("source", ""))
        since = d.get("since_ns", 0)
        self.since_ns = since if type(since) is int else 0


class StateFile:
    """The risk node's persisted state: one small JSON document, replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.writes = 0
        self.errors = 0

    def load(self):
        """The saved dict, None if there is no file; StateFileError if it is unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateFileError(f"{self.path}: {e}") from None
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise StateFileError(f"{self.path}: not JSON: {e}") from None
        if type(d) is not dict or d.get("version") != STATE_FILE_VERSION:
            raise StateFileError(f"{self.path}: not a version {STATE_FILE_VERSION} risk state")
        return d

    def save(self, d: dict):
        """Write temp + fsync + os.replace + fsync(dir). Raises OSError (the caller logs it)."""
        d = dict(d, version=STATE_FILE_VERSION)
        data = json.dumps(d, sort_keys=True, indent=1).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, data)
                replace_durably(fd, tmp, self.path)
            finally:
                os.close(fd)
        except OSError:
            self.errors += 1
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.writes += 1


def parse_decimal(v, what: str):
    if v is None:
        return None
    try:
        d = Decimal(str(v))
    except (InvalidOperation, ValueError):
        raise StateFileError(f"{what}: not a decimal: {v!r:.40}") from None
    if not d.is_finite():
        raise StateFileError(f"{what}: not finite")
    return d
