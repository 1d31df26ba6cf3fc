"""``python -m nodes.supervisor``: run as a supervisord [eventlistener]. stdout is the protocol
channel, so logging goes to stderr and fd 1 is re-pointed at stderr for anything else."""
import os
import sys

from nodes.runtime import run_main

from .node import SupervisorListener


def main(argv=None) -> int:
    proto_out = os.fdopen(os.dup(1), "wb")          # the protocol channel
    os.dup2(2, 1)                                   # stray prints cannot corrupt it
    sys.stdout = sys.stderr
    return run_main(SupervisorListener, argv, log_stream=sys.stderr,
                    build=lambda cfg, stop: SupervisorListener(cfg.mesh, None, secrets=cfg.secrets,
                                                               stdin_fd=sys.stdin.fileno(), stdout=proto_out,
                                                               on_eof=stop.set))


if __name__ == "__main__":
    sys.exit(main())
