"""Coinbase's public market history through the official SDK, paginated, retried, in chunks.

``PublicApi`` wraps ``coinbase.rest.RESTClient`` without credentials (public endpoints need none):
``get_public_product``, ``get_public_candles`` and ``get_public_market_trades``. A transient failure
(HTTP 429, 500, 502, 503, 504, a connection error or a timeout) is retried with full-jitter
exponential backoff (``backoff_s * 2**attempt``, capped at ``backoff_max_s``; a 429's
``Retry-After`` is honoured), up to ``retries`` times per request; the count starts again at the
next request. Anything else (an unknown product, a bad argument, TLS) raises ``ApiError`` at once.
Requests are paced to ``rate_per_s`` (10: Coinbase's public limit per IP) so 429s stay rare.

``Fetcher`` walks the range in chunks (one hour, or one bucket when buckets are longer), each:

* **candles**: from pages of at most 350 buckets (Coinbase's maximum per request; a page is
  fetched once, when the first chunk inside it needs it);
* **trades**: ``limit`` trades per request, newest first within ``[start, end)``. A full answer
  means there may be older ones: the next request ends at the second of the oldest trade received
  (ids seen are dropped). A single second holding more than ``limit`` trades cannot be split
  further (the API takes whole seconds): its older trades are skipped and counted (``saturated``).

The chunk's events (``derive.Deriver``) then go to the file with a checkpoint (``storefile``).
"""
import logging
import math
import random
import re
import time

import requests

from proto import jsonl

from . import derive

TRANSIENT = frozenset({429, 500, 502, 503, 504})
MAX_CANDLES = 350
MAX_TRADES = 1000
GRANULARITY = {"ONE_MINUTE": 60, "FIVE_MINUTE": 300, "FIFTEEN_MINUTE": 900, "THIRTY_MINUTE": 1800,
               "ONE_HOUR": 3600, "TWO_HOUR": 7200, "SIX_HOUR": 21600, "ONE_DAY": 86400}


class ApiError(Exception):
    """A request that failed for good; ``str()`` is one line. ``status``: HTTP status or None."""

    def __init__(self, message: str, status: int = None):
        super().__init__(message)
        self.status = status


def _describe(e: requests.HTTPError) -> tuple:
    """(status, "CODE: message") of an SDK HTTPError (Coinbase's JSON error body, else its text)."""
    r = e.response
    status = r.status_code if r is not None else None
    text = ""
    if r is not None:
        try:
            body = r.json()
            text = ": ".join(str(x) for x in (body.get("error"), body.get("message") or body.get("error_details"))
                             if x)
        except ValueError:
            text = r.text.strip()
    return status, " ".join(text.split())[:200]


