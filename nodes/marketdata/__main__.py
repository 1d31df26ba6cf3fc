"""``python -m nodes.marketdata [--conf PATH] [--log-level LEVEL]``: the market-data node."""
import sys

from nodes.runtime import run_main

from . import MarketDataNode


def main(argv=None):
    return run_main(MarketDataNode, argv)


if __name__ == "__main__":
    sys.exit(main())
