"""``tickmesh``: one console script for every node and tool.

    tickmesh node NAME [args]   == python -m nodes.NAME
    tickmesh offline [args]     == python -m nodes.offline
    tickmesh TOOL [args]        == python -m tools.TOOL   (tap, ctl, bench, replay, export, train,
                                                            keys, fakecoinbase, ...)
"""
import importlib
import importlib.util
import pkgutil
import sys


def _tools():
    import tools
    return sorted(m.name for m in pkgutil.iter_modules(tools.__path__) if m.name not in ("cli", "__main__"))


def _nodes():
    import nodes
    return sorted(m.name for m in pkgutil.iter_modules(nodes.__path__) if m.ispkg)


def usage() -> str:
    return ("usage: tickmesh node NAME [args] | tickmesh offline [args] | tickmesh TOOL [args]\n"
            f"  nodes: {', '.join(_nodes())}\n  tools: {', '.join(_tools())}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "node":
        if not rest or rest[0] not in _nodes():
            print(f"tickmesh node: expected one of {', '.join(_nodes())}", file=sys.stderr)
            return 2
        mod = f"nodes.{rest[0]}.__main__"
        rest = rest[1:]
    elif cmd == "offline":
        mod = "nodes.offline"
    elif cmd in _tools():
        mod = f"tools.{cmd}"
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.submodule_search_locations:    # a package: its __main__
            mod += ".__main__"
    else:
        print(f"tickmesh: unknown command {cmd!r}\n{usage()}", file=sys.stderr)
        return 2
    m = importlib.import_module(mod)
    sys.argv = [f"tickmesh {cmd}"] + rest
    rc = m.main(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
