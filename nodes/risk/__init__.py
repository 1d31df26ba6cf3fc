"""The risk node package: it owns the risk state (bands, feed verdicts, trading state, limits, the
kill switch) and publishes it. The node is in ``node.py``; its logic in ``engine.py`` and the
pre-trade checks (run by execution) in ``checks.py``, without sockets."""
from .node import RiskNode, RiskConfig

__all__ = ["RiskNode", "RiskConfig"]
