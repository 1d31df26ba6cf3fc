import sys

from nodes.runtime import run_main

from .node import MetricsNode


def main(argv=None):
    return run_main(MetricsNode, argv)


if __name__ == "__main__":
    sys.exit(main())
