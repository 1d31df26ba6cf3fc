"""``tickmesh keys generate [--dir DIR] [--name NAME ...]``: CurveZMQ key pairs for every node and tool.

Copy ``public/`` to every host of the mesh; each host keeps only its own ``private/<name>.key_secret``.
"""
import argparse
import sys
from pathlib import Path

from nodes import config as _config
from nodes import security


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tickmesh keys", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["generate", "list"])
    p.add_argument("--dir", help="key directory (default: mesh.keys_dir)")
    p.add_argument("--name", action="append", help="only these names (default: every node and tool)")
    p.add_argument("--conf")
    args = p.parse_args(argv)
    if args.dir:
        d = Path(args.dir)
    else:
        try:
            d = security.keys_dir(_config.load(args.conf).mesh)
        except _config.ConfigError as e:
            print(f"keys: config error: {e}", file=sys.stderr)
            return 2
    names = args.name or list(_config.NODES) + list(security.TOOLS)
    if args.action == "generate":
        made = security.generate(d, names)
        print(f"keys in {d}: created {', '.join(made) if made else 'nothing (all present)'}")
    else:
        for f in sorted((d / "public").glob("*.key")):
            print(f.stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
