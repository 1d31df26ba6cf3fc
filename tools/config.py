"""Check the configuration: the whole file, environment overrides and secrets (``config check``).

    tickmesh config check [--conf FILE] [--quiet]
    tickmesh config start NODE [node args]      (supervisord's command for each node)

Loads the config exactly as a node does (``--conf``, else ``$TICKMESH_CONF``, else conf/mesh.toml;
``.env``; the environment; the secrets file), builds every section and constructs every node
without starting it, so every check a node makes at start runs here (strategy plugin parameters,
live-trading switches, ports). On success it prints what the mesh would run with: the files read,
every key of every section (``# from NAME`` marks an environment override) and which secrets are
set, masked. On an error it prints one line naming the key and exits 2.

``start NODE`` checks every section the quick way (each section's config module loaded from its
file, none of the node packages imported: ~0.1 s instead of 1-11 s of numba/numpy/HTTP imports on
a busy machine), then replaces itself with ``python -m nodes.NODE`` (same pid). A config error so
exits 2 well inside supervisord's ``startsecs``: a failed start, so the program ends FATAL instead
of restarting forever. The node still runs its full check at start (plugin parameters and the
like, which need its imports). Before the exec it logs one line naming the config file, the .env
and secrets files read, the names of the secrets set and the environment overrides.

Exit status: 0 valid, 2 a config error (or bad arguments). ``make up`` runs ``check`` first.
"""
import argparse
import dataclasses
import json
import sys
from decimal import Decimal

EXIT_OK, EXIT_CONFIG = 0, 2


def _value(v) -> str:
    """A value as TOML would write it (money and other decimals as exact strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Decimal)):
        return json.dumps(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k)) if not str(k).isidentifier() else k} = {_value(x)}"
                                for k, x in v.items()) + " }" if v else "{}"
    if v is None:
        return '""'
    return json.dumps(str(v))


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def render(cfg) -> str:
    """What the mesh would run with: sources, every section's keys, secrets masked."""
    from nodes import config
    src = cfg.sources
    lines = [f"# config file:  {src['config']}",
             f"# .env:         {src['dotenv'] or 'not read (none found, or TICKMESH_DOTENV is empty)'}",
             "# secrets file: " + (f"{src['secrets_file']}" + ("" if src["secrets_found"] else " (not found)")
                                   if src["secrets_file"] else "none (TICKMESH_SECRETS is empty)")]
    env = src["env_overrides"]
    for name in config.SECTIONS:
        section = cfg.section(name)
        lines += ["", f"[{name}]"]
        for key, v in _plain(section).items():
            note = f"   # from {env[f'{name}.{key}']}" if f"{name}.{key}" in env else ""
            lines.append(f"{key} = {_value(v)}{note}")
    lines += ["", "[secrets]   # values never shown"]
    names = list(config.SECRET_NAMES) + sorted(k for k in cfg.secrets if k not in config.SECRET_NAMES)
    for k in names:
        lines.append(f"{k} = " + ('"***"   # set' if cfg.secret(k) else '""      # not set'))
    return "\n".join(lines)


def check(conf=None, env=None):
    """Load and check everything; returns the Config (raises ConfigError)."""
    from nodes import config
    cfg = config.load(conf, env)
    config.check(cfg)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickmesh config", description=__doc__.strip().splitlines()[0],
                                epilog="exit status: 0 valid, 2 a config error")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    c = sub.add_parser("check", help="validate the config file, environment overrides and secrets, "
                                     "and print what the mesh would run with (secrets masked)")
    c.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    s = sub.add_parser("start", help="quick config check, then exec python -m nodes.NODE (supervisord)")
    s.add_argument("node")
    s.add_argument("args", nargs=argparse.REMAINDER, help="passed to the node (e.g. --conf FILE)")
    return p


def start(node: str, args: list, err) -> int:
    """The quick check, then exec the node; returns only on an error."""
    import os
    from nodes import config
    if node not in config.NODES or not (config.ROOT / "nodes" / node / "__main__.py").exists():
        print(f"tickmesh config start: unknown node {node!r}", file=err)
        return EXIT_CONFIG
    conf = None
    for i, a in enumerate(args):
        if a == "--conf" and i + 1 < len(args):
            conf = args[i + 1]
        elif a.startswith("--conf="):
            conf = a.split("=", 1)[1]
    try:
        cfg = config.load(conf, light=True)
        for name in config.SECTIONS:
            cfg.section(name)
    except config.ConfigError as e:
        print(f"{node}: config error: {e}", file=err)
        err.flush()
        return EXIT_CONFIG
    # the node's log starts with where its configuration and secrets come from (never their values)
    from nodes import log as _log
    _log.setup(cfg.mesh.log_level)
    _log.get(node).info("%s", cfg.describe())
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", f"nodes.{node}", *args])


def main(argv=None, *, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    p = build_parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_CONFIG
    from nodes import config
    if args.cmd == "start":
        return start(args.node, args.args, err)
    try:
        cfg = check(args.conf)
    except config.ConfigError as e:
        print(f"tickmesh config: config error: {e}", file=err)
        return EXIT_CONFIG
    try:
        if not args.quiet:
            print(render(cfg), file=out)
            print(f"\n# ok: {cfg.path} is valid", file=out)
        out.flush()
    except BrokenPipeError:          # `tickmesh config check | head`
        _quiet_stdout()
    return EXIT_OK


def _quiet_stdout():
    import os
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
