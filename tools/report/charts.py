"""The report's charts, drawn with matplotlib (Agg, no display, no pyplot state) as PNG bytes.

Long series are downsampled for drawing only (``downsample``: the first, the lowest and the highest
point of each of ~1500 time buckets, so spikes and troughs stay visible); the figures never are.
Times are market time (see ``figures``), drawn in UTC.
"""
import io

import numpy as np
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg

from .figures import NS

BUCKETS = 1500
WIDTH_IN, DPI = 11.0, 100
STATE_COLOURS = {"ACTIVE": "#cfe8cf", "REDUCING": "#f6c46b", "HALTED": "#d9534f"}
KILL_COLOUR = "#d9534f"
BUY, SELL = "#1a9850", "#d73027"


def downsample(t, y, buckets: int = BUCKETS):
    """``(t, y)`` numpy arrays reduced to at most ~3 points per time bucket (first, min, max)."""
    t = np.asarray(t, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    if len(t) <= 3 * buckets:
        return t, y
    span = max(int(t[-1] - t[0]), 1)
    b = ((t - t[0]).astype(np.float64) * (buckets - 1) / span).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.r_[starts[1:], len(t)]
    mins = np.minimum.reduceat(y, starts)
    maxs = np.maximum.reduceat(y, starts)
    keep = set(starts.tolist())
    keep.add(len(t) - 1)
    for s, e, lo, hi in zip(starts, ends, mins, maxs):
        seg = y[s:e]
        keep.add(s + int(np.argmin(seg)) if seg[0] != lo else s)
        keep.add(s + int(np.argmax(seg)) if seg[0] != hi else s)
    idx = np.fromiter(sorted(keep), dtype=np.int64)
    return t[idx], y[idx]


def _dt(ns):
    return np.asarray(ns, dtype=np.int64).view("datetime64[ns]")


def _png(fig) -> bytes:
    import warnings
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # AutoDateLocator falls back to a 30-unit step for some spans and says so on stderr; the
        # axis is fine, and a report must not print noise into an offline run's summary
        warnings.filterwarnings("ignore", message="AutoDateLocator was unable", category=UserWarning)
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(height_in: float, rows=1, ratios=None, sharex=True):
    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False,
                        gridspec_kw={"height_ratios": ratios} if ratios else None)[:, 0]
    return fig, axes


def _time_axis(ax, run):
    ax.set_xlim(_dt([run.t0])[0], _dt([max(run.t_end, run.t0 + NS)])[0])
    loc = mdates.AutoDateLocator(maxticks=10)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.set_xlabel("market time (UTC)")


def _shade_states(ax, run, label=True):
    """Kill switch engaged: red; trading state REDUCING/HALTED: orange/red, lighter."""
    done = set()
    for s, e, st in run.states:
        if st == "ACTIVE":
            continue
        ax.axvspan(_dt([s])[0], _dt([e if e is not None else run.t_end])[0], color=STATE_COLOURS.get(st, "#999"),
                   alpha=0.25, lw=0, label=f"state {st}" if label and st not in done else None)
        done.add(st)
    for i, (s, e, _why) in enumerate(run.killswitch):
        ax.axvspan(_dt([s])[0], _dt([e if e is not None else run.t_end])[0], color=KILL_COLOUR, alpha=0.18,
                   lw=0, hatch="//", label="kill switch engaged" if label and i == 0 else None)


def _note(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="#555")


def equity_series(run, track):
    """(t ns, equity float) of a track, with the run's start and end."""
    s0 = float(run.start_equity)
    t = np.r_[run.t0, np.frombuffer(track.ts, dtype=np.int64), run.t_end]
    pnl = np.frombuffer(track.pnl, dtype=np.float64)
    y = s0 + np.r_[0.0, pnl, pnl[-1] if len(pnl) else 0.0]
    return t, y


