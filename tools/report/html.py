"""The report page: one self-contained HTML file (inline CSS, charts as ``data:`` PNGs, no script).

Its Content-Security-Policy (``default-src 'none'; img-src data:; style-src 'unsafe-inline'``)
forbids the browser to fetch anything at all: the page opens the same with no network.
"""
import base64
import datetime as _dt
import html
import json
from decimal import Context, Decimal

from .figures import NS, YEAR_S

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_TRADE_ROWS = 500
WIDE = Context(prec=1000)      # formatting never rounds: wider than any amount we show
CENT = Decimal("0.01")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
.neg{color:#b2182b}.pos{color:#1a7837}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
td.help{color:#666;text-align:left;font-size:12px;max-width:380px}
figure{margin:10px 0 22px}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:12px}.note{background:#f8f8f0;border-left:3px solid #cc9;padding:6px 10px;font-size:13px}
code{background:#f4f4f4;padding:0 3px}
"""

# (key, label, kind, help): kind says how to format the value
ROWS = (
    ("starting_equity", "Starting equity", "money", "see 'How these figures are computed'"),
    ("ending_equity", "Ending equity", "money", "starting equity + net PnL"),
    ("net_pnl", "Net PnL", "money", "fees included; open positions marked to mid"),
    ("gross_pnl", "Gross PnL", "money", "net PnL + fees"),
    ("fees", "Fees", "money", ""),
    ("return", "Return", "pct", "net PnL / starting equity"),
    ("sharpe", "Sharpe (annualised)", "ratio", "see the interval above"),
    ("sortino", "Sortino (annualised)", "ratio", "downside deviation, target 0"),
    ("returns_used", "Returns used", "int", "complete intervals in the Sharpe/Sortino"),
    ("max_drawdown", "Max drawdown", "money", "largest fall from a running peak"),
    ("max_drawdown_pct", "Max drawdown %", "pct", "of the peak it fell from"),
    ("drawdown_start_ns", "Drawdown start (peak)", "time", ""),
    ("drawdown_trough_ns", "Drawdown trough", "time", ""),
    ("drawdown_recovery_ns", "Drawdown recovery", "recovery", "back at the peak; '-' not recovered"),
    ("calmar", "Calmar", "ratio", "return scaled to 365 days / max drawdown fraction"),
    ("fills", "Fills", "int", ""),
    ("trades", "Trades (closed)", "int", "round trips flat to flat, per strategy and product"),
    ("open_trades", "Open at the end", "int", "not in win rate, profit factor, expectancy"),
    ("open_pnl", "Open trades' PnL", "money", "marked to the last mid"),
    ("win_rate", "Win rate", "pct", "closed trades with PnL > 0"),
    ("profit_factor", "Profit factor", "ratio", "sum of wins / sum of losses"),
    ("expectancy", "Expectancy", "money", "mean closed-trade PnL"),
    ("avg_win", "Average win", "money", ""),
    ("avg_loss", "Average loss", "money", ""),
    ("turnover", "Turnover", "money", "traded notional (price x size)"),
    ("turnover_x", "Turnover / starting equity", "ratio", ""),
    ("time_in_market", "Time in market", "pct", "share of the run with a position open"),
    ("max_exposure", "Max exposure", "money", "largest sum of |position| x mid"),
    ("max_position", "Max position", "qtymap", "largest |position|, base units"),
    ("orders", "Orders", "int", "order.new events"),
    ("risk_refusals", "Risk refusals", "codes", "risk.decision not approved, by code"),
    ("order_rejections", "Order rejections", "codes", "order.rejected, by code"),
)


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def money(d) -> str:
    """Exact, thousands separated, at least two decimals (never rounded)."""
    if d is None:
        return "-"
    d = Decimal(d).normalize(WIDE)            # the default context (28 digits) would round
    if d.as_tuple().exponent > -2:
        d = d.quantize(CENT, context=WIDE)
    return format(d, ",f")


def utc(ns) -> str:
    if ns is None:
        return "-"
    t = _dt.datetime.fromtimestamp(ns / NS, _dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def duration(s: float) -> str:
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.2f} h"
    return f"{s / 86400:.2f} days"


def fmt(kind, v) -> str:
    if kind == "money":
        return money(v)
    if v is None:
        return "-"
    if kind == "pct":
        return f"{v * 100:.4g}%"
    if kind == "ratio":
        return f"{v:,.3f}" if abs(v) < 1e6 else f"{v:.3e}"
    if kind == "int":
        return f"{v:,}"
    if kind in ("time", "recovery"):
        return utc(v)
    if kind == "qtymap":
        return "<br>".join(f"{esc(k)} {esc(format(q.normalize(WIDE), 'f'))}" for k, q in v.items()) or "-"
    if kind == "codes":
        return "<br>".join(f"{esc(k)} {n}" for k, n in v.items()) or "0"
    return esc(v)


def _cls(v) -> str:
    if isinstance(v, (Decimal, float, int)) and not isinstance(v, bool):
        return ' class="neg"' if v < 0 else ""
    return ""


def figures_table(columns) -> str:
    """``columns``: [(heading, figures dict)]; one row per figure, one column per view."""
    head = "".join(f"<th>{esc(h)}</th>" for h, _ in columns)
    out = [f"<table><tr><th>figure</th>{head}<th>what it is</th></tr>"]
    for key, label, kind, help_ in ROWS:
        cells = "".join(f"<td{_cls(f.get(key))}>{fmt(kind, f.get(key))}</td>" for _, f in columns)
        out.append(f"<tr><td>{esc(label)}</td>{cells}<td class=help>{esc(help_)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name=viewport content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def conventions(run) -> str:
    per_year = YEAR_S // run.interval_s
    return f"""<h2>How these figures are computed</h2>
<ul>
<li><b>Starting equity</b> {money(run.start_equity)}: {esc(run.equity_source)}.</li>
<li><b>Clock</b>: market time. Ticks, trades and books are at their exchange time; every other event at the
latest market time before it in the store (a replay keeps the recording's clock at any speed).</li>
<li><b>Sharpe and Sortino</b>: simple returns of equity over <b>{esc(run.interval_name)}</b> intervals of market
time (complete intervals only; the largest of 1 day, 1 hour, 5 minutes, 1 minute, 1 second giving at least 30),
risk-free rate 0, annualised for crypto's <b>365-day</b> year: x sqrt({per_year:,}) intervals per year.
Sharpe = mean / sample standard deviation; Sortino = mean / sqrt(mean(min(r, 0)<sup>2</sup>)). Short runs
annualise a few seconds of returns: read them as a direction, not a forecast.</li>
<li><b>Money is exact</b> (decimal, never rounded: PnL, fees, drawdown, turnover); ratios are floating point.
Net PnL = sell proceeds - buy costs - fees + open position x mid; gross PnL = net PnL + fees.</li>
<li><b>Trades</b> are round trips of one strategy in one product, flat to flat (a fill that flips the position
closes one and opens the next, its fee split pro rata); their PnL includes their fees.</li>
<li><b>Max drawdown</b> is taken over every change of equity (the charts are downsampled for drawing, the figures
never). Calmar = the return scaled linearly to 365 days / the max drawdown fraction.</li>
<li>Each strategy and product column is measured against the whole account's starting equity; their net PnLs
add up to the run's.</li>
</ul>"""


def _headline_cards(f, run) -> str:
    cards = (("Return", fmt("pct", f["return"]), f["return"]),
             ("Net PnL", money(f["net_pnl"]), f["net_pnl"]),
             (f"Sharpe ({run.interval_name})", fmt("ratio", f["sharpe"]), f["sharpe"]),
             ("Max drawdown", f"{money(f['max_drawdown'])} ({fmt('pct', f['max_drawdown_pct'])})", None),
             ("Win rate", fmt("pct", f["win_rate"]), None),
             ("Trades", f"{f['trades']} closed, {f['open_trades']} open", None),
             ("Fees", money(f["fees"]), None))
    return '<div class=cards>' + "".join(
        f'<div class=card><b{_cls(v)}>{esc(val)}</b><span>{esc(k)}</span></div>' for k, val, v in cards) + "</div>"


def _trades(run) -> str:
    trades = sorted(run.closed_trades, key=lambda t: t.close_ns) + list(run.open_trades)
    if not trades:
        return "<p>No trades in this run.</p>"
    shown = trades[-MAX_TRADE_ROWS:]
    out = []
    if len(trades) > len(shown):
        out.append(f"<p class=note>The last {len(shown)} of {len(trades)} trades (every trade is in the figures"
                   " and in report.json).</p>")
    out.append("<table><tr><th>strategy</th><th>product</th><th>direction</th><th>opened</th><th>closed</th>"
               "<th>fills</th><th>notional</th><th>fees</th><th>PnL</th></tr>")
    for t in shown:
        out.append(f"<tr><td>{esc(t.strategy)}</td><td>{esc(t.product)}</td><td>{t.direction}</td>"
                   f"<td>{utc(t.open_ns)}</td><td>{utc(t.close_ns) if t.close_ns else 'open (marked)'}</td>"
                   f"<td>{t.fills}</td><td>{money(t.notional)}</td><td>{money(t.fees)}</td>"
                   f"<td{_cls(t.pnl)}>{money(t.pnl)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _risk(run) -> str:
    out = []
    ks = run.killswitch
    out.append(f"<p>Kill switch engaged for <b>{duration(run.killswitch_s())}</b> in {len(ks)} "
               f"episode(s){' (still engaged at the end)' if run.killswitch_engaged_at_end else ''}.</p>")
    if ks:
        out.append("<table><tr><th>engaged</th><th>released</th><th>for</th><th>source: reason</th></tr>")
        for s, e, why in ks:
            out.append(f"<tr><td>{utc(s)}</td><td>{utc(e) if e else 'still engaged'}</td>"
                       f"<td>{duration(((e or run.t_end) - s) / NS)}</td><td>{esc(why)}</td></tr>")
        out.append("</table>")
    st = run.state_s()
    out.append("<table><tr><th>trading state</th><th>time</th><th>share</th></tr>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{duration(v)}</td><td>{fmt('pct', v / run.duration_s if run.duration_s else None)}"
        f"</td></tr>" for k, v in sorted(st.items())) + "</table>")
    return "\n".join(out)


def _quality(run) -> str:
    items = [f"{len(run.files)} store file(s): " + ", ".join(f"<code>{esc(f)}</code>" for f in run.files),
             f"{run.events:,} events: " + ", ".join(f"{esc(k)} {v:,}" for k, v in sorted(run.counts.items()))]
    if run.gaps:
        missing = sum(int(g.get("missing", 0) or 0) for g in run.gaps)
        items.append(f"<b>{len(run.gaps)} bus gap(s)</b> seen by the store ({missing:,} events missing): "
                     "the figures may miss what those events held")
    if run.lags:
        dropped = sum(int(g.get("dropped", 0) or 0) for g in run.lags)
        items.append(f"<b>the store fell behind {len(run.lags)} time(s)</b> ({dropped:,} events dropped)")
    if run.unclosed_files:
        items.append("file(s) without a closing line (still being written, or cut by a crash): "
                     + ", ".join(f"<code>{esc(f)}</code>" for f in run.unclosed_files))
    if run.opening:
        items.append("the recording starts with open positions (taken at their first mark, strategy "
                     f"<code>(opening)</code>): " + ", ".join(f"{esc(p)} {q}" for p, q in run.opening.items()))
    if run.execution_pnl is not None:
        t, p = run.execution_pnl
        same = p.realized == run.account_realized and p.fees == run.account_fees
        items.append(f"execution's last pnl event ({utc(t)}): realized {money(p.realized)}, fees {money(p.fees)}, "
                     f"equity {money(p.equity)}; recomputed from the fills: realized {money(run.account_realized)}, "
                     f"fees {money(run.account_fees)} - <b>{'they agree' if same else 'they differ'}</b>")
    else:
        items.append("no pnl event in the store: nothing to check the recomputed PnL against")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def run_page(run, charts, figs) -> str:
    f = figs["total"]
    cols = [("whole run", f)] + [(f"strategy {k}", v) for k, v in figs["strategies"].items()] \
        + [(k, v) for k, v in figs["products"].items()]
    body = [f"<h1>Run report</h1><div class=meta>{esc(run.name)}<br>{utc(run.t0)} to {utc(run.t_end)} "
            f"({duration(run.duration_s)} of market time), {run.events:,} events</div>",
            _headline_cards(f, run), conventions(run), "<h2>Charts</h2>"]
    for stem, title, png in charts:
        body.append(f"<figure id=\"chart-{esc(stem)}\" class=chart>{img(png, title)}<figcaption>{esc(title)} "
                    f"(also <code>report-{esc(stem)}.png</code>)</figcaption></figure>")
    body += ["<h2>Figures: the run, each strategy, each product</h2>", figures_table(cols),
             "<h2>Kill switch and trading state</h2>", _risk(run),
             "<h2>Trades</h2>", _trades(run),
             "<h2>Data</h2>", _quality(run)]
    return _page(f"tickmesh run report: {run.name}", "\n".join(body))


def compare_page(runs, labels, figs, chart_png) -> str:
    cols = [(lab, fg["total"]) for lab, fg in zip(labels, figs)]
    intervals = {r.interval_name for r in runs}
    body = ["<h1>Runs compared</h1>",
            "<div class=meta>" + "<br>".join(
                f"<b>{esc(lab)}</b>: {esc(r.name)}, {utc(r.t0)} to {utc(r.t_end)} ({duration(r.duration_s)}), "
                f"starting equity {money(r.start_equity)} ({esc(r.equity_source)})" for lab, r in zip(labels, runs))
            + "</div>",
            f"<p class=note>Sharpe and Sortino of every run use {esc(', '.join(sorted(intervals)))} returns, "
            "annualised for a 365-day year (see a single run's report for every convention).</p>",
            f"<figure id=chart-compare class=chart>{img(chart_png, 'equity curves overlaid')}<figcaption>"
            "Equity curves overlaid (also <code>report-compare.png</code>)</figcaption></figure>",
            "<h2>Figures side by side</h2>", figures_table(cols)]
    for lab, fg in zip(labels, figs):
        if fg["strategies"]:
            body.append(f"<h2>{esc(lab)}: per strategy</h2>")
            body.append(figures_table([(f"strategy {k}", v) for k, v in fg["strategies"].items()]))
    return _page("tickmesh: runs compared", "\n".join(body))


def to_json(obj):
    """Figures as JSON-ready values: money as exact strings."""
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def dumps(obj) -> str:
    return json.dumps(to_json(obj), indent=2)
