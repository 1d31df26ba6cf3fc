"""The one list of the mesh's parts: each node's name, port slot, module, class, config section,
how supervisord runs it and in which order it starts.

Config (``NODES``, ``SECTIONS``), offline mode, ``tickmesh ctl``, the test harness and the
benchmarks read it from here; a test holds ``supervisord.conf`` to it. Adding a node: its package
(``nodes/<name>/node.py`` with the Node class, ``config.py`` with its section), a line here, a
program in ``supervisord.conf`` and its keys in ``conf/mesh.toml``.

A leaf module: it imports nothing, so the config loader can read it before anything slow.
"""
from typing import NamedTuple, Optional


class NodeSpec(NamedTuple):
    name: str
    slot: int                    # PUB port base_port + 2*slot, REP port base_port + 2*slot + 1; append only
    module: str                  # where the Node class lives (None: a slot only: a tool publishes there)
    cls: Optional[str]
    section: Optional[str]       # its [section] of conf/mesh.toml, "module:Class" of its config
    supervised: Optional[str]    # "program" | "eventlistener" | None (not run by supervisord)
    priority: Optional[int]      # supervisord start order (lower first; stop is the reverse)
    offline: bool = False        # one of the nodes offline mode runs


REGISTRY = (
    NodeSpec("marketdata", 0, "nodes.marketdata.node", "MarketDataNode",
             "nodes.marketdata.config:MarketDataConfig", "program", 100, True),
    NodeSpec("risk", 1, "nodes.risk.node", "RiskNode", "nodes.risk.config:RiskConfig", "program", 200, True),
    NodeSpec("execution", 2, "nodes.execution.node", "ExecutionNode",
             "nodes.execution.config:ExecutionConfig", "program", 300, True),
    NodeSpec("store", 3, "nodes.store.node", "StoreNode", "nodes.store.config:StoreConfig", "program", 50, True),
    NodeSpec("strategy", 4, "nodes.strategy.node", "StrategyNode",
             "nodes.strategy.config:StrategyConfig", "program", 400, True),
    NodeSpec("metrics", 5, "nodes.metrics.node", "MetricsNode", "nodes.metrics.config:MetricsConfig",
             "program", 60, True),
    NodeSpec("alerts", 6, "nodes.alerts.node", "AlertsNode", "nodes.alerts.config:AlertsConfig",
             "program", 70, True),
    NodeSpec("replay", 7, None, None, None, None, None),                   # tools.replay publishes here
    NodeSpec("supervisor", 8, "nodes.supervisor.node", "SupervisorListener", None, "eventlistener", 10),
    NodeSpec("offline", 9, "nodes.offline", "Summary", None, None, None),  # offline mode's summary
)

BY_NAME = {s.name: s for s in REGISTRY}
NODES = tuple(s.name for s in sorted(REGISTRY, key=lambda s: s.slot))
SECTIONS = {s.name: s.section for s in REGISTRY if s.section}
SUPERVISED = tuple(s.name for s in sorted(REGISTRY, key=lambda s: s.priority or 0) if s.supervised == "program")
# offline mode drives its nodes in this order each pass: the source first, then the nodes that
# react to market data, the order path in the order an order travels, the observers last
OFFLINE_ORDER = ("marketdata", "risk", "strategy", "execution", "store", "metrics", "alerts")


def load_class(name: str):
    """The Node class of ``name`` (imports its package)."""
    import importlib
    s = BY_NAME[name]
    if s.module is None:
        raise LookupError(f"{name} is a port slot, not a node class")
    return getattr(importlib.import_module(s.module), s.cls)
