"""``python -m nodes.execution``: run the execution node (config: --conf, $TICKMESH_CONF or conf/mesh.toml)."""
import sys

from nodes.execution import ExecutionNode
from nodes.runtime import run_main


def main(argv=None):
    return run_main(ExecutionNode, argv)


if __name__ == "__main__":
    sys.exit(main())
