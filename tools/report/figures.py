"""The performance figures of one run, computed from the store's events alone.

``compute(files)`` reads store files (``proto.jsonl.read``, the reader ``tools.export`` uses) once,
in file order, and returns a ``Run``: the figures of the whole run (``run.total``), of each strategy
(``run.strategies``) and of each product (``run.products``), plus the series the charts draw.

Conventions (also stated in the report and in docs/strategies.md):

* **Clock: market time.** A market-data event (tick, trade, book) is at its ``ts_event``; every
  other event is at the latest market time seen before it in the store (so a replay keeps the
  recording's clock, whatever its speed). Events before the first market event take its time.
* **Money is exact** (``Decimal``): PnL, fees, equity, drawdown in money, turnover. Ratios (return,
  Sharpe, Sortino, win rate, ...) are floats.
* **Equity** = starting equity + net PnL, marked to the mid of each tick (or book) as it arrives.
  Net PnL is cash flow: sell proceeds - buy costs - fees + open quantity x mark (no division: exact).
  Gross PnL = net PnL + fees.
* **Starting equity**, first found of: ``--starting-equity``; the first ``pnl`` event when it comes
  before any fill (its equity, which includes earlier sessions' PnL and open positions); the
  invariant ``equity - realized - unrealized`` of any ``pnl`` event (execution.starting_equity of the
  run); ``execution.starting_equity`` of the loaded config (``TICKMESH_CONF`` or conf/mesh.toml).
* **Means** of money (expectancy, average win, average loss) are exact up to 10 decimals, else
  rounded half-even to 10 decimals.
* **Trades** are round trips of one strategy in one product: from flat to flat (a fill that flips
  the position closes one trade and opens the next; its fee is split pro rata). A trade's PnL is
  its cash flow, fees included. A position open at the end is an open trade: counted apart, its
  PnL (marked) is in net PnL, not in win rate, profit factor or expectancy.
* **Sharpe and Sortino**: simple returns of equity over fixed intervals of market time (the largest
  of 1 day, 1 hour, 5 minutes, 1 minute, 1 second giving at least 30 complete intervals; only
  complete intervals count), risk-free rate 0, annualised for crypto's 365-day year:
  Sharpe = mean / stdev (n-1) x sqrt(intervals per year); Sortino = mean / downside deviation x
  sqrt(intervals per year), downside deviation = sqrt(mean(min(r, 0)^2)) over all intervals
  (empyrical's definitions).
* **Maximum drawdown**: the largest fall of equity from its running peak, over every equity change
  (never downsampled); % of that peak; start = the peak's time, trough, recovery = first time
  equity is back at the peak (None: not recovered by the end). Calmar = the run's return scaled
  linearly to 365 days / the maximum drawdown fraction.
* Strategies and products are each measured on the account's starting equity (as if they alone
  had traded it); their net PnLs add up to the whole run's.
"""
import math
import re
from array import array
from decimal import Context, Decimal, ROUND_HALF_EVEN, localcontext
from pathlib import Path

from proto import jsonl

NS = 1_000_000_000
YEAR_S = 365 * 86_400
ZERO = Decimal(0)
CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)    # wide: sums of many exact products stay exact
INTERVALS = ((86_400, "1 day"), (3_600, "1 hour"), (300, "5 minutes"), (60, "1 minute"), (1, "1 second"))
MIN_RETURNS = 30
AVG_QUANTUM = Decimal("1e-10")
MARKET_TYPES = frozenset({"Tick", "Trade", "Book"})
OPENING = "(opening)"       # the strategy of a position the recording started with
UNKNOWN = "(unknown)"       # a fill whose order names no strategy


class ReportError(Exception):
    """Nothing to report on (no store files, unreadable file): the message says what."""


# --- store files -------------------------------------------------------------------------------

