"""The strategy node package: plugins that turn market data into orders. The node is in
``node.py``; the plugin interface in ``base.py``, the order gate in ``gate.py``."""
from .node import StrategyNode, StrategyConfig, Strategy, BUILTINS, load_plugins

__all__ = ["StrategyNode", "StrategyConfig", "Strategy", "BUILTINS", "load_plugins"]
