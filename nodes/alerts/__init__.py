"""The alert node: Slack / Microsoft Teams / log alerts from bus events."""
from .node import AlertsNode
from .rules import Alert, AlertRules, Deduper

__all__ = ["AlertsNode", "Alert", "AlertRules", "Deduper"]
