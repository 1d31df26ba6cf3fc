"""The run report: performance figures and a self-contained HTML page with charts, from the store.

    tickmesh report RUN_DIR|STORE_FILE... [--out DIR]       (python -m tools.report)

``figures`` computes the figures from store events (exact Decimal money), ``charts`` draws them
with matplotlib, ``html`` writes the page. ``write_run_report(state_dir)`` is what offline mode
calls at the end of a run.
"""
