"""``tickmesh report RUN_DIR|STORE_FILE... [--out DIR]``: the run report (``report.html``).

One run (a run's state dir, or store files): its figures, charts and trades in one self-contained
page, PNG copies of the charts and ``report.json`` beside it. Several runs (several directories;
store files given together count as one run): one page comparing them side by side.
"""
import argparse
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from nodes.config import ROOT

from . import ReportError, write_comparison, write_report
from .html import money


def _runs(inputs) -> list:
    """Each directory is a run; the files given, together, are one more."""
    dirs = [p for p in inputs if Path(p).is_dir()]
    files = [p for p in inputs if not Path(p).is_dir()]
    return dirs + ([files] if files else [])


def _print_headline(run):
    f = run.total.figures(run)
    pct = lambda v: "-" if v is None else f"{v * 100:.4g}%"   # noqa: E731
    ratio = lambda v: "-" if v is None else f"{v:.3f}"        # noqa: E731
    print(f"  return {pct(f['return'])}  net PnL {money(f['net_pnl'])}  Sharpe {ratio(f['sharpe'])} "
          f"({run.interval_name} returns, 365-day year)  max drawdown {money(f['max_drawdown'])} "
          f"({pct(f['max_drawdown_pct'])})  win rate {pct(f['win_rate'])}  trades {f['trades']} "
          f"(+{f['open_trades']} open)  fees {money(f['fees'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tickmesh report", description="the run report: figures and charts of a run (or several, compared) in report.html")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|STORE_FILE")
    p.add_argument("--out", metavar="DIR", help="where report.html goes (default: the run dir, or the store "
                                                "file's dir; for a comparison, var/reports/compare-<time>)")
    p.add_argument("--starting-equity", metavar="AMOUNT", help="instead of the one found in the store")
    p.add_argument("--interval", choices=("1d", "1h", "5m", "1m", "1s"),
                   help="return interval of Sharpe/Sortino (default: the largest giving >= 30 returns)")
    p.add_argument("--label", action="append", default=[], help="column name of a compared run (repeatable)")
    a = p.parse_args(argv)
    try:
        se = Decimal(a.starting_equity) if a.starting_equity is not None else None
        if se is not None and (not se.is_finite() or se <= 0):
            raise InvalidOperation
    except InvalidOperation:
        print(f"report: --starting-equity: expected a positive amount, got {a.starting_equity!r}", file=sys.stderr)
        return 2
    runs = _runs(a.inputs)
    try:
        if len(runs) == 1:
            path, run = write_report(runs[0], a.out, starting_equity=se, interval=a.interval)
            print(f"report: {path}")
            _print_headline(run)
        else:
            out = a.out or ROOT / "var" / "reports" / time.strftime("compare-%Y%m%dT%H%M%SZ", time.gmtime())
            path, rs = write_comparison(runs, out, labels=a.label, starting_equity=se, interval=a.interval)
            print(f"report: {path} ({len(rs)} runs compared)")
            for r in rs:
                print(f" {r.name}:")
                _print_headline(r)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
