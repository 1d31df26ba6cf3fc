"""The supervisord event listener (node slot "supervisor")."""
from .node import SupervisorListener

__all__ = ["SupervisorListener"]