def _open_ts(path: Path) -> int:
    try:
        with open(path, "r", encoding="utf-8") as f:
            head = f.readline(4096)
        m = re.match(r'\{"type":"_open","ts":(\d+)', head)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def store_files(paths) -> list:
    """The store files of ``paths``: a file is itself; a directory gives ``<dir>/store/*.jsonl``
    (a run's state dir), else ``<dir>/*.jsonl``, else every ``*.jsonl`` below it. Sorted by the
    time in their ``_open`` header, then by name (rotation order)."""
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted((p / "store").glob("*.jsonl")) or sorted(p.glob("*.jsonl")) or sorted(p.rglob("*.jsonl"))
            if not found:
                raise ReportError(f"{p}: no store files (*.jsonl) in it")
            out.extend(found)
        else:
            raise ReportError(f"{p}: no such file or directory")
    return sorted(dict.fromkeys(out), key=lambda f: (_open_ts(f), f.name, str(f)))


# --- positions and round trips ------------------------------------------------------------------

class Trade:
    """One closed (or, at the end, open) round trip of a strategy in a product."""
    __slots__ = ("strategy", "product", "direction", "open_ns", "close_ns", "pnl", "fees", "fills", "notional")

    def __init__(self, strategy, product, direction, open_ns):
        self.strategy, self.product, self.direction, self.open_ns = strategy, product, direction, open_ns
        self.close_ns = None
        self.pnl = ZERO          # cash flow so far (fees included); for an open trade + qty x mark
        self.fees = ZERO
        self.fills = 0
        self.notional = ZERO


class Ledger:
    """One position (a strategy's in a product, or the account's): quantity, cash flow, average
    cost and realised PnL the way execution computes them, and the current round trip."""
    __slots__ = ("strategy", "product", "qty", "cash", "avg_cost", "realized", "fees", "trade", "closed")

    def __init__(self, strategy, product):
        self.strategy, self.product = strategy, product
        self.qty = ZERO
        self.cash = ZERO        # - buys + sells - fees
        self.avg_cost = ZERO
        self.realized = ZERO    # fees included (execution's definition)
        self.fees = ZERO
        self.trade = None       # the open round trip
        self.closed = []        # closed round trips

    def apply(self, side: str, price: Decimal, size: Decimal, fee: Decimal, t: int) -> list:
        """Apply one fill (inside ``localcontext(CTX)``); returns the trades it closed."""
        signed = size if side == "BUY" else -size
        q = self.qty
        self.cash += -signed * price - fee
        self.fees += fee
        self.realized -= fee
        # average cost and realised PnL: execution's arithmetic (nodes/execution/positions.py)
        if q == 0 or (q > 0) == (signed > 0):
            new_q = q + signed
            self.avg_cost = (self.avg_cost * abs(q) + price * size) / abs(new_q)
        else:
            closed = min(abs(q), size)
            self.realized += (price - self.avg_cost) * closed * (1 if q > 0 else -1)
            new_q = q + signed
            if new_q == 0:
                self.avg_cost = ZERO
            elif (new_q > 0) != (q > 0):
                self.avg_cost = price
        self.qty = new_q if new_q != 0 else ZERO
        # round trips
        done = []
        if q != 0 and (new_q == 0 or (new_q > 0) != (q > 0)):        # closes (and maybe flips)
            part = abs(q)
            fee_c = fee if new_q == 0 else fee * part / size
            tr = self.trade
            tr.pnl += (part if signed > 0 else -part) * -price - fee_c
            tr.fees += fee_c
            tr.fills += 1
            tr.notional += part * price
            tr.close_ns = t
            self.closed.append(tr)
            done.append(tr)
            self.trade = None
            if new_q != 0:                                            # the rest opens a new one
                rest = size - part
                tr = self.trade = Trade(self.strategy, self.product, "LONG" if new_q > 0 else "SHORT", t)
                tr.pnl = (rest if signed > 0 else -rest) * -price - (fee - fee_c)
                tr.fees = fee - fee_c
                tr.fills = 1
                tr.notional = rest * price
        else:                                                         # opens or changes one
            if self.trade is None:
                self.trade = Trade(self.strategy, self.product, "LONG" if signed > 0 else "SHORT", t)
            tr = self.trade
            tr.pnl += -signed * price - fee
            tr.fees += fee
            tr.fills += 1
            tr.notional += size * price
        return done


