"""``python -m nodes.strategy [--conf PATH]``: run the strategy node until SIGTERM."""
import sys

from nodes.runtime import run_main
from nodes.strategy import StrategyNode


def main(argv=None):
    return run_main(StrategyNode, argv)


if __name__ == "__main__":
    sys.exit(main())
