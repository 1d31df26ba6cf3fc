"""``tickmesh history fetch``: Coinbase's public candles and market trades -> a store file to replay.

    tickmesh history fetch --product BTC-USD --start 2026-11-01 --end 2026-11-02 --out var/history/btc.jsonl
    python -m nodes.offline --source replay:var/history/btc.jsonl

See ``tools/history/fetch.py`` (requests, pagination, retries), ``derive.py`` (what is real and what
is derived) and ``storefile.py`` (the file and how a fetch resumes), and docs/marketdata.md,
"Historical data".
"""
import argparse
import datetime as _dt
import hashlib
import logging
import os
import re
import signal
import sys
import time
from decimal import Decimal, InvalidOperation

from .derive import BadData
from .fetch import GRANULARITY, MAX_TRADES, ApiError, Fetcher, PublicApi, chunk_seconds
from .storefile import HistoryFile, NotResumable

DEFAULT_BASE_URL = "api.coinbase.com"
ENV_BASE_URL = "COINBASE_REST_BASE_URL"       # like COINBASE_WS_URL for the WebSocket feed
ENV_CA_BUNDLE = "COINBASE_REST_CA_BUNDLE"
_PRODUCT = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")
_DATE = re.compile(r"^\d{4}-\d\d-\d\d$")
log = logging.getLogger("tickmesh.history")

EPILOG = f"""\
resuming: the file is written one chunk at a time (an hour of market, or one bucket when buckets
are longer): the chunk's events and then a checkpoint line, fsynced together. Run the same command
again with the same --out after an interruption (Ctrl-C, a crash, a lost connection) and it keeps
everything up to the last checkpoint, cuts off a partly written chunk, and continues from there:
no chunk is fetched or written twice. A later --end extends a finished file the same way. A file
for another product, granularity or --start is refused.

environment: {ENV_BASE_URL} (host[:port], as --base-url), {ENV_CA_BUNDLE} (as --ca-bundle).
Public endpoints need no API key; none is sent.
"""


class Usage(Exception):
    """A bad argument: one line, exit 2."""


