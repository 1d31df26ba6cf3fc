"""Example strategy plugins (docs/strategies.md walks through them)."""
