"""Benchmarks: ``python -m tools.bench SECTION|all [--quick] [--json PATH]``.

Each section module exposes ``run(quick: bool) -> dict`` and measures tickmesh against a raw
baseline in the same run; the report is one JSON object with a top-level key per section.
"""
