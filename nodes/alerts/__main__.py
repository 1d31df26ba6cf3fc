import sys

from nodes.runtime import run_main

from .node import AlertsNode


def main(argv=None):
    return run_main(AlertsNode, argv)


if __name__ == "__main__":
    sys.exit(main())