def equity_drawdown(run) -> bytes:
    fig, (ax, axd) = _figure(5.2, 2, [3, 1.4])
    t, eq = equity_series(run, run.total)
    peak = np.maximum.accumulate(eq)
    dd = np.where(peak > 0, (eq - peak) / peak * 100.0, 0.0)       # drawn in %, from the full series
    ts, es = downsample(t, eq)
    td, dds = downsample(t, dd)
    ax.plot(_dt(ts), es, drawstyle="steps-post", color="#1f4e79", lw=1.3, label="equity")
    ax.axhline(float(run.start_equity), color="#888", lw=0.8, ls="--", label="starting equity")
    f = run.total
    if f.dd > 0 and f.dd_trough is not None:
        ax.plot(_dt([f.dd_start, f.dd_trough]), [float(run.start_equity + f.dd_peak),
                                                 float(run.start_equity + f.dd_peak - f.dd)],
                "o", color="#d73027", ms=5, label="max drawdown: peak, trough")
    _shade_states(ax, run)
    ax.set_ylabel("equity (quote)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Equity and drawdown")
    axd.fill_between(_dt(td), dds, 0, step="post", color="#d73027", alpha=0.5, lw=0)
    axd.plot(_dt(td), dds, drawstyle="steps-post", color="#a50026", lw=0.8)
    axd.set_ylabel("drawdown %")
    if not np.any(dds < 0):
        axd.set_ylim(-1, 0.1)
    _shade_states(axd, run, label=False)
    _time_axis(axd, run)
    return _png(fig)