def mean_money(total: Decimal, n: int):
    """``total / n``: exact when it has at most 10 decimals, else rounded half-even to 10 (a mean
    is the one money figure that is a division); None for n = 0."""
    if not n:
        return None
    with localcontext(CTX):
        q = total / n
    return q if q.as_tuple().exponent >= -10 else q.quantize(AVG_QUANTUM, rounding=ROUND_HALF_EVEN)


# --- the figures of one view (the run, a strategy, a product) -------------------------------------

class Track:
    """Net PnL of one view of the run, updated on every change, with its streaming figures. Money
    is tracked as net PnL (equity - starting equity), so the starting equity may be settled at the
    end of the pass (``s0``)."""

    def __init__(self, name: str, kind: str, t0: int):
        self.name, self.kind = name, kind
        self.s0 = None                  # starting equity, set when the pass is done
        self.t0 = t0
        self.net = ZERO                 # net PnL now (exact)
        self.peak, self.peak_ns = ZERO, t0
        self.dd = ZERO                  # the largest fall of net PnL (= of equity) from its running peak
        self.dd_peak = ZERO             # the peak it fell from (net PnL)
        self.dd_start = self.dd_trough = self.dd_recovery = None
        self._in_worst = False          # inside the worst episode so far (its recovery still to come)
        self.grid = array("d")          # net PnL at the end of each second since t0 (for returns)
        self.ts = array("q")            # every change of net PnL (for drawing)
        self.pnl = array("d")
        self.fees = ZERO
        self.turnover = ZERO
        self.fills = 0
        self.trades = []                # closed round trips
        self.gross_exposure = ZERO      # sum |qty| x mark of this view's positions, now
        self.max_exposure = ZERO
        self.max_qty = {}               # product -> max |qty| (base units)
        self.open_ns = 0                # time in the market so far
        self._open_since = None
        self.refusals = {}              # risk refusals by code (risk.decision, approved false)
        self.rejections = {}            # order rejections by code (order.rejected)
        self.orders = 0                 # orders created (order.new)

    @property
    def equity(self) -> Decimal:
        return self.s0 + self.net

    def observe(self, t: int, delta: Decimal):
        """Apply a change of net PnL at time ``t`` (exact); update drawdown, grid and series."""
        if t < self.t0:
            t = self.t0
        k = (t - self.t0) // NS
        grid = self.grid
        if len(grid) < k:
            grid.extend([float(self.net)] * (k - len(grid)))
        v = self.net = self.net + delta
        if v >= self.peak:
            if self._in_worst:
                self.dd_recovery = t
                self._in_worst = False
            if v > self.peak:
                self.peak, self.peak_ns = v, t
        elif self.peak - v > self.dd:
            self.dd, self.dd_peak = self.peak - v, self.peak
            self.dd_start, self.dd_trough, self.dd_recovery = self.peak_ns, t, None
            self._in_worst = True
        self.ts.append(t)
        self.pnl.append(float(v))

    def exposure(self, t: int, d_gross: Decimal, flat: bool):
        self.gross_exposure += d_gross
        if self.gross_exposure > self.max_exposure:
            self.max_exposure = self.gross_exposure
        if flat and self._open_since is not None:
            self.open_ns += t - self._open_since
            self._open_since = None
        elif not flat and self._open_since is None:
            self._open_since = t

    def finish(self, t_end: int, s0: Decimal):
        self.s0 = s0
        k_end = (t_end - self.t0) // NS + 1
        if len(self.grid) < k_end:
            self.grid.extend([float(self.net)] * (k_end - len(self.grid)))
        if self._open_since is not None:
            self.open_ns += t_end - self._open_since
            self._open_since = None

    # --- figures ---------------------------------------------------------------------------------
    def returns(self, interval_s: int, duration_s: float) -> list:
        """Simple returns of equity over the complete ``interval_s`` intervals since t0."""
        s0 = float(self.s0)
        n = int(duration_s // interval_s)
        pts = [s0] + [s0 + self.grid[j * interval_s - 1] for j in range(1, n + 1)]
        return [(b / a - 1.0) if a else 0.0 for a, b in zip(pts, pts[1:])]

    def figures(self, run) -> dict:
        """Every figure of this view: money as Decimal, ratios as float (None: undefined)."""
        with localcontext(CTX):
            dur_s = run.duration_s
            s0 = self.s0
            closed = self.trades
            wins = [tr.pnl for tr in closed if tr.pnl > 0]
            losses = [tr.pnl for tr in closed if tr.pnl < 0]
            sum_w, sum_l = sum(wins, ZERO), sum(losses, ZERO)
            closed_pnl = sum((tr.pnl for tr in closed), ZERO)
            ret = float(self.net / s0) if s0 else None
            r = self.returns(run.interval_s, dur_s)
            sharpe = sortino = None
            if len(r) >= 2:
                mean = sum(r) / len(r)
                sd = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
                ann = math.sqrt(YEAR_S / run.interval_s)
                if sd > 0:
                    sharpe = mean / sd * ann
                down = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / len(r))
                if down > 0:
                    sortino = mean / down * ann
            peak_eq = s0 + self.dd_peak
            dd_pct = float(self.dd / peak_eq) if self.dd and peak_eq > 0 else 0.0
            calmar = None
            if dd_pct > 0 and ret is not None and dur_s > 0:
                calmar = ret * (YEAR_S / dur_s) / dd_pct
            open_trades = [tr for tr in run.open_trades if self._owns(tr)]
            return {
                "starting_equity": s0,
                "ending_equity": self.equity,
                "net_pnl": self.net,
                "gross_pnl": self.net + self.fees,
                "fees": self.fees,
                "return": ret,
                "sharpe": sharpe,
                "sortino": sortino,
                "returns_used": len(r),
                "max_drawdown": self.dd,
                "max_drawdown_pct": dd_pct,
                "drawdown_start_ns": self.dd_start,
                "drawdown_trough_ns": self.dd_trough,
                "drawdown_recovery_ns": self.dd_recovery,
                "calmar": calmar,
                "fills": self.fills,
                "trades": len(closed),
                "open_trades": len(open_trades),
                "open_pnl": sum((tr.pnl for tr in open_trades), ZERO),
                "closed_pnl": closed_pnl,
                "wins": len(wins),
                "losses": len(losses),
                "win_rate": len(wins) / len(closed) if closed else None,
                "profit_factor": float(sum_w / -sum_l) if losses else None,
                "expectancy": mean_money(closed_pnl, len(closed)),
                "avg_win": mean_money(sum_w, len(wins)),
                "avg_loss": mean_money(sum_l, len(losses)),
                "turnover": self.turnover,
                "turnover_x": float(self.turnover / s0) if s0 else None,
                "time_in_market_s": self.open_ns / NS,
                "time_in_market": (self.open_ns / NS / dur_s) if dur_s > 0 else None,
                "max_exposure": self.max_exposure,
                "max_position": dict(sorted(self.max_qty.items())),
                "orders": self.orders,
                "risk_refusals": dict(sorted(self.refusals.items())),
                "order_rejections": dict(sorted(self.rejections.items())),
            }

    def _owns(self, tr) -> bool:
        return self.kind == "total" or (self.kind == "strategy" and tr.strategy == self.name) \
            or (self.kind == "product" and tr.product == self.name)


