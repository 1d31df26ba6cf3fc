"""Rendering of a ``ScreenModel.snapshot()`` with rich: the live screen and the ``--once`` text are
the same renderable, printed to a terminal or to plain text. Nothing here reads sockets or the
model: only the snapshot, so a snapshot built by hand renders the same as a live one.

Layout: the trading state and kill switch first, on a full-width bar; then nodes, feeds, risk and
alerts, positions and PnL, working orders, and the recent order events and refusals. At 150 columns
and more the middle sections sit two by two; in a narrower terminal each table drops its least
needed columns until it fits. An unknown value is "—".
"""
import io
import time
from decimal import Decimal, InvalidOperation

from rich import box
from rich.console import Console, Group
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .keys import KEYS_HELP

DASH = "—"
WIDE = 150


def fmt(v) -> str:
    if v is None or v == "":
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def dur(s) -> str:
    """Seconds -> 0.4s, 12s, 3m05s, 2h03m, 4d02h."""
    if s is None:
        return DASH
    s = float(s)
    if s < 0:
        s = 0.0
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def money(v, places: str = "0.01") -> str:
    """A quote amount rounded for the eye (the exact value is in --json)."""
    if v is None:
        return DASH
    try:
        return str(Decimal(v).quantize(Decimal(places)))
    except (InvalidOperation, TypeError, ValueError):
        return str(v)


def num(v) -> str:
    """A size or price for the eye: no trailing zeros, no exponent (0.00100000 -> 0.001)."""
    if v is None:
        return DASH
    try:
        return format(Decimal(v).normalize(), "f")
    except (InvalidOperation, TypeError, ValueError):
        return str(v)


def what(r: dict) -> str:
    """An order event or refusal in a few words: BUY 0.01 @ 65000 filled 0.01 @ 64990.5."""
    if r["kind"] == "refusal":
        return f"refused by {r['by']}"
    out = f"{r['side']} {num(r['size'])}"
    if r["limit"] is not None:
        out += f" @ {num(r['limit'])}"
    if r["filled"] is not None:
        out += f" filled {num(r['filled'])} @ {num(r['avg_price'])}"
    return out


def pct(v) -> str:
    return DASH if v is None else f"{v}%"


def clock(ts_ns) -> str:
    if not ts_ns:
        return DASH
    return time.strftime("%H:%M:%SZ", time.gmtime(ts_ns / 1e9))


def _table(title, cols, rows, width, styles=None, caption=None):
    """cols: (header, justify, priority, flex[, cap]). Columns of priority 3, then 2, are dropped
    (last first) until the rest fits in ``width``; fixed columns get their content's width up to
    ``cap`` (24 unless given), flex columns share what is left; what does not fit is cut with an
    ellipsis."""
    caps = [c[4] if len(c) > 4 else (10 if c[3] else 24) for c in cols]
    natural = [min(caps[i], max([len(c[0])] + [len(r[i]) for r in rows])) for i, c in enumerate(cols)]
    keep = list(range(len(cols)))
    for prio in (3, 2):
        for i in reversed(range(len(cols))):
            if sum(natural[k] + 3 for k in keep) <= width:
                break
            if cols[i][2] == prio and i in keep:
                keep.remove(i)
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, expand=True,
              pad_edge=False, show_edge=False, padding=(0, 1), caption=caption, caption_justify="left")
    for i in keep:
        h, j, _, flex = cols[i][:4]
        if flex:
            t.add_column(h, justify=j, no_wrap=True, overflow="ellipsis", ratio=1, min_width=natural[i])
        else:
            t.add_column(h, justify=j, no_wrap=True, overflow="ellipsis", min_width=natural[i],
                         max_width=max(natural[i], caps[i]))
    for n, r in enumerate(rows):
        t.add_row(*[r[i] for i in keep], style=styles[n] if styles else None)
    return t


def banner(s: dict) -> Panel:
    ks, tr = s.get("killswitch"), s.get("trading")
    state = (tr or {}).get("state")
    lines = []
    if ks is not None and ks.get("engaged"):
        style = "bold white on red"
        head = f"KILL SWITCH ENGAGED · trading {fmt(state)}"
        lines.append(f"{fmt(ks.get('source'))}: {fmt(ks.get('reason'))}")
        lines.append(f"since {clock(ks.get('since_ns'))} ({dur(ks.get('since_s'))} ago)")
    elif ks is None and state is None:
        style = "bold black on yellow"
        head = "TRADING STATE UNKNOWN · no word from risk yet"
    elif state == "HALTED":
        style = "bold white on red"
        head = "TRADING HALTED · kill switch released"
    elif state == "REDUCING":
        style = "bold black on yellow"
        head = "TRADING REDUCING · only position-shrinking orders · kill switch released"
    else:
        style = "bold black on green"
        head = f"TRADING {fmt(state)} · kill switch released"
    if tr and tr.get("reason") and not (ks and ks.get("engaged")):
        lines.append(f"state reason: {tr['reason']}")
    if not s.get("risk_up"):
        style = "bold white on red"
        head = "RISK DOWN · orders fail closed · last known: " + head
    blockers = (s.get("risk") or {}).get("release_blockers")
    if blockers:
        lines.append("release blocked: " + "; ".join(blockers))
    text = Text(head, style=style)
    for ln in lines:
        text.append("\n" + ln)
    return Panel(text, style=style, box=box.HEAVY, padding=(0, 1))


