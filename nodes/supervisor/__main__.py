"""``python -m nodes.supervisor``: run as a supervisord [eventlistener]. stdout is the protocol
channel, so logging goes to stderr and fd 1 is re-pointed at stderr for anything else.

With a config error it does not exit like the nodes do: supervisord would restart it forever, and
the alerts node dies on the same file, so it pages the error itself and keeps serving supervisord's
events (``nodes.supervisor.fallback``)."""
import os
import signal
import sys
import threading

from nodes import config as _config
from nodes import log as _log
from nodes.runtime import run_main

from .node import SupervisorListener


def main(argv=None) -> int:
    proto_out = os.fdopen(os.dup(1), "wb")          # the protocol channel
    os.dup2(2, 1)                                   # stray prints cannot corrupt it
    sys.stdout = sys.stderr
    argv = sys.argv[1:] if argv is None else argv
    env, _dot = _config.resolve_env()
    conf = None
    if not any(a in ("-h", "--help") for a in argv):
        from . import fallback
        conf = fallback.conf_path_of(argv, env)
        try:
            _config.load(conf)
        except _config.ConfigError as e:
            _log.setup("INFO", stream=sys.stderr)
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            return fallback.run(str(e), conf, env, sys.stdin.fileno(), proto_out, _log.get("supervisor"), stop)
    return run_main(SupervisorListener, argv, log_stream=sys.stderr,
                    build=lambda cfg, stop: SupervisorListener(cfg.mesh, None, secrets=cfg.secrets,
                                                               stdin_fd=sys.stdin.fileno(), stdout=proto_out,
                                                               on_eof=stop.set))


if __name__ == "__main__":
    sys.exit(main())
