"""The store node package: JSON Lines for replay and audit. The node is in ``node.py``; the writer
and the line format beside it."""
from .node import StoreNode, StoreConfig, store_dir

__all__ = ["StoreNode", "StoreConfig", "store_dir"]
