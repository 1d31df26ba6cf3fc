"""``[store]``: the event store node (JSON Lines files of the bus)."""
import dataclasses

from nodes.config import ConfigError

FSYNC_POLICIES = ("never", "interval", "always")
DEFAULT_PREFIXES = ("md.", "order.", "fill.", "position.", "pnl", "risk.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Every key is documented in conf/mesh.toml ``[store]``."""
    dir: str = ""                          # empty: <mesh.state_dir>/store; relative: to the checkout
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    flush_interval_s: float = 0.2          # batches are handed to the OS at least this often
    fsync: str = "interval"                # never | interval | always
    rotate_bytes: int = 256 * 1024 * 1024  # start a new file past this size (and at 00:00 UTC)
    queue_max: int = 200_000               # events waiting for the writer before it drops (and says so)
    batch_max: int = 5000                  # the writer wakes early once this many events wait
    store_raw: bool = False                # also store raw exchange frames (raw.*)
    basename: str = "events"               # file names: <basename>-YYYYMMDD-NNNN.jsonl

    def __post_init__(self):
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"store.fsync: must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        if not self.prefixes:
            raise ConfigError("store.prefixes: must name at least one topic prefix")
        for p in self.prefixes:
            if not p.isascii() or "\x00" in p:     # "" stores everything
                raise ConfigError(f"store.prefixes: bad topic prefix {p!r}")
        if not self.flush_interval_s > 0:
            raise ConfigError(f"store.flush_interval_s: must be > 0, got {self.flush_interval_s}")
        if self.rotate_bytes < 4096:
            raise ConfigError(f"store.rotate_bytes: must be >= 4096, got {self.rotate_bytes}")
        if self.queue_max < 1:
            raise ConfigError(f"store.queue_max: must be >= 1, got {self.queue_max}")
        if self.batch_max < 1:
            raise ConfigError(f"store.batch_max: must be >= 1, got {self.batch_max}")
        if not self.basename or "/" in self.basename or not self.basename.isascii():
            raise ConfigError(f"store.basename: must be a plain file name prefix, got {self.basename!r}")
