"""The market-data node package: Coinbase Advanced Trade (raw websockets or the official SDK), a
seeded synthetic market, or a store-file replay -> normalised ``md.*`` events. The node is in
``node.py``; the socket-free pieces beside it (normalize, book, feed, synthetic, replay)."""
from .node import MarketDataNode, MarketDataConfig

__all__ = ["MarketDataNode", "MarketDataConfig"]