def parse_when(text: str, what: str) -> int:
    """``2026-11-01`` (00:00 UTC) or an ISO time (``2026-11-01T12:00Z``; no zone = UTC) -> UNIX s."""
    s = text.strip()
    try:
        if _DATE.match(s):
            t = _dt.datetime.strptime(s, "%Y-%m-%d")
        else:
            t = _dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise Usage(f"{what}: expected a date (2026-11-01) or a UTC time (2026-11-01T12:00Z), got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(t.timestamp())


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def base_url_of(text: str) -> str:
    """``host[:port]`` (the SDK always builds ``https://{base_url}``); ``https://host`` is accepted."""
    s = text.strip().rstrip("/")
    if s.startswith("https://"):
        s = s[len("https://"):]
    if "://" in s:
        raise Usage(f"--base-url: the Coinbase SDK speaks https only: give host[:port], got {text!r}")
    if not s or "/" in s or " " in s:
        raise Usage(f"--base-url: expected host[:port], got {text!r}")
    return s


def resolve(a, env=None, now=None) -> dict:
    """Validated request from parsed arguments and the environment. Raises Usage."""
    env = os.environ if env is None else env
    now = int(time.time() if now is None else now)
    product = a.product.strip().upper()
    if not _PRODUCT.match(product):
        raise Usage(f"--product: expected a Coinbase product id such as BTC-USD, got {a.product!r}")
    g = GRANULARITY[a.granularity]
    start, end = parse_when(a.start, "--start"), parse_when(a.end, "--end")
    notes = []
    if start % g:
        start -= start % g
        notes.append(f"--start moved back to {iso(start)}, a {a.granularity} boundary")
    if end % g:
        end += g - end % g
        notes.append(f"--end moved on to {iso(end)}, a {a.granularity} boundary")
    if end <= start:
        raise Usage(f"--end ({iso(end)}) must be after --start ({iso(start)})")
    last = now - now % g            # the last bucket still open is not history yet
    if start >= last:
        raise Usage(f"--start ({iso(start)}) is not in the past: there is no history to fetch yet")
    if end > last:
        notes.append(f"--end is in the future or in the current bucket: fetching up to {iso(last)}")
        end = last
    if not 1 <= a.trades_limit <= MAX_TRADES:
        raise Usage(f"--trades-limit: between 1 and {MAX_TRADES}, got {a.trades_limit}")
    if a.retries < 0 or a.backoff_s < 0 or a.timeout_s <= 0 or a.rate < 0:
        raise Usage("--retries, --backoff-s and --rate must be >= 0, --timeout-s > 0")
    base = base_url_of(a.base_url or env.get(ENV_BASE_URL) or DEFAULT_BASE_URL)
    ca = a.ca_bundle or env.get(ENV_CA_BUNDLE) or None
    if ca and not os.path.isfile(ca):
        raise Usage(f"--ca-bundle: no such file: {ca}")
    return {"product": product, "granularity": a.granularity, "g": g, "start": start, "end": end,
            "base_url": base, "ca_bundle": ca, "notes": notes}


# --- progress ---------------------------------------------------------------------------------------

class Progress:
    """A bar on a terminal (rich), else a plain line at most once a second (and at the end)."""

    def __init__(self, mode: str, req: dict, stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "line"
        self.mode = mode
        self.req = req
        self._bar = self._task = None
        self._last = 0.0

    def _text(self, f) -> str:
        t, s = f.totals, f.api.stats
        return (f"{t['trades']} trades, {t['ticks']} ticks, {t['candles']} candles, {s['requests']} requests"
                + (f", {s['retries']} retried" if s["retries"] else ""))

    def _short(self, f) -> str:
        s = f.api.stats
        return f"{f.totals['trades']} trades, {s['requests']} req" + (f", {s['retries']} retried" if s["retries"] else "")

    def _where(self, f) -> str:
        return f"{self.req['product']} {time.strftime('%Y-%m-%d %H:%MZ', time.gmtime(f.at))}"

    def start(self, f):
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeRemainingColumn
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(bar_width=24),
                            TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self._where(f), total=1.0, completed=f.fraction, info="")

    def __call__(self, f):
        if self.mode == "bar":
            self._bar.update(self._task, completed=f.fraction, description=self._where(f), info=self._short(f))
        elif self.mode == "line":
            now = time.monotonic()
            if now - self._last >= 1.0 or f.at >= f.end_s:
                self._last = now
                print(f"history: {self.req['product']} {100 * f.fraction:5.1f}% up to {iso(f.at)}: {self._text(f)}",
                      file=self.stream, flush=True)

    def stop(self):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# --- main ------------------------------------------------------------------------------------------

def _interrupt(signum, frame):
    raise KeyboardInterrupt


def fetch(a) -> int:
    try:
        req = resolve(a)
    except Usage as e:
        print(f"history: {e}", file=sys.stderr)
        return 2
    for n in req["notes"]:
        print(f"history: note: {n}", file=sys.stderr)
    api = PublicApi(req["base_url"], ca_bundle=req["ca_bundle"], timeout_s=a.timeout_s, retries=a.retries,
                    backoff_s=a.backoff_s, rate_per_s=a.rate)
    history = {"product": req["product"], "granularity": req["granularity"], "start": iso(req["start"]),
               "start_s": req["start"], "source": f"https://{req['base_url']} public market data",
               "chunk_s": chunk_seconds(req["g"])}
    out = HistoryFile(a.out, history)
    progress = Progress(a.progress, req)
    f = None
    t0 = time.monotonic()
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        info = api.product(req["product"])
        try:
            inc = Decimal(str(info.get("price_increment") or info.get("quote_increment")))
            if not inc.is_finite() or inc <= 0:
                raise InvalidOperation
        except (InvalidOperation, ValueError):
            raise ApiError(f"product {req['product']}: no usable price_increment in {info.get('price_increment')!r}")
        resume = out.open()
        msg_base = int(hashlib.sha256(f"{req['product']}|{req['granularity']}|{req['start']}".encode())
                       .hexdigest()[:15], 16)
        f = Fetcher(api, out, req["product"], req["granularity"], req["start"], req["end"], increment=inc,
                    trades_limit=a.trades_limit, msg_base=msg_base, progress=progress)
        if resume.checkpoint is not None:
            f.restore(resume.checkpoint, out.trades())
            print(f"history: resuming {a.out} at {iso(f.at)} ({f.totals['trades']} trades already in it)",
                  file=sys.stderr)
        elif resume.resumed:
            print(f"history: {a.out} holds no complete chunk yet: starting at {iso(f.at)}", file=sys.stderr)
        if f.at >= req["end"]:
            out.close()
            print(f"history: {a.out} already holds {req['product']} up to {iso(f.at)}: nothing to fetch")
            return 0
        progress.start(f)
        f.run()
        progress.stop()
        out.close("complete")
    except KeyboardInterrupt:
        progress.stop()
        out.close()
        where = iso(f.at) if f is not None else iso(req["start"])
        print(f"history: interrupted; {a.out} holds {req['product']} up to {where}: run the same command again "
              f"to resume", file=sys.stderr)
        return 130
    except (ApiError, BadData, NotResumable, OSError) as e:
        progress.stop()
        out.close()
        kept = f" ({a.out} holds up to {iso(f.at)}: run the same command again to resume)" \
            if f is not None and f.at > req["start"] else ""
        what = "bad response: " if isinstance(e, BadData) else ""
        print(f"history: {what}{e}{kept}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    t, s = f.totals, api.stats
    print(f"history: wrote {a.out}: {req['product']} {req['granularity']} {iso(req['start'])} .. {iso(req['end'])}: "
          f"{t['candles']} candles, {t['trades']} trades, {t['ticks']} ticks ({t['candle_ticks']} from candles), "
          f"{t['saturated_s']} saturated seconds; {s['requests']} requests ({s['retries']} retried) "
          f"in {time.monotonic() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickmesh history",
                                description="Coinbase's public candles and market trades -> a store file to replay.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="fetch")
    f = sub.add_parser("fetch", help="fetch candles and trades of one product into a store file",
                       description="Fetch Coinbase's public candles and market trades of one product over\n"
                                   "[--start, --end) into a store file that `tickmesh offline --source replay:FILE`\n"
                                   "replays (docs/marketdata.md, \"Historical data\").",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--product", required=True, help="Coinbase product id, e.g. BTC-USD")
    f.add_argument("--start", required=True, help="first day (2026-11-01 = 00:00 UTC) or UTC time, included")
    f.add_argument("--end", required=True, help="end day or UTC time, excluded (2026-11-02: up to 23:59:59)")
    f.add_argument("--granularity", default="ONE_MINUTE", choices=list(GRANULARITY),
                   help="candle size (default ONE_MINUTE)")
    f.add_argument("--out", required=True, metavar="FILE", help="store file to write, or to resume")
    f.add_argument("--base-url", default=None, metavar="HOST[:PORT]",
                   help=f"REST host (default ${ENV_BASE_URL} or {DEFAULT_BASE_URL}; the fake: 127.0.0.1:8443)")
    f.add_argument("--ca-bundle", default=None, metavar="PEM",
                   help=f"CA bundle to trust for that host (default ${ENV_CA_BUNDLE}; the fake's fakecoinbase-ca.pem)")
    f.add_argument("--trades-limit", type=int, default=MAX_TRADES, metavar="N",
                   help=f"trades per request, 1..{MAX_TRADES} (default {MAX_TRADES})")
    f.add_argument("--retries", type=int, default=6, help="tries after the first on 429/5xx/network errors (6)")
    f.add_argument("--backoff-s", type=float, default=0.5,
                   help="first backoff cap; doubles per retry, full jitter, at most 30 s (0.5)")
    f.add_argument("--timeout-s", type=float, default=30.0, help="per request (30)")
    f.add_argument("--rate", type=float, default=9.0, metavar="PER_S",
                   help="requests per second at most (9: under Coinbase's public 10 per IP; 0: unpaced)")
    f.add_argument("--progress", default="auto", choices=("auto", "bar", "line", "none"),
                   help="auto: a bar on a terminal, plain lines otherwise")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s history: %(message)s")
    if a.cmd == "fetch":
        return fetch(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
