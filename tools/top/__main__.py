"""``tickmesh top``: one live terminal screen for the whole mesh.

    tickmesh top [--conf F]            full screen, live: k kill switch, r release, / filter, q quit
    tickmesh top --once [--width N]    one snapshot as plain text, then exit (scripts, tests)
    tickmesh top --json                the same snapshot as JSON

Exit status: 0; 2 bad arguments or config (one line naming the problem).
"""
import argparse
import json
import os
import shutil
import sys
import threading
import time

from . import view
from .model import ScreenModel


def _load_limits(cfg, model):
    from nodes import config
    try:
        model.limits = cfg.section("risk")
    except config.ConfigError as e:
        model.message = f"limits unknown: config error: {e}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickmesh top", description="One live terminal screen for the whole mesh.",
                                epilog="keys: k engage the kill switch (reason + confirmation), r request a "
                                       "release, / filter by product, q quit")
    p.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    p.add_argument("--once", action="store_true", help="print one snapshot as plain text and exit")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    p.add_argument("--width", type=int, default=0, metavar="N",
                   help="--once: text width (default: the terminal's, or 120)")
    p.add_argument("--product", default="", metavar="P", help="start filtered to one product")
    p.add_argument("--recent", type=int, default=12, metavar="N", help="order events / alerts kept (default 12)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.recent < 1 or args.width < 0:
        p.print_usage(sys.stderr)
        print("tickmesh top: --recent must be >= 1 and --width >= 0", file=sys.stderr)
        return 2
    from nodes import config
    try:
        cfg = config.load(args.conf)
        if cfg.mesh.transport == "inproc":
            raise config.ConfigError("mesh.transport is inproc (one process): nothing to watch from here")
        from .app import Mesh
        mesh = Mesh(cfg)
    except config.ConfigError as e:
        print(f"tickmesh top: config error: {e}", file=sys.stderr)
        return 2
    model = ScreenModel(cfg.mesh.heartbeat_s, products=cfg.mesh.products, recent=args.recent)
    # the [risk] limits, for "limits used %": importing the risk package takes seconds (Numba),
    # so it happens beside the first events and replies, not before them
    threading.Thread(target=_load_limits, args=(cfg, model), name="top-limits", daemon=True).start()
    product = args.product.upper()
    try:
        if args.once or args.json:
            from .app import collect_once
            collect_once(mesh, model, listen_s=1.5 * cfg.mesh.heartbeat_s)
            snap = model.snapshot(time.time_ns(), product)
            if args.json:
                print(json.dumps(snap, indent=1))
            else:
                width = args.width or (shutil.get_terminal_size((120, 40)).columns if sys.stdout.isatty() else 120)
                sys.stdout.write(view.render_text(snap, width))
            return 0
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            print("tickmesh top: the live screen needs a terminal; use --once or --json", file=sys.stderr)
            return 2
        from .app import Screen
        screen = Screen(mesh, model)
        screen.filter = product
        return screen.run()
    except BrokenPipeError:          # `tickmesh top --once | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    finally:
        mesh.close()


if __name__ == "__main__":
    sys.exit(main())