# --- the run --------------------------------------------------------------------------------------

class Run:
    """Everything the report shows about one run (see ``compute``)."""

    def __init__(self):
        self.files = []
        self.name = ""
        self.t0 = self.t_end = 0
        self.duration_s = 0.0
        self.interval_s, self.interval_name = 1, "1 second"
        self.start_equity = None
        self.equity_source = ""
        self.total = None
        self.strategies = {}       # name -> Track
        self.products = {}         # name -> Track
        self.open_trades = []
        self.closed_trades = []
        self.events = 0
        self.counts = {}           # type tag -> events
        self.gaps = []             # _gap lines
        self.lags = []             # _lag lines
        self.unclosed_files = []   # files without a _close line (cut by a crash, or still open)
        self.prices = {}           # product -> (array ts, array mid)
        self.bands = {}            # product -> dict of arrays: ts, low, high, stddev, ewma, atr; method
        self.fill_marks = []       # (t, product, side, price, size, strategy)
        self.positions = {}        # product -> [(t, account qty)]
        self.killswitch = []       # [start, end, reason/source]: end None = still engaged at the end
        self.states = []           # [start, end, state]
        self.opening = {}          # product -> qty the recording started with
        self.execution_pnl = None  # the last pnl event (execution's own figures)
        self.account_realized = ZERO
        self.account_fees = ZERO
        self.account_unrealized = ZERO
        self.marks = {}
        self.first_pnl = None      # (the first pnl event, whether it came before any fill)
        self.fills_before_pnl = False
        self.killswitch_engaged_at_end = False

    def figures(self) -> dict:
        return {"total": self.total.figures(self),
                "strategies": {k: t.figures(self) for k, t in sorted(self.strategies.items())},
                "products": {k: t.figures(self) for k, t in sorted(self.products.items())}}

    def killswitch_s(self) -> float:
        return sum(((e if e is not None else self.t_end) - s) for s, e, _ in self.killswitch) / NS

    def state_s(self) -> dict:
        out = {}
        for s, e, st in self.states:
            out[st] = out.get(st, 0.0) + ((e if e is not None else self.t_end) - s) / NS
        return out


