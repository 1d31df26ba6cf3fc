"""The run report: performance figures and a self-contained HTML page with charts, from the store.

    tickmesh report RUN_DIR|STORE_FILE... [--out DIR]       (python -m tools.report)

``figures`` computes the figures from store events (exact Decimal money), ``charts`` draws them
with matplotlib, ``html`` writes the page. ``write_run_report(state_dir)`` is what offline mode
calls at the end of a run.
"""
from pathlib import Path

from .figures import ReportError, compute, headline

__all__ = ["write_report", "write_run_report", "write_comparison", "compute", "headline", "ReportError"]


def _write_pngs(out: Path, charts):
    for stem, _title, png in charts:
        (out / f"report-{stem}.png").write_bytes(png)


def write_report(paths, out=None, *, starting_equity=None, interval: str = None, name: str = None):
    """Compute one run's figures from its store files and write ``report.html`` (plus
    ``report-<chart>.png`` copies and ``report.json``, the figures with money as exact strings)
    into ``out`` (default: the run directory, or the first store file's directory).
    Returns ``(path of report.html, run)``. Raises ReportError when there is nothing to report."""
    from . import charts as _charts, html as _html
    run = compute(paths, starting_equity=starting_equity, interval=interval, name=name)
    if out is None:
        first = Path(paths if isinstance(paths, (str, Path)) else list(paths)[0])
        out = first if first.is_dir() else first.parent
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = run.figures()
    charts = _charts.all_charts(run)
    path = out / "report.html"
    _write_pngs(out, charts)
    (out / "report.json").write_text(_html.dumps({
        "run": run.name, "files": run.files, "start_ns": run.t0, "end_ns": run.t_end,
        "duration_s": run.duration_s, "starting_equity_source": run.equity_source,
        "return_interval": run.interval_name, "annualisation": "365-day year", "killswitch_s": run.killswitch_s(),
        "trading_state_s": run.state_s(), **figs}))
    path.write_text(_html.run_page(run, charts, figs), encoding="utf-8")
    return path, run


def write_run_report(state_dir, out=None):
    """The end of an offline run: the report of ``state_dir``'s store, written into ``state_dir``.
    Returns ``(path of report.html, headline figures)`` (``figures.headline``: money as exact
    strings, plus ``report``: the path). With nothing to report on (no store file, no event) it
    returns ``(None, {"report": None, "report_error": why})`` instead of raising."""
    try:
        path, run = write_report(state_dir, out)
    except ReportError as e:
        return None, {"report": None, "report_error": str(e)}
    return path, {**headline(run), "report": str(path)}


def write_comparison(runs_paths, out, *, labels=None, starting_equity=None, interval: str = None):
    """One page comparing several runs (each a run dir or a list of store files): their figures in
    columns and their equity curves overlaid. Every run's Sharpe/Sortino uses the same interval
    (the shortest run's, unless ``interval`` names one). Returns ``(path, [run, ...])``."""
    from . import charts as _charts, html as _html
    runs = [compute(p, starting_equity=starting_equity, interval=interval) for p in runs_paths]
    if interval is None:
        common = min((r.interval_s, r.interval_name) for r in runs)
        for r in runs:
            r.interval_s, r.interval_name = common
    labels = list(labels or [])
    for i, p in enumerate(runs_paths[len(labels):], len(labels)):
        first = Path(p if isinstance(p, (str, Path)) else list(p)[0])
        lab = first.name if first.is_dir() else first.stem
        labels.append(lab if lab not in labels else f"{lab} ({i + 1})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = [r.figures() for r in runs]
    png = _charts.compare_equity(runs, labels)
    (out / "report-compare.png").write_bytes(png)
    (out / "report.json").write_text(_html.dumps({lab: {"run": r.name, "return_interval": r.interval_name, **f}
                                                 for lab, r, f in zip(labels, runs, figs)}))
    path = out / "report.html"
    path.write_text(_html.compare_page(runs, labels, figs, png), encoding="utf-8")
    return path, runs