class PublicApi:
    """The three public endpoints, with the retry policy above. ``stats``: requests, retries."""

    def __init__(self, base_url: str, *, ca_bundle: str = None, timeout_s: float = 30.0, retries: int = 6,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0, rate_per_s: float = 10.0,
                 sleep=time.sleep, clock=time.monotonic, rng=None):
        from coinbase.rest import RESTClient
        # the SDK logs every HTTP error to stderr by itself; here failures are retried or reported once
        logging.getLogger("coinbase.RESTClient").setLevel(logging.CRITICAL)
        self.base_url = base_url
        self.client = RESTClient(api_key=None, api_secret=None, base_url=base_url, timeout=timeout_s)
        if ca_bundle:
            self.client.session.verify = ca_bundle
            self.client.session.trust_env = False     # else REQUESTS_CA_BUNDLE would override it
        self.retries, self.backoff_s, self.backoff_max_s = retries, backoff_s, backoff_max_s
        self.sleep, self.clock = sleep, clock
        self.interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._next_at = 0.0
        self.rng = rng or random.Random()
        self.stats = {"requests": 0, "retries": 0}
        self.last_retry = ""

    def _call(self, what: str, fn, *args, **kw) -> dict:
        attempt = 0
        while True:
            if self.interval:           # Coinbase allows 10 public requests/s per IP: stay under it
                now = self.clock()
                if self._next_at > now:
                    self.sleep(self._next_at - now)
                    now = self._next_at
                self._next_at = now + self.interval
            self.stats["requests"] += 1
            wait_at_least = 0.0
            try:
                return fn(*args, **kw).to_dict()
            except requests.HTTPError as e:
                status, text = _describe(e)
                if status not in TRANSIENT or attempt >= self.retries:
                    tail = f" (after {attempt + 1} tries)" if attempt else ""
                    raise ApiError(f"{what}: HTTP {status} {text}{tail}", status) from None
                after = e.response.headers.get("Retry-After") if e.response is not None else None
                if after and after.strip().isdigit():
                    wait_at_least = float(after)
                reason = f"HTTP {status}"
            except requests.exceptions.SSLError as e:
                raise ApiError(f"{what}: TLS failure talking to {self.base_url} ({_short(e)}); "
                               f"a private CA goes in --ca-bundle") from None
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt >= self.retries:
                    raise ApiError(f"{what}: cannot reach https://{self.base_url}: {_short(e)} "
                                   f"(after {attempt + 1} tries)") from None
                reason = type(e).__name__
            except ValueError as e:       # a 2xx whose body is not JSON
                raise ApiError(f"{what}: unreadable response ({_short(e)})") from None
            except requests.RequestException as e:      # not a listed transient failure: no retry
                raise ApiError(f"{what}: {type(e).__name__}: {_short(e)}") from None
            cap = min(self.backoff_max_s, self.backoff_s * 2 ** attempt)
            delay = max(wait_at_least, self.rng.uniform(0, cap))
            attempt += 1
            self.stats["retries"] += 1
            self.last_retry = f"{reason}, retry {attempt} in {delay:.2f} s"
            self.sleep(delay)

    def product(self, product: str) -> dict:
        try:
            return self._call(f"product {product}", self.client.get_public_product, product)
        except ApiError as e:
            if e.status == 404:
                raise ApiError(f"unknown product {product!r} ({e})", 404) from None
            raise

    def candles(self, product: str, start_s: int, end_s: int, granularity: str) -> list:
        out = self._call(f"candles {product} {start_s}..{end_s}", self.client.get_public_candles, product,
                         start=str(start_s), end=str(end_s), granularity=granularity)
        return out.get("candles") or []

    def trades(self, product: str, start_s: int, end_s: int, limit: int) -> list:
        out = self._call(f"market trades {product} {start_s}..{end_s}", self.client.get_public_market_trades,
                         product, limit=limit, start=str(start_s), end=str(end_s))
        return out.get("trades") or []


_REASONS = re.compile(r"certificate verify failed[^'\")(]*|\[Errno -?\d+\][^'\")(]*|timed out|"
                      r"Connection refused|Connection reset[^'\")(]*|Name or service not known")


def _short(e) -> str:
    """The cause of a requests/urllib3 error without its wrapping (``[Errno 111] Connection refused``)."""
    text = " ".join(str(e).split())
    m = _REASONS.search(text)
    return m.group(0).strip(" :,") if m else text[:160]


def chunk_seconds(g: int) -> int:
    """One hour, or one bucket when buckets are longer (every granularity divides one or the other)."""
    return max(g, 3600)


