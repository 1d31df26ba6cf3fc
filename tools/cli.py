"""``tickmesh``: one console script for every node and tool.

    tickmesh node NAME [args]   == python -m nodes.NAME
    tickmesh offline [args]     == python -m nodes.offline
    tickmesh TOOL [args]        == python -m tools.TOOL   (tap, ctl, bench, replay, export, train,
                                                            keys, fakecoinbase, ...)

``tickmesh --help`` lists every command with one line each: from ``DESCRIPTIONS`` below, else the
first line of the module's docstring (read from the source, nothing imported). A tool is a module
or package of ``tools`` with a ``main()``; helper modules without one are not commands.
"""
import ast
import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path

# One line per command in `tickmesh --help`; a command not listed here shows its docstring's first line.
DESCRIPTIONS = {
    "node": "run one node in the foreground (== python -m nodes.NAME)",
    "offline": "backtest the whole mesh on the market clock",
    "config": "check the config file, environment overrides and secrets",
    "ctl": "operate a running mesh: status, kill switch, orders, PnL",
    "tap": "watch the bus live, passively (filters, JSON, --stats, --record)",
    "top": "one live screen: nodes, kill switch, feeds, positions, risk",
    "bench": "benchmarks: latency and throughput figures, one JSON report",
    "replay": "replay a store file onto the bus at a chosen speed",
    "export": "store files to CSV, or a digest of their events",
    "report": "a run's figures and charts in one HTML page (several runs: side by side)",
    "train": "train the Q-learning strategy's table from a store file",
    "keys": "generate CurveZMQ key pairs for every node and tool (mesh.curve)",
    "fakecoinbase": "a local fake Coinbase exchange (WebSocket + REST), faults",
    "protodoc": "regenerate (or --check) docs/protocol.md's message reference",
    "netutil": "free port ranges for a second mesh on this machine",
    "node:marketdata": "market data: Coinbase WebSocket, synthetic or replay -> md.* events",
    "node:risk": "pre-trade risk gate, volatility bands, trading state and kill switch",
    "node:execution": "orders through the risk gate to the paper venue or Coinbase; positions, PnL",
    "node:store": "every subscribed event as a JSON line in rotating files",
    "node:strategy": "strategy plugins (sma, momentum, qlearn) submitting orders to execution",
    "node:metrics": "the Prometheus endpoint, fed from bus events",
    "node:alerts": "Slack / Microsoft Teams alerts from bus events",
    "node:supervisor": "supervisord event listener: process state changes onto the bus",
}


def _source(pkg_path, name: str, ispkg: bool) -> Path:
    base = Path(pkg_path) / name
    if ispkg:
        return base / "__main__.py" if (base / "__main__.py").exists() else base / "__init__.py"
    return base.with_suffix(".py")


def _has_main(path: Path) -> bool:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def _tools():
    import tools
    out = []
    for m in pkgutil.iter_modules(tools.__path__):
        if m.name in ("cli", "__main__"):
            continue
        if _has_main(_source(tools.__path__[0], m.name, m.ispkg)):
            out.append(m.name)
    return sorted(out)


def _nodes():
    import nodes
    return sorted(m.name for m in pkgutil.iter_modules(nodes.__path__) if m.ispkg)


def describe(name: str, path: Path = None) -> str:
    """The command's one line: DESCRIPTIONS, else its docstring's first line (markup dropped)."""
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    doc = ""
    if path is not None:
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except (OSError, SyntaxError):
            doc = ""
    line = " ".join(doc.strip().split("\n\n")[0].split())          # the first paragraph, one line
    line = re.sub(r"^``[^`]*``:\s*", "", line).replace("``", "")
    line = line.split(". ")[0].rstrip(".")
    return (line[:77] + "...") if len(line) > 80 else (line or "(no description)")


def _fit(line: str, room: int = 64) -> str:
    """One line of `tickmesh --help` within 80 columns (16 for the name)."""
    return line if len(line) <= room else line[:room - 3].rstrip() + "..."


def usage() -> str:
    import nodes
    import tools
    width = 14
    rows = ["usage: tickmesh COMMAND [args]    (tickmesh COMMAND --help: its options)", "", "commands:"]
    for name in ("node", "offline"):
        rows.append(f"  {name:<{width}}{_fit(describe(name))}")
    for name in _tools():
        ispkg = (Path(tools.__path__[0]) / name).is_dir()
        rows.append(f"  {name:<{width}}{_fit(describe(name, _source(tools.__path__[0], name, ispkg)))}")
    rows += ["", "nodes (tickmesh node NAME):"]
    for name in _nodes():
        rows.append(f"  {name:<{width}}{_fit(describe('node:' + name, Path(nodes.__path__[0]) / name / '__init__.py'))}")
    return "\n".join(rows)


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
        print(f"tickmesh: unknown command {cmd!r} (tickmesh --help lists the commands)", file=sys.stderr)
        return 2
    m = importlib.import_module(mod)
    sys.argv = [f"tickmesh {cmd}"] + rest
    rc = m.main(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