def price(run, product) -> bytes:
    fig, (ax, axv) = _figure(5.2, 2, [3, 1.2])
    ts, px = run.prices.get(product, ((), ()))
    if len(ts):
        t, y = downsample(np.frombuffer(ts, dtype=np.int64), np.frombuffer(px, dtype=np.float64))
        ax.plot(_dt(t), y, color="#333", lw=0.9, label="mid")
    band = run.bands.get(product)
    if band is not None and len(band["ts"]):
        bt = np.frombuffer(band["ts"], dtype=np.int64)
        step = max(1, len(bt) // (3 * BUCKETS))
        sl = slice(None, None, step)
        lo, hi = np.frombuffer(band["low"], dtype=np.float64), np.frombuffer(band["high"], dtype=np.float64)
        ax.fill_between(_dt(bt[sl]), lo[sl], hi[sl], step="post", color="#4575b4", alpha=0.15, lw=0,
                        label=f"risk band ({band['method']})")
        mid = np.frombuffer(band["mid"], dtype=np.float64)
        bps = 1e4
        axv.plot(_dt(bt[sl]), np.frombuffer(band["stddev"], dtype=np.float64)[sl] * bps, lw=0.9, label="stddev")
        axv.plot(_dt(bt[sl]), np.frombuffer(band["ewma"], dtype=np.float64)[sl] * bps, lw=0.9, label="EWMA")
        with np.errstate(divide="ignore", invalid="ignore"):
            atr = np.where(mid > 0, np.frombuffer(band["atr"], dtype=np.float64) / mid * bps, 0.0)
        axv.plot(_dt(bt[sl]), atr[sl], lw=0.9, label="ATR (of mid)")
        axv.legend(loc="upper left", fontsize=7, ncol=3)
    else:
        _note(axv, "no risk.band events for this product in the store")
    axv.set_ylabel("volatility, bps")
    fills = [f for f in run.fill_marks if f[1] == product]
    for side, colour, marker in (("BUY", BUY, "^"), ("SELL", SELL, "v")):
        pts = [(f[0], f[3]) for f in fills if f[2] == side]
        if pts:
            ax.scatter(_dt([p[0] for p in pts]), [p[1] for p in pts], marker=marker, color=colour, s=36,
                       zorder=3, edgecolor="black", linewidths=0.4, label=f"{side.lower()} fill ({len(pts)})")
    if not len(ts):
        _note(ax, f"no ticks of {product} in the store")
    _shade_states(ax, run, label=False)
    ax.set_ylabel("price (quote)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{product}: price, volatility band, fills")
    _time_axis(axv, run)
    return _png(fig)


def positions(run) -> bytes:
    products = sorted(set(run.positions) | set(run.prices))
    fig, axes = _figure(1.0 + 1.6 * max(1, len(products)), max(1, len(products)))
    for ax, p in zip(axes, products or ["(no product)"]):
        pts = run.positions.get(p)
        if pts:
            ax.plot(_dt([x[0] for x in pts]), [float(x[1]) for x in pts], drawstyle="steps-post", color="#542788",
                    lw=1.3)
            ax.axhline(0, color="#888", lw=0.6)
        else:
            ax.axhline(0, color="#888", lw=0.6)
            _note(ax, f"no position in {p} during the run")
        _shade_states(ax, run, label=False)
        ax.set_ylabel(f"{p}\n(base units)", fontsize=8)
    axes[0].set_title("Position per product (the account's)")
    _time_axis(axes[-1], run)
    return _png(fig)


def states(run) -> bytes:
    fig, (ax,) = _figure(2.0, 1)
    rows = (("kill switch", 1.0), ("trading state", 0.0))
    for s, e, st in run.states:
        end = e if e is not None else run.t_end
        ax.barh(0.0, (end - s) / NS / 86_400, left=mdates.date2num(_dt([s])[0]), height=0.6,
                color=STATE_COLOURS.get(st, "#999"), edgecolor="#666", lw=0.4)
        if end > s:
            ax.text(mdates.date2num(_dt([s + (end - s) // 2])[0]), 0.0, st, ha="center", va="center", fontsize=8)
    ax.barh(1.0, (run.t_end - run.t0) / NS / 86_400, left=mdates.date2num(_dt([run.t0])[0]), height=0.6,
            color="#cfe8cf", edgecolor="#666", lw=0.4)
    for s, e, why in run.killswitch:
        end = e if e is not None else run.t_end
        ax.barh(1.0, max(end - s, 1) / NS / 86_400, left=mdates.date2num(_dt([s])[0]), height=0.6,
                color=KILL_COLOUR, edgecolor="#666", lw=0.4)
    if not run.killswitch:
        ax.text(mdates.date2num(_dt([run.t0 + (run.t_end - run.t0) // 2])[0]), 1.0, "released throughout",
                ha="center", va="center", fontsize=8)
    ax.set_yticks([r[1] for r in rows], [r[0] for r in rows])
    ax.set_ylim(-0.5, 1.5)
    ax.set_title("Kill switch and trading state")
    _time_axis(ax, run)
    return _png(fig)


def strategies(run) -> bytes:
    fig, (ax,) = _figure(4.0, 1)
    drawn = 0
    for name, tr in sorted(run.strategies.items()):
        if not tr.fills and not len(tr.ts):
            continue
        t, y = equity_series(run, tr)
        t, y = downsample(t, y - float(run.start_equity))
        ax.plot(_dt(t), y, drawstyle="steps-post", lw=1.2, label=name)
        drawn += 1
    t, y = equity_series(run, run.total)
    t, y = downsample(t, y - float(run.start_equity))
    ax.plot(_dt(t), y, drawstyle="steps-post", lw=1.0, ls="--", color="#333", label="whole run")
    ax.axhline(0, color="#888", lw=0.6)
    if not drawn:
        _note(ax, "no strategy traded in this run")
    ax.set_ylabel("net PnL (quote)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Cumulative net PnL per strategy (fees included, marked to mid)")
    _time_axis(ax, run)
    return _png(fig)


def compare_equity(runs, labels) -> bytes:
    """Equity curves of several runs overlaid: return % against time since each run's start."""
    fig, (ax,) = _figure(4.6, 1)
    longest = max((r.t_end - r.t0) for r in runs) / NS
    unit, div = ("hours", 3600.0) if longest > 3 * 3600 else ("minutes", 60.0) if longest > 180 else ("seconds", 1.0)
    for run, label in zip(runs, labels):
        t, y = equity_series(run, run.total)
        t, y = downsample(t, y)
        s0 = float(run.start_equity)
        ax.plot((t - run.t0) / NS / div, (y / s0 - 1.0) * 100.0 if s0 else y * 0, drawstyle="steps-post",
                lw=1.2, label=label)
    ax.axhline(0, color="#888", lw=0.6)
    ax.set_xlabel(f"{unit} since the run's first event (market time)")
    ax.set_ylabel("return on starting equity, %")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Equity curves, overlaid")
    return _png(fig)


def all_charts(run) -> list:
    """[(file stem, title, png bytes)] of one run's report, in page order."""
    out = [("equity", "Equity and drawdown", equity_drawdown(run))]
    for p in sorted(set(run.prices) | set(run.positions)):
        out.append((f"price-{p}", f"{p}: price, volatility band and fills", price(run, p)))
    out.append(("positions", "Position per product", positions(run)))
    out.append(("states", "Kill switch and trading state", states(run)))
    out.append(("strategies", "Cumulative PnL per strategy", strategies(run)))
    return out
