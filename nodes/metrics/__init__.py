"""The metrics node: a Prometheus endpoint fed only from bus events."""
from .collect import MeshMetrics
from .node import MetricsNode

__all__ = ["MetricsNode", "MeshMetrics"]