def choose_interval(duration_s: float) -> tuple:
    """(seconds, name): the largest interval giving at least MIN_RETURNS complete intervals."""
    for sec, name in INTERVALS:
        if duration_s // sec >= MIN_RETURNS:
            return sec, name
    return INTERVALS[-1]


def interval_by_name(text: str) -> tuple:
    t = text.strip().lower()
    table = {"1d": 0, "day": 0, "1h": 1, "hour": 1, "5m": 2, "1m": 3, "minute": 3, "1s": 4, "second": 4}
    if t not in table:
        raise ReportError(f"--interval: expected one of 1d, 1h, 5m, 1m, 1s, got {text!r}")
    return INTERVALS[table[t]]


def _config_equity():
    try:
        from nodes import config as _config
        cfg = _config.load(None)
    except Exception as e:   # noqa: BLE001 - any failure here only means no config to fall back on
        raise ReportError(f"no pnl event in the store and no config to read execution.starting_equity from ({e}); "
                          "give --starting-equity") from None
    return (Decimal(cfg.section("execution").starting_equity),
            f"execution.starting_equity of {cfg.path} (the store holds no pnl event)")


def _strategy_of_coid(coid: str) -> str:
    head, sep, _ = coid.partition("-")
    return head if sep and head else UNKNOWN


def _has_ticks(files) -> bool:
    """True if the files hold ticks (a byte scan of each file's first 4 MB)."""
    for f in files:
        with open(f, "rb") as fh:
            if b'{"topic":"md.tick.' in fh.read(1 << 22):
                return True
    return False