def nodes_table(s, width):
    rows, styles = [], []
    for n in s["nodes"]:
        c = " ".join(f"{k.split('.', 1)[-1] if k.startswith(('exec.', 'risk.')) else k}={v}"
                     for k, v in n["counters"].items())
        up = "up" if n["up"] else f"DOWN ({n['why']})" if n.get("why") else "DOWN"
        rows.append([n["node"], up, fmt(n["state"]), fmt(n["pid"]), dur(n["uptime_s"]), fmt(n["restarts"]),
                     dur(n["heartbeat_age_s"]), c or DASH])
        styles.append(None if n["up"] else "bold red")
    return _table("NODES", [("NODE", "left", 1, False), ("UP", "left", 1, False, 32),
                            ("STATE", "left", 3, False), ("PID", "right", 3, False),
                            ("UPTIME", "right", 1, False), ("RESTARTS", "right", 1, False),
                            ("HB AGE", "right", 1, False), ("COUNTERS", "left", 2, True)],
                  rows, width, styles)


def feeds_table(s, width):
    rows, styles = [], []
    for f in s["feeds"]:
        rows.append([f["product"], fmt(f["state"]), dur(f["last_msg_age_s"]), fmt(f["gaps"]), fmt(f["reconnects"]),
                     fmt(f["stale"]), fmt(f["reason"])])
        styles.append("bold red" if f["healthy"] is False else None)
    if not rows:
        rows, styles = [["(none heard)"] + [""] * 6], None
    tot = s.get("feed_totals") or {}
    cap = " ".join(f"{k}={v}" for k, v in tot.items()
                   if k in ("feed_gaps", "feed_reconnects", "feed_stale", "feed_connections"))
    return _table("FEEDS", [("PRODUCT", "left", 1, False), ("STATE", "left", 1, False),
                            ("LAST MSG", "right", 1, False), ("GAPS", "right", 1, False),
                            ("RECONN", "right", 1, False), ("STALE", "right", 2, False),
                            ("REASON", "left", 3, True)],
                  rows, width, styles, caption=("marketdata: " + cap) if cap else None)


def risk_table(s, width):
    r = s.get("risk") or {}
    title = f"RISK · state age {dur(r.get('age_s'))}"
    if r.get("version") is not None:
        title += f" · v{r['version']}"
    if r.get("execution_view_age_ms") is not None:
        title += f" · execution's view {dur(r['execution_view_age_ms'] / 1000)}"
    rows = [[p["product"], fmt(p["mid"]), fmt(p["band_low"]), fmt(p["band_high"]), fmt(p["method"]),
             num(p["position"]), pct(p["position_pct"]), money(p["exposure"]), pct(p["exposure_pct"])]
            for p in r.get("products") or []]
    if not rows:
        rows = [["(nothing heard)"] + [""] * 8]
    lim = r.get("limits") or {}
    cap = (f"limits used: gross {pct(lim.get('gross_exposure_pct'))} · daily loss {pct(lim.get('daily_loss_pct'))}"
           f" · drawdown {pct(lim.get('drawdown_pct'))} · rejects {pct(lim.get('rejects_pct'))}")
    return _table(title, [("PRODUCT", "left", 1, False), ("MID", "right", 3, False),
                          ("BAND LOW", "right", 1, False), ("BAND HIGH", "right", 1, False),
                          ("METHOD", "left", 3, False), ("POSITION", "right", 2, False),
                          ("POS %", "right", 1, False), ("EXPOSURE", "right", 2, False),
                          ("EXPO %", "right", 1, False)], rows, width, caption=cap)


def positions_table(s, width):
    rows = [[p["product"], num(p["size"]), money(p["avg_cost"]), money(p["mark"]), money(p["unrealized"]),
             money(p["realized"])] for p in s["positions"]]
    if not rows:
        rows = [["(none)"] + [""] * 5]
    p = s.get("pnl")
    if p is None:
        cap = f"PnL: realized {DASH} · unrealized {DASH} · daily {DASH} · equity {DASH}"
    else:
        cap = (f"PnL: realized {money(p['realized'])} · unrealized {money(p['unrealized'])} · "
               f"daily {money(p['daily'])} · equity {money(p['equity'])}")
    return _table("POSITIONS", [("PRODUCT", "left", 1, False), ("SIZE", "right", 1, False),
                                ("AVG COST", "right", 1, False), ("MARK", "right", 1, False),
                                ("UNREAL", "right", 1, False), ("REAL", "right", 2, False)],
                  rows, width, caption=cap)


