"""``python -m nodes.supervisor``: run as a supervisord [eventlistener]. stdout is the protocol
channel, so logging goes to stderr and fd 1 is re-pointed at stderr for anything else."""
import argparse
import os
import signal
import sys
import threading

from nodes import config as _config
from nodes import log as _log
from nodes.runtime import NodeStartError

from .node import SupervisorListener


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodes.supervisor", description=SupervisorListener.__doc__)
    p.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    p.add_argument("--log-level", default=None)
    args = p.parse_args(argv)
    proto_out = os.fdopen(os.dup(1), "wb")          # the protocol channel
    os.dup2(2, 1)                                   # stray prints cannot corrupt it
    sys.stdout = sys.stderr
    try:
        cfg = _config.load(args.conf)
    except _config.ConfigError as e:
        print(f"supervisor: config error: {e}", file=sys.stderr)
        return 2
    _log.setup(args.log_level or cfg.mesh.log_level, stream=sys.stderr)
    log = _log.get("supervisor")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node = SupervisorListener(cfg.mesh, None, secrets=cfg.secrets, stdin_fd=sys.stdin.fileno(), stdout=proto_out,
                              on_eof=stop.set)
    try:
        node.start()
    except NodeStartError as e:
        log.error("cannot start: %s", e)
        return 1
    try:
        while not stop.wait(0.25):
            if not node.alive:
                log.error("loop died: %s", node._error)
                return 1
        log.info("stopping")
    finally:
        node.stop()
    return 0 if node._error is None else 1


if __name__ == "__main__":
    sys.exit(main())