def _read(files, run):
    """Envelopes with their report time, in store order (see the module's clock convention).
    Market trades, and books when there are ticks, are not read: ticks carry the clock and the
    marks (a day of level2 books would take most of the time for nothing)."""
    clock = None
    pending = []
    # what no figure or chart reads: risk's snapshots, execution's exposure, feed statuses, and
    # order events other than NEW and REJECTED (fills and positions carry the rest)
    skip = ("md.trade.", "md.status.", "risk.snapshot", "risk.exposure", "order.accepted",
            "order.partially_filled", "order.filled", "order.cancelled")
    if _has_ticks(files):
        skip += ("md.book.",)
    for f in files:
        closed = False
        for item in jsonl.read(f, with_meta=True, skip=skip):
            if type(item) is dict:
                ty = item.get("type")
                if ty == "_gap":
                    run.gaps.append(item)
                elif ty == "_lag":
                    run.lags.append(item)
                elif ty == "_close":
                    closed = True
                continue
            if item.msg.TAG in MARKET_TYPES:
                if clock is None or item.ts_event > clock:
                    clock = item.ts_event
                if pending:
                    for env in pending:
                        yield clock, env
                    pending = []
            if clock is None:
                pending.append(item)
                continue
            yield clock, item
        if not closed:
            run.unclosed_files.append(str(f))
    for env in pending:          # a store with no market data: the events' own times
        yield env.ts_event, env


def compute(paths, *, starting_equity=None, interval: str = None, name: str = None) -> Run:
    """Read the store files of ``paths`` (see ``store_files``) once and compute the run's figures."""
    files = store_files(paths)
    run = Run()
    run.files = [str(f) for f in files]
    run.name = name or (str(paths) if isinstance(paths, (str, Path)) else ", ".join(map(str, paths)))
    if interval:
        interval_by_name(interval)          # a bad name fails before the pass
    _replay(run, _read(files, run))
    run.duration_s = (run.t_end - run.t0) / NS
    run.interval_s, run.interval_name = interval_by_name(interval) if interval else choose_interval(run.duration_s)
    if starting_equity is not None:
        s0, src = Decimal(starting_equity), "--starting-equity"
    elif run.first_pnl is not None:
        p, before_fills = run.first_pnl
        with localcontext(CTX):
            base = p.equity - p.realized - p.unrealized
            carried = p.realized + p.unrealized
        if before_fills:
            s0 = p.equity
            src = (f"the first pnl event's equity, before any fill (execution.starting_equity {base}"
                   + (f" + {carried} carried from earlier sessions" if carried else "") + ")")
        else:
            s0 = base
            src = "execution.starting_equity, from the first pnl event (equity - realized - unrealized)"
    else:
        s0, src = _config_equity()
    run.start_equity, run.equity_source = s0, src
    for tr in (run.total, *run.strategies.values(), *run.products.values()):
        tr.finish(run.t_end, s0)
    return run


