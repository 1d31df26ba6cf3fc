"""A local fake Coinbase Advanced Trade exchange that speaks the real protocol over real sockets.

``FakeCoinbaseWS`` (``ws.py``) is the WebSocket market-data side, driven by the seeded synthetic
market of ``nodes.marketdata.synthetic``, with fault injection. Run it with
``python -m tools.fakecoinbase`` (``make fake``); see ``docs/marketdata.md``.
"""
from .ws import GARBAGE, ConnInfo, FakeCoinbaseWS

__all__ = ["FakeCoinbaseWS", "ConnInfo", "GARBAGE", "main"]


def main(argv=None) -> int:
    """``tickmesh fakecoinbase ...`` (the same as ``python -m tools.fakecoinbase ...``)."""
    from .__main__ import main as _main
    return _main(argv)