def orders_table(s, width):
    rows = [[o["id"], o["product"], o["side"], num(o["size"]), o["type"], num(o["limit"]), num(o["filled"]),
             o["status"]] for o in s["orders"]]
    if not rows:
        rows = [["(none)"] + [""] * 7]
    return _table("WORKING ORDERS", [("ID", "left", 1, False), ("PRODUCT", "left", 1, False),
                                     ("SIDE", "left", 1, False), ("SIZE", "right", 1, False),
                                     ("TYPE", "left", 3, False), ("LIMIT", "right", 1, False),
                                     ("FILLED", "right", 2, False), ("STATUS", "left", 2, False)],
                  rows, width)


def recent_table(s, width):
    rows, styles = [], []
    for r in reversed(s["recent"]):
        rows.append([clock(r["ts_ns"]), r["id"], r["kind"], r["product"], what(r), fmt(r["code"]), fmt(r["reason"])])
        styles.append("red" if r["kind"] in ("refusal", "REJECTED") else None)
    if not rows:
        rows, styles = [["", "(none yet)"] + [""] * 5], None
    return _table("ORDER EVENTS AND REFUSALS", [("TIME", "left", 2, False), ("ID", "left", 1, False),
                                                ("EVENT", "left", 1, False), ("PRODUCT", "left", 2, False),
                                                ("WHAT", "left", 3, False, 36), ("CODE", "left", 1, False),
                                                ("REASON", "left", 2, True)], rows, width, styles)


def alerts_table(s, width):
    rows, styles = [], []
    for a in reversed(s["alerts"]):
        rows.append([clock(a["ts_ns"]), a["severity"] + (" (resolved)" if a["resolved"] else ""), a["title"],
                     ",".join(a["channels"]) or DASH])
        styles.append("red" if a["severity"] == "critical" and not a["resolved"] else None)
    if not rows:
        rows, styles = [["", "", "(none since top started)", ""]], None
    cap = None
    if s.get("alerts_firing") is not None:
        cap = "firing: " + (", ".join(s["alerts_firing"]) or "none")
    return _table("ALERTS", [("TIME", "left", 1, False), ("SEVERITY", "left", 1, False),
                             ("TITLE", "left", 1, True), ("SENT TO", "left", 2, False)],
                  rows, width, styles, caption=cap)


def footer(s, prompt="", note="", width=200) -> Text:
    b = s.get("bus") or {}
    t = Text(overflow="fold")
    if prompt:
        t.append(prompt + "\n", style="bold reverse")
    if note:
        t.append(note + "\n", style="bold")
    if s.get("message"):
        t.append(s["message"] + "\n", style="bold")
    line = f"{KEYS_HELP} · filter: {s.get('filter') or 'all'}"
    bus = f" · bus {b.get('events', 0)} events, {b.get('missing', 0)} missed"
    if len(line) + len(bus) + 12 <= width:
        line += bus
    t.append(line + f" · {clock(s.get('ts_ns'))}", style="dim")
    return t


def _pair(a, b):
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(a, b)
    return grid


def render_screen(s: dict, console: Console, prompt: str = "", note: str = ""):
    """The live screen: ``render()`` cut to the terminal's height, with the footer (keys, the
    prompt being typed, the last action's outcome) pinned to the bottom rows so that it never
    scrolls out of a short terminal."""
    width, height = console.size
    foot = footer(s, prompt, note, width)
    n = len(console.render_lines(foot, console.options.update(width=width), pad=False))
    layout = Layout()
    layout.split_column(Layout(_body(s, width), name="body"), Layout(foot, name="footer", size=n))
    return layout


def render(s: dict, width: int, prompt: str = "", note: str = ""):
    """The whole screen for a terminal ``width`` columns wide."""
    return Group(_body(s, width), footer(s, prompt, note, width))


def _body(s, width):
    if width >= WIDE:
        half = (width - 2) // 2
        body = [nodes_table(s, width),
                _pair(Group(feeds_table(s, half), risk_table(s, half), alerts_table(s, half)),
                      Group(positions_table(s, half), orders_table(s, half))),
                recent_table(s, width)]
    else:
        body = [nodes_table(s, width), feeds_table(s, width), risk_table(s, width), positions_table(s, width),
                orders_table(s, width), recent_table(s, width), alerts_table(s, width)]
    return Group(banner(s), *body)


def render_text(s: dict, width: int = 120) -> str:
    """The screen as plain text (``--once``): no colours, no cursor movement."""
    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False,
                  emoji=False, legacy_windows=False)
    con.print(render(s, width))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
