"""The execution node package: the one owner of positions and orders, the pre-trade gate in front
of the venue. The node is in ``node.py``; the socket-free pieces beside it (orders, positions,
pretrade, journal, paper, coinbase)."""
from .node import ExecutionNode, ExecutionConfig

__all__ = ["ExecutionNode", "ExecutionConfig"]