def _replay(run, events):
    events = iter(events)
    first = next(events, None)
    if first is None:
        raise ReportError(f"{run.name}: the store files hold no events")
    t0 = run.t0 = run.t_end = first[0]
    total = run.total = Track("run", "total", t0)
    strategies, products = run.strategies, run.products
    ledgers = {}               # (strategy, product) -> Ledger
    account = {}               # product -> Ledger (the account's position, execution's arithmetic)
    by_product = {}            # product -> [Ledger]
    coid_strategy = {}
    marks = run.marks
    fills_seen = set()
    traded = set()             # products with a fill (or an opening position)
    ks_open = None
    state_open = [t0, None, "ACTIVE"]        # assumed until the first risk.state says otherwise
    run.states.append(state_open)
    saw_state = False

    def strat_track(s):
        tr = strategies.get(s)
        if tr is None:
            tr = strategies[s] = Track(s, "strategy", t0)
        return tr

    def prod_track(p):
        tr = products.get(p)
        if tr is None:
            tr = products[p] = Track(p, "product", t0)
        return tr

    def do_fill(t, strategy, product, side, price, size, fee, virtual=False):
        lg = ledgers.get((strategy, product))
        if lg is None:
            lg = ledgers[(strategy, product)] = Ledger(strategy, product)
            by_product.setdefault(product, []).append(lg)
        acct = account.get(product)
        if acct is None:
            acct = account[product] = Ledger("", product)
        mark = marks.get(product)
        if mark is None:
            mark = marks[product] = price
        traded.add(product)
        st, pt = strat_track(strategy), prod_track(product)
        old_q, old_aq = lg.qty, acct.qty
        done = lg.apply(side, price, size, fee, t)
        acct.apply(side, price, size, fee, t)
        signed = size if side == "BUY" else -size
        delta = -signed * price - fee + signed * mark
        for tr in (total, st, pt):
            tr.observe(t, delta)
            if not virtual:
                tr.fees += fee
                tr.turnover += price * size
                tr.fills += 1
                tr.trades.extend(done)
        if not virtual:
            run.closed_trades.extend(done)
        d_acct = (abs(acct.qty) - abs(old_aq)) * mark
        total.exposure(t, d_acct, all(a.qty == 0 for a in account.values()))
        pt.exposure(t, d_acct, acct.qty == 0)
        st.exposure(t, (abs(lg.qty) - abs(old_q)) * mark, _flat(ledgers, strategy))
        for tr, q in ((total, acct.qty), (pt, acct.qty), (st, lg.qty)):
            if abs(q) > tr.max_qty.get(product, ZERO) or product not in tr.max_qty:
                tr.max_qty[product] = abs(q)
        run.positions.setdefault(product, [(t0, ZERO)]).append((t, acct.qty))
        if not virtual:
            run.fill_marks.append((t, product, side, float(price), float(size), strategy))

    def do_mark(t, product, mid):
        old = marks.get(product)
        marks[product] = mid
        if old is None or old == mid or product not in traded:
            return
        diff = mid - old
        acct = account[product]
        if acct.qty:
            d, dg = acct.qty * diff, abs(acct.qty) * diff
            pt = products[product]
            total.observe(t, d)
            pt.observe(t, d)
            total.exposure(t, dg, False)
            pt.exposure(t, dg, False)
        for lg in by_product.get(product, ()):
            if lg.qty:
                st = strategies[lg.strategy]
                st.observe(t, lg.qty * diff)
                st.exposure(t, abs(lg.qty) * diff, False)

    def strategy_of(coid):
        return coid_strategy.get(coid) or _strategy_of_coid(coid)

    prices, counts = run.prices, run.counts
    t = t0
    with localcontext(CTX):
        for t, env in _chain(first, events):
            m = env.msg
            tag = m.TAG
            if tag == "Tick":
                mid = (m.bid + m.ask) / 2 if m.bid > 0 and m.ask > 0 else m.price
                ts_a, px_a = prices.setdefault(m.product, (array("q"), array("d")))
                ts_a.append(t)
                px_a.append(float(mid))
                do_mark(t, m.product, mid)
            elif tag == "Book":
                if m.bids and m.asks:
                    do_mark(t, m.product, (m.bids[0][0] + m.asks[0][0]) / 2)
            elif tag == "Fill":
                if m.fill_id in fills_seen:
                    continue           # a republished fill counts once
                fills_seen.add(m.fill_id)
                if run.first_pnl is None:
                    run.fills_before_pnl = True
                do_fill(t, strategy_of(m.client_order_id), m.product, m.side, m.price, m.size, m.fee)
            elif tag == "Order":
                if m.strategy:
                    coid_strategy.setdefault(m.client_order_id, m.strategy)
                if m.status in ("NEW", "REJECTED"):
                    for tr in (total, strat_track(strategy_of(m.client_order_id)), prod_track(m.product)):
                        if m.status == "NEW":
                            tr.orders += 1
                        else:
                            tr.rejections[m.code] = tr.rejections.get(m.code, 0) + 1
            elif tag == "RiskDecision":
                if not m.approved:
                    for tr in (total, strat_track(strategy_of(m.client_order_id)), prod_track(m.product)):
                        tr.refusals[m.code] = tr.refusals.get(m.code, 0) + 1
            elif tag == "Position":
                if m.product not in traded and m.qty != 0:
                    # the recording starts with an open position: a virtual fill at its mark, no fee
                    run.opening[m.product] = m.qty
                    mark = marks.get(m.product) or m.mark
                    marks[m.product] = mark
                    do_fill(t, OPENING, m.product, "BUY" if m.qty > 0 else "SELL", mark, abs(m.qty), ZERO,
                            virtual=True)
                    account[m.product].avg_cost = m.avg_cost
                    account[m.product].realized = m.realized_pnl
                    account[m.product].fees = m.fees
            elif tag == "PnL":
                if run.first_pnl is None:
                    run.first_pnl = (m, not run.fills_before_pnl)
                run.execution_pnl = (t, m)
            elif tag == "KillSwitch":
                if m.engaged and ks_open is None:
                    ks_open = [t, None, f"{m.source}: {m.reason}".strip(": ")]
                    run.killswitch.append(ks_open)
                elif not m.engaged and ks_open is not None:
                    ks_open[1] = t
                    ks_open = None
            elif tag == "RiskState":
                if not saw_state and m.previous and m.previous != state_open[2]:
                    state_open[2] = m.previous       # what it was before its first change
                saw_state = True
                if m.state != state_open[2]:
                    state_open[1] = t
                    state_open = [t, None, m.state]
                    run.states.append(state_open)
            elif tag == "RiskBand":
                if m.band_high > 0 and m.band_low > 0:
                    b = run.bands.get(m.product)
                    if b is None:
                        b = run.bands[m.product] = {k: array("d") for k in
                                                    ("low", "high", "mid", "stddev", "ewma", "atr")}
                        b["ts"] = array("q")
                    b["ts"].append(t)
                    b["low"].append(float(m.band_low))
                    b["high"].append(float(m.band_high))
                    b["mid"].append(float(m.mid))
                    b["stddev"].append(m.stddev)
                    b["ewma"].append(m.ewma)
                    b["atr"].append(m.atr)
                    b["method"] = m.method
            counts[tag] = counts.get(tag, 0) + 1
            run.events += 1
        run.t_end = t_end = max(t, t0)
        for lg in ledgers.values():
            if lg.trade is not None:
                tr = lg.trade
                tr.pnl += lg.qty * marks[lg.product]      # marked at the last mid
                run.open_trades.append(tr)
        run.account_realized = sum((a.realized for a in account.values()), ZERO)
        run.account_fees = sum((a.fees for a in account.values()), ZERO)
        run.account_unrealized = sum(((marks[p] - a.avg_cost) * a.qty for p, a in account.items() if a.qty), ZERO)
        for pts in run.positions.values():
            pts.append((t_end, pts[-1][1]))
        if ks_open is not None:
            run.killswitch_engaged_at_end = True


