"""Plain structured logging to stdout: ``2026-11-28T12:00:00.123Z INFO risk: message key=value``.

Nothing is configured at import; ``setup()`` is called once from a ``main()``.
"""
import logging
import sys
import time


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record):
        record.node = getattr(record, "node", None) or record.name.rpartition(".")[2]
        return super().format(record)


def setup(level: str = "INFO", stream=None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_tickmesh", False):
            root.removeHandler(h)
    h = logging.StreamHandler(stream or sys.stdout)
    h._tickmesh = True
    h.setFormatter(_Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(node)s: %(message)s",
                              "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(h)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))


def get(node: str) -> logging.LoggerAdapter:
    return logging.LoggerAdapter(logging.getLogger(f"tickmesh.{node}"), {"node": node})
