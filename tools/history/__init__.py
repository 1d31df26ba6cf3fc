"""Historical market data from Coinbase's public REST endpoints, written as a replayable store file.

``tickmesh history fetch`` (``python -m tools.history fetch``): see ``__main__.py`` and
docs/marketdata.md, "Historical data".
"""
