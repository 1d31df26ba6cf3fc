"""tickmesh nodes: the runtime and one package per node."""
