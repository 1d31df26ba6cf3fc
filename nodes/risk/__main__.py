"""``python -m nodes.risk`` / ``tickmesh node risk``."""
import sys

from nodes.runtime import run_main

from . import RiskNode


def main(argv=None):
    return run_main(RiskNode, argv)


if __name__ == "__main__":
    sys.exit(main())
