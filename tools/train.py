"""``python -m tools.train FILE --out model.json [--seed N] [--episodes N]``

Trains the ``qlearn`` strategy's Q-table offline from a store file's ticks (``md.tick.*``), with
the same features the live plugin computes (``nodes.strategy.rl``). Reproducible: the same file,
seed and options give a byte-identical model. A progress bar goes to stderr; the final report
(in-sample, and out-of-sample with ``--eval FILE``) compares the greedy policy against holding
cash (PnL 0) and buy-and-hold, after fees, with exact Decimal accounting.

``--write-synthetic OUT`` writes a synthetic trending market (regime-switching drift, numpy,
seeded by ``--seed``) as a store file instead, for demos and tests::

    python -m tools.train --write-synthetic var/syn-train.jsonl --seed 1
    python -m tools.train --write-synthetic var/syn-test.jsonl --seed 2
    python -m tools.train var/syn-train.jsonl --out var/models/qlearn.json --eval var/syn-test.jsonl
"""
import argparse
import json
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

import proto
from nodes.strategy import rl


class Progress:
    """A plain progress bar on stderr (``\\r`` redraws on a terminal, a line per 10% otherwise)."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._last_decile = -1

    def __call__(self, done, total, info):
        frac = done / total
        decile = int(frac * 10)
        if not self.tty and decile == self._last_decile and done != total:
            return
        self._last_decile = decile
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = (f"train [{bar}] {done}/{total} episodes  eps={info['epsilon']:.3f}  "
                f"pnl/unit={info['pnl_per_unit']:.2f}  trades={info['trades']}  "
                f"{time.monotonic() - self.t0:.1f}s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _dec(s):
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {s!r}") from None
    if not d.is_finite() or d < 0:
        raise argparse.ArgumentTypeError(f"must be a finite decimal >= 0: {s!r}")
    return d


def _report_lines(name, res: rl.Result):
    verdict = "beats" if res.pnl > 0 else "does NOT beat"
    return [f"  {name}: policy PnL {res.pnl} (fees {res.fees}, {res.trades} trades, {res.steps} steps) "
            f"{verdict} cash (0); buy-and-hold {res.buy_hold_pnl}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.strip().splitlines()[0])
    p.add_argument("file", nargs="?", help="store file with md.tick.* events")
    p.add_argument("--out", help="model file to write (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=rl.TrainParams.episodes)
    p.add_argument("--alpha", type=float, default=rl.TrainParams.alpha)
    p.add_argument("--gamma", type=float, default=rl.TrainParams.gamma)
    p.add_argument("--fee-rate", type=_dec, default=rl.TrainParams.fee_rate,
                   help="fee per unit of notional, as execution charges (default 0.006)")
    p.add_argument("--products", nargs="+", default=[], help="only these products' ticks")
    p.add_argument("--decision-every", type=int, default=1, help="decide on every Nth tick")
    p.add_argument("--max-units", type=int, default=1, help="largest position, in order units")
    p.add_argument("--eval", dest="eval_file", help="held-out store file for an out-of-sample report")
    p.add_argument("--report-json", help="also write the report as JSON here")
    p.add_argument("--write-synthetic", metavar="OUT", help="write a synthetic trending market and exit")
    p.add_argument("--steps", type=int, default=4000, help="synthetic: ticks")
    p.add_argument("--drift", type=float, default=0.0008, help="synthetic: per-step trend")
    p.add_argument("--vol", type=float, default=0.004, help="synthetic: per-step volatility")
    p.add_argument("--product", default="SYN-USD", help="synthetic: product name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    if a.write_synthetic:
        envs = rl.synthetic_ticks(a.seed, a.steps, product=a.product, drift=a.drift, vol=a.vol)
        Path(a.write_synthetic).parent.mkdir(parents=True, exist_ok=True)
        rl.write_store_file(a.write_synthetic, envs)
        print(f"train: wrote {len(envs)} synthetic ticks of {a.product} (seed {a.seed}, drift {a.drift}, "
              f"vol {a.vol}) to {a.write_synthetic}", file=sys.stderr)
        return 0
    if not a.file or not a.out:
        p.error("FILE and --out are required (or --write-synthetic OUT)")
    if a.episodes < 1:
        p.error("--episodes must be >= 1")
    try:
        spec = rl.FeatureSpec(max_units=a.max_units, decision_every=a.decision_every)
    except ValueError as e:
        p.error(str(e))
    try:
        series = rl.build_series(rl.ticks_from_file(a.file, a.products), spec)
        held_out = rl.build_series(rl.ticks_from_file(a.eval_file, a.products), spec) if a.eval_file else None
    except (OSError, proto.DecodeError) as e:
        print(f"train: cannot read: {e}", file=sys.stderr)
        return 2
    if not series:
        print(f"train: {a.file}: no product has enough ticks (need > {rl.Features(spec).need + 1} "
              "decision steps)", file=sys.stderr)
        return 2
    tp = rl.TrainParams(episodes=a.episodes, alpha=a.alpha, gamma=a.gamma, fee_rate=a.fee_rate, seed=a.seed)
    t0 = time.monotonic()
    model = rl.train(series, spec, tp, progress=None if a.quiet else Progress())
    elapsed = time.monotonic() - t0
    model.meta["trained_on"] = Path(a.file).name
    ins = rl.evaluate(model, series, fee_rate=a.fee_rate)
    report = {"in_sample": ins.to_json()}
    if held_out:
        report["out_of_sample"] = rl.evaluate(model, held_out, fee_rate=a.fee_rate).to_json()
    model.meta["report"] = report
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    model.save(a.out)
    visited = sum(1 for v in model.visits if v)
    lines = [f"train: {a.episodes} episodes over {sum(len(s) for s in series)} steps of "
             f"{', '.join(s.product for s in series)} in {elapsed:.2f} s (seed {a.seed}, fee rate {a.fee_rate})",
             f"  states visited: {visited} of {spec.n_states}; model written to {a.out}"]
    lines += _report_lines("in-sample", ins)
    if held_out:
        lines += _report_lines(f"out-of-sample ({Path(a.eval_file).name})",
                               rl.evaluate(model, held_out, fee_rate=a.fee_rate))
    print("\n".join(lines), file=sys.stderr)
    if a.report_json:
        Path(a.report_json).write_text(json.dumps({**report, "seconds": round(elapsed, 3),
                                                   "states_visited": visited}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