def _chain(first, rest):
    yield first
    yield from rest


def _flat(ledgers, strategy) -> bool:
    return all(lg.qty == 0 for (s, _), lg in ledgers.items() if s == strategy)


def _sig(x, scale=1.0):
    return None if x is None else float(f"{x * scale:.6g}")


def exact(d) -> str:
    """A Decimal as its exact plain string, without trailing zeros (``0.84436280000`` -> ``0.8443628``)."""
    return format(d.normalize(CTX), "f") if d else "0"


def headline(run) -> dict:
    """The figures a trader reads first, JSON-ready (money as exact strings, ratios to 6 digits):
    what offline mode adds to its summary."""
    f = run.total.figures(run)
    return {
        "net_pnl": exact(f["net_pnl"]),
        "return_pct": _sig(f["return"], 100),
        "sharpe": _sig(f["sharpe"]),
        "sortino": _sig(f["sortino"]),
        "sharpe_interval": f"{run.interval_name} returns, 365-day year",
        "max_drawdown": exact(f["max_drawdown"]),
        "max_drawdown_pct": _sig(f["max_drawdown_pct"], 100),
        "win_rate_pct": _sig(f["win_rate"], 100),
        "closed_trades": f["trades"],
        "open_trades": f["open_trades"],
        "fees": exact(f["fees"]),
        "starting_equity": exact(run.start_equity),
    }
