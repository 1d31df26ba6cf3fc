"""``python -m nodes.store [--conf PATH]``: run the store node until SIGTERM."""
import sys

from nodes.runtime import run_main
from nodes.store import StoreNode


def main(argv=None):
    return run_main(StoreNode, argv)


if __name__ == "__main__":
    sys.exit(main())
