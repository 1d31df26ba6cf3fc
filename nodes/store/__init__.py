"""The store node package: JSON Lines for replay and audit. The node is in ``node.py``; the writer
and the line format beside it."""
from .node import StoreNode, StoreConfig

__all__ = ["StoreNode", "StoreConfig"]
