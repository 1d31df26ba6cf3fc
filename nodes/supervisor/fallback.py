"""The event listener when the configuration is broken: page the error, keep supervisord's protocol.

A config error stops every node at start, the alerts node included, so nobody would be paged.
The listener is the one process supervisord keeps running whatever the config says, so on a config
error it does not exit: it pages the error once itself, straight from the secrets (Slack / Teams,
under ``alerts.mode`` when the ``[alerts]`` table can still be read), and goes on answering
supervisord's events (logged to stderr) so that supervisord does not restart it in a loop while the
nodes end FATAL. Nothing is published on the bus: without a valid ``[mesh]`` there is no bus to
trust. Fixing the file and restarting the programs (``supervisorctl restart tickmesh:*
supervisor``) brings the normal listener back.
"""
import socket
import threading
import time
import tomllib
from pathlib import Path

from nodes import config as _config

from . import listener


def alerts_conf(conf_path, env):
    """``[alerts]`` built alone from the file (and its environment overrides), so a typo elsewhere
    still leaves ``alerts.mode`` and the delivery settings in force; defaults if it is broken too."""
    import typing

    from nodes.alerts.config import AlertsConfig
    try:
        raw = dict(tomllib.loads(Path(conf_path).read_text()).get("alerts", {}))
        hints = typing.get_type_hints(AlertsConfig)
        for k, v in env.items():
            key = k[len("TICKMESH_ALERTS__"):].lower()
            if k.startswith("TICKMESH_ALERTS__") and key in hints:
                raw[key] = _config._parse_env(hints[key], v, f"alerts.{key}")
        return _config.build(AlertsConfig, raw, "alerts"), None
    except (OSError, tomllib.TOMLDecodeError, _config.ConfigError, ValueError) as e:
        return AlertsConfig(), f"[alerts] unreadable too ({e}); its defaults apply"


def page_config_error(error: str, conf_path, env, log, timeout_s: float = 10.0) -> list:
    """Send one critical alert naming the config error to every channel the secrets configure
    (filtered by ``alerts.mode``). Returns the names of the channels that accepted it."""
    import requests

    from nodes.alerts.rules import CRITICAL, Alert
    from nodes.alerts.senders import Dispatcher, channels_for_mode, channels_from_secrets
    aconf, why = alerts_conf(conf_path, env)
    if why:
        log.warning("%s", why)
    try:
        secrets, path, _found = _config.load_secrets(Path(conf_path), env)
    except _config.ConfigError as e:
        log.error("secrets file unreadable (%s): only secrets from the environment are used", e)
        secrets = {k: _config.Secret(env[k]) for k in _config.SECRET_NAMES if env.get(k)}
    channels, refused = channels_for_mode(channels_from_secrets(secrets, aconf, requests.Session()), aconf.mode)
    for ch, reason in refused:
        log.warning("not paging %s: %s", getattr(ch, "name", ch), reason)
    if not channels:
        log.error("config error and no channel to page (alerts.mode %s): %s", aconf.mode, error)
        return []
    alert = Alert("config.error", "process", CRITICAL, "Config error: nodes cannot start",
                  f"{error} (config {conf_path}). supervisord gives up on each node after its start "
                  f"retries (FATAL). Fix the file, check it with `tickmesh config check`, then "
                  f"`supervisorctl restart tickmesh:* supervisor`.")
    done = threading.Event()
    sent = []
    disp = Dispatcher(channels, aconf, log, lambda a, ts, ok: (sent.extend(ok), done.set()),
                      host=socket.gethostname())
    disp.start()
    disp.submit(alert, time.time_ns())
    if not done.wait(timeout_s):
        log.error("config-error page not delivered within %.0f s", timeout_s)
    disp.stop(timeout=1.0)
    return sent


def run(error: str, conf_path, env, stdin_fd: int, proto_out, log, stop: threading.Event) -> int:
    """Page, then serve supervisord's events until EOF or ``stop``. Returns 0 (a clean stop)."""
    log.error("config error: %s; listener running without the bus, paging the error itself", error)
    pager = threading.Thread(target=page_config_error, args=(error, conf_path, env, log),
                             name="config-error-page", daemon=True)
    pager.start()

    def handle(ev):
        lvl = log.warning if ev.state in ("FATAL", "BACKOFF") or (ev.state == "EXITED" and not ev.expected) \
            else log.info
        lvl("process %s:%s %s pid=%d (%s) [config error: %s]", ev.group, ev.program, ev.state, ev.pid,
            ev.detail, error)

    reader = listener.StoppableReader(stdin_fd, stop.is_set)
    n = listener.serve(reader, proto_out, handle, log)
    log.info("supervisord closed the event stream after %d events", n)
    pager.join(2.0)
    return 0


def conf_path_of(argv, env) -> Path:
    """The config file a node would read with these arguments."""
    argv = list(argv or [])
    for i, a in enumerate(argv):
        if a == "--conf" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--conf="):
            return Path(a.split("=", 1)[1])
    return Path(env.get("TICKMESH_CONF") or _config.DEFAULT_CONF)