class Fetcher:
    """Fetch ``[start_s, end_s)`` of one product into a ``storefile.HistoryFile``."""

    def __init__(self, api: PublicApi, out, product: str, granularity: str, start_s: int, end_s: int, *,
                 trades_limit: int = MAX_TRADES, increment=None, msg_base: int = 0, progress=None):
        self.api, self.out, self.product = api, out, product
        self.granularity, self.g = granularity, GRANULARITY[granularity]
        self.start_s, self.end_s = start_s, end_s
        self.trades_limit = trades_limit
        self.chunk_s = chunk_seconds(self.g)
        self.deriver = derive.Deriver(product, increment, self.g, msg_base)
        self.progress = progress or (lambda f: None)
        self._pages = {}             # page index -> {bucket start: Candle}
        self.totals = {"candles": 0, "trades": 0, "ticks": 0, "candle_ticks": 0, "saturated_s": 0,
                       "chunks": 0}
        self.at = start_s

    def restore(self, checkpoint: dict, trade_envs):
        """Continue after ``checkpoint`` (a ``_chunk`` line): the deriver learns the trades already
        written, and sequence numbers and counts carry on."""
        d = self.deriver
        for env in trade_envs:
            m = env.msg
            d.learn(derive.HTrade(env.ts_event, m.trade_id, m.price, m.size, m.side))
        d.seq.update({k: int(v) for k, v in checkpoint["seq"].items() if k in d.seq})
        d.msgs = int(checkpoint["msgs"])
        for k in self.totals:
            self.totals[k] = int(checkpoint.get("total", {}).get(k, 0))
        self.at = int(checkpoint["end"])

    # --- candles ---------------------------------------------------------------------------------
    def _candles(self, cs: int, ce: int) -> list:
        """The candles of [cs, ce), from the pages (of at most 350 buckets) that cover it."""
        span = MAX_CANDLES * self.g
        first, last = (cs - self.start_s) // span, (ce - 1 - self.start_s) // span
        for k in [k for k in self._pages if k < first]:
            del self._pages[k]          # the walk only goes forward
        out = []
        for k in range(first, last + 1):
            page = self._pages.get(k)
            if page is None:
                p0 = self.start_s + k * span
                p1 = min(p0 + span, self.end_s)
                # end one second short of the page: whether Coinbase counts ``end`` in or not, the
                # request covers at most 350 buckets (never a 400) and every bucket starting before p1
                page = {}
                for c in self.api.candles(self.product, p0, p1 - 1, self.granularity):
                    c = derive.parse_candle(c)
                    if p0 <= c.start < p1:
                        page[c.start] = c
                self._pages[k] = page
            out.extend(c for s, c in sorted(page.items()) if cs <= s < ce)
        return out

    # --- trades ----------------------------------------------------------------------------------
    def _trades(self, cs: int, ce: int) -> tuple:
        """Every trade in [cs, ce): (trades, number of saturated seconds)."""
        lo, hi = cs * 1_000_000_000, ce * 1_000_000_000
        seen, out = set(), []
        end, saturated = ce, 0
        limit = self.trades_limit
        while end > cs:
            raw = self.api.trades(self.product, cs, end, limit)
            oldest = None
            for t in raw:
                tr = derive.parse_trade(t, self.product)
                if not (cs - 1) * 1_000_000_000 <= tr.ts < (end + 1) * 1_000_000_000:
                    # an API that ignored start/end would fill the file with candle ticks: stop instead
                    raise derive.BadData(f"market trades {self.product} {cs}..{end}: trade {tr.trade_id} at "
                                         f"{tr.ts // 1_000_000_000} is outside the window asked for")
                if oldest is None or tr.ts < oldest:
                    oldest = tr.ts
                if lo <= tr.ts < hi and tr.trade_id not in seen:
                    seen.add(tr.trade_id)
                    out.append(tr)
            if len(raw) < limit or oldest is None:
                break
            nxt = min(end, oldest // 1_000_000_000 + 1)     # again from the oldest trade's second
            if nxt >= end:            # a whole answer inside one second: its older trades are out of reach
                saturated += 1
                nxt = end - 1
            end = nxt
        return out, saturated

    # --- the walk --------------------------------------------------------------------------------
    def run(self):
        d = self.deriver
        while self.at < self.end_s:
            cs = self.at
            ce = min(self.end_s, (cs - self.start_s) // self.chunk_s * self.chunk_s + self.start_s + self.chunk_s)
            candles = self._candles(cs, ce)
            trades, saturated = self._trades(cs, ce)
            before = dict(d.counts)
            envs = d.chunk_events(trades, candles)
            lines = [jsonl.dumps(e) for e in envs]
            t = self.totals
            t["candles"] += len(candles)
            t["trades"] += d.counts["trades"] - before["trades"]
            t["ticks"] += d.counts["ticks"] - before["ticks"]
            t["candle_ticks"] += d.counts["candle_ticks"] - before["candle_ticks"]
            t["saturated_s"] += saturated
            t["chunks"] += 1
            self.out.write_chunk(lines, {"start": cs, "end": ce, "candles": len(candles), "trades": len(trades),
                                         "saturated_s": saturated, "seq": dict(d.seq), "msgs": d.msgs,
                                         "total": dict(t)})
            self.at = ce
            self.progress(self)

    @property
    def fraction(self) -> float:
        span = self.end_s - self.start_s
        return 1.0 if span <= 0 else (self.at - self.start_s) / span


def buckets(start_s: int, end_s: int, g: int) -> int:
    return math.ceil((end_s - start_s) / g)
