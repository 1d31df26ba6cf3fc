"""The Coinbase venue: Advanced Trade through the official SDK (``coinbase.rest.RESTClient``).

Two threads, so the node's loop never waits on the network:

* the **REST worker** owns the ``RESTClient`` (made in that thread) and runs commands in order:
  ``create_order`` (always with our ``client_order_id``), ``cancel_orders``, ``get_order``,
  ``list_orders``. 429, 5xx and connection errors are retried with full-jitter exponential backoff
  (``backoff_base_s`` doubling up to ``backoff_max_s``, ``max_retries`` times; the wait ends early on
  stop); any other HTTP error fails at once. ``success: false`` is a rejection carrying Coinbase's
  reason (``Code.VENUE_REJECT``). ``DUPLICATE_CLIENT_ORDER_ID`` means an earlier attempt got through:
  the order is looked up by client_order_id and adopted, never sent twice. At start it reconciles the
  journal's working orders with the venue (open orders, cumulative fills); while the user channel
  is down (or ``use_user_ws = false``) it polls ``get_order`` every ``poll_interval_s``.
* the **user-channel reader** (``websockets`` sync client, JWT from the SDK's ``jwt_generator``)
  subscribes to ``user`` and ``heartbeats``; no frame for ``ws_stale_s``, an error frame or a
  sequence gap means reconnect (with backoff) and a REST resync.

Coinbase reports orders as cumulative snapshots (filled size, filled value, total fees);
``update_events`` turns a snapshot into the venue events of ``orders.py`` by comparing it with the
order's journaled state, so the user channel and REST polling can report the same fill and it is
booked once. Results go back to the node's loop with ``post`` (the node's ``call_soon``).
"""
import dataclasses
import json
import queue
import random
import threading
import time
from decimal import Decimal, InvalidOperation
from typing import NamedTuple, Optional

from nodes.runtime import NodeStartError
from proto import Code

from . import orders as O
from .orders import Accepted, Cancelled, Completed, Filled, Rejected

ZERO = Decimal(0)
TERMINAL = ("FILLED", "CANCELLED", "EXPIRED", "FAILED")
_GENERIC = ("", "UNKNOWN_FAILURE_REASON", "UNKNOWN_FAILURE", None)


class OrderUpdate(NamedTuple):
    """One Coinbase order snapshot (from the user channel or from REST), normalised."""
    coid: str
    venue_order_id: str
    product: str
    status: str
    cum_size: Decimal
    filled_value: Optional[Decimal]
    avg_price: Decimal
    total_fees: Decimal
    number_of_fills: int
    reason: str
    ts: int
    source: str          # "ws" | "rest"


def _d(v) -> Decimal:
    if v in (None, ""):
        return ZERO
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        return ZERO
    return d if d.is_finite() else ZERO


def _i(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def parse_ws_order(d: dict, ts: int) -> OrderUpdate:
    """A ``user`` channel order (every field a string)."""
    return OrderUpdate(d.get("client_order_id") or "", d.get("order_id") or "", d.get("product_id") or "",
                       (d.get("status") or "").upper(), _d(d.get("cumulative_quantity")),
                       _d(d["filled_value"]) if d.get("filled_value") not in (None, "") else None,
                       _d(d.get("avg_price")), _d(d.get("total_fees")), _i(d.get("number_of_fills")),
                       d.get("reject_reason") or d.get("cancel_reason") or "", ts, "ws")


def parse_rest_order(d: dict, ts: int) -> OrderUpdate:
    """A REST order (get_order / list_orders)."""
    return OrderUpdate(d.get("client_order_id") or "", d.get("order_id") or "", d.get("product_id") or "",
                       (d.get("status") or "").upper(), _d(d.get("filled_size")),
                       _d(d["filled_value"]) if d.get("filled_value") not in (None, "") else None,
                       _d(d.get("average_filled_price")), _d(d.get("total_fees")),
                       _i(d.get("number_of_fills")),
                       d.get("reject_reason") or d.get("reject_message") or d.get("cancel_message") or "",
                       ts, "rest")


def update_events(o, u: OrderUpdate, cancel_why=None) -> list:
    """Pure: the venue events that take order ``o`` (an OrderState) to snapshot ``u``."""
    ev = []
    coid, ts = o.client_order_id, u.ts
    if o.status == O.NEW:
        if u.status == "FAILED" and u.cum_size <= 0:
            return [Rejected(coid, Code.VENUE_REJECT, f"Coinbase: {u.reason or 'FAILED'}", ts)]
        ev.append(Accepted(coid, u.venue_order_id, ts))
    if u.cum_size > o.filled_size:
        dsize = u.cum_size - o.filled_size
        if u.filled_value is not None and u.filled_value > o.filled_value:
            price = (u.filled_value - o.filled_value) / dsize
        else:
            price = u.avg_price if u.avg_price > 0 else (o.limit_price or ZERO)
        fee = max(ZERO, u.total_fees - o.fees)
        if o.order_type == "MARKET" or o.status == O.NEW:
            liquidity = "TAKER"          # executed on arrival
        else:
            liquidity = "MAKER"          # executed while resting (the channel does not say)
        n = u.number_of_fills if u.number_of_fills > o.fills else o.fills + 1
        ev.append(Filled(coid, f"{u.venue_order_id or o.venue_order_id}-{n}", price, dsize, fee, liquidity,
                         ts, u.status == "FILLED"))
    elif u.status == "FILLED" and o.status != O.FILLED:
        ev.append(Completed(coid, ts))
    if u.status in ("CANCELLED", "EXPIRED", "FAILED"):
        if cancel_why is not None:
            code, reason = cancel_why
        elif o.order_type == "MARKET" or o.tif == "IOC":
            code, reason = Code.IOC_NO_LIQUIDITY, "remainder cancelled by Coinbase"
        elif o.tif == "FOK":
            code, reason = Code.FOK_NOT_FILLABLE, "fill-or-kill not filled at Coinbase"
        elif u.status == "FAILED":
            code, reason = Code.VENUE_REJECT, f"Coinbase: {u.reason or 'FAILED'}"
        else:
            code, reason = Code.OK, f"{u.status.lower()} at Coinbase" + (f": {u.reason}" if u.reason else "")
        ev.append(Cancelled(coid, code, reason, ts))
    return ev


def _f(d: Decimal) -> str:
    return format(d, "f")


def order_configuration(o) -> dict:
    """The Advanced Trade ``order_configuration`` for an order (sizes and prices as strings)."""
    if o.order_type == "MARKET":
        cfg = {"base_size": _f(o.size)} if o.size is not None else {"quote_size": _f(o.quote_size)}
        return {"market_market_fok" if o.tif == "FOK" else "market_market_ioc": cfg}
    if o.tif == "IOC":
        return {"sor_limit_ioc": {"base_size": _f(o.size), "limit_price": _f(o.limit_price)}}
    if o.tif == "FOK":
        return {"limit_limit_fok": {"base_size": _f(o.size), "limit_price": _f(o.limit_price)}}
    return {"limit_limit_gtc": {"base_size": _f(o.size), "limit_price": _f(o.limit_price),
                                "post_only": bool(o.post_only)}}


def reject_reason(resp) -> str:
    """Coinbase's reason for a ``success: false`` create, e.g. ``INSUFFICIENT_FUND: <message>``."""
    get = resp.get if isinstance(resp, dict) else resp.__getitem__     # SDK responses: r["key"] or None
    err = get("error_response") or {}
    codes = [err.get("error"), err.get("new_order_failure_reason"), err.get("preview_failure_reason"),
             get("failure_reason")]
    code = next((c for c in codes if c not in _GENERIC), None) or "UNKNOWN_FAILURE_REASON"
    msg = err.get("message") or err.get("error_details") or ""
    return f"{code}: {msg}" if msg else code


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** attempt)))


class VenueError(Exception):
    """A REST call failed for good (a non-retryable HTTP error)."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status, self.text = status, text


class VenueUnavailable(Exception):
    """Retries exhausted on 429/5xx/connection errors."""


class _Stopped(Exception):
    pass


class CoinbaseVenue:
    name = "coinbase"

    def __init__(self, conf, mesh, secrets, *, post, log, on_events=None, on_update=None):
        from coinbase import jwt_generator
        self.conf, self.mesh, self.log, self.post = conf, mesh, log, post
        self._key = secrets["COINBASE_API_KEY"]
        self._secret = secrets["COINBASE_API_SECRET"]
        try:        # fail at start, not at the first order, if the key cannot sign (never log it)
            jwt_generator.build_rest_jwt(f"GET {conf.rest_base_url}/api/v3/brokerage/orders",
                                         self._key.reveal(), self._unescape(self._secret.reveal()))
        except Exception as e:  # noqa: BLE001 - the SDK raises a bare Exception
            raise NodeStartError("COINBASE_API_SECRET cannot sign a JWT (expected an EC P-256 or Ed25519 "
                                 f"private key): {str(e).splitlines()[0]}") from None
        self.on_events = on_events
        self.on_update = on_update
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._open: dict = {}          # coid -> venue order id (REST worker thread only)
        self._limbo: dict = {}         # coid -> OrderState copy: create outcome unknown
        self.ws_healthy = False
        self._threads = []
        self.submitted = 0
        self.counters = dict.fromkeys(("rest_calls", "rest_retries", "http_429", "http_5xx", "rest_errors",
                                       "polls", "ws_connects", "ws_frames", "ws_gaps", "ws_errors",
                                       "foreign_open_orders"), 0)

    @staticmethod
    def _unescape(s: str) -> str:
        # like the SDK: a one-line secret may carry literal \n
        return bytes(s, "utf8").decode("unicode_escape") if "\\n" in s else s

    # --- node side (loop thread) ------------------------------------------------------------
    def start(self, working):
        self._q.put(("reconcile", [dataclasses.replace(o) for o in working]))
        t = threading.Thread(target=self._rest_loop, name="coinbase-rest", daemon=True)
        self._threads.append(t)
        t.start()
        if self.conf.use_user_ws:
            t = threading.Thread(target=self._ws_loop, name="coinbase-user", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self):
        self._stop.set()
        self._q.put(None)
        deadline = time.monotonic() + 0.8
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self.log.warning("%s thread still busy at stop (daemon; abandoned)", t.name)

    def submit(self, o):
        self.submitted += 1
        self._q.put(("create", dataclasses.replace(o)))

    def cancel(self, o):
        self._q.put(("cancel", o.client_order_id, o.venue_order_id))

    def _events(self, events):
        if events:
            self.post(self.on_events, events)

    def _update(self, u: OrderUpdate):
        self.post(self.on_update, u)

    # --- REST worker ----------------------------------------------------------------------------
    def _make_client(self):
        from coinbase.rest import RESTClient
        c = self.conf
        client = RESTClient(api_key=self._key.reveal(), api_secret=self._unescape(self._secret.reveal()),
                            base_url=c.rest_base_url, timeout=c.rest_timeout_s)
        if c.rest_ca_bundle:
            # requests lets $REQUESTS_CA_BUNDLE override session.verify unless trust_env is off
            client.session.verify = c.rest_ca_bundle
            client.session.trust_env = False
        return client

    def _polling(self) -> bool:
        return not self.conf.use_user_ws or not self.ws_healthy

    def _rest_loop(self):
        self.client = self._make_client()
        last_poll = time.monotonic()
        while not self._stop.is_set():
            busy = self._polling() or self._limbo
            wait = max(0.01, self.conf.poll_interval_s - (time.monotonic() - last_poll)) if busy else 0.5
            try:
                cmd = self._q.get(timeout=wait)
            except queue.Empty:
                cmd = ()
            if cmd is None:
                break
            try:
                if cmd:
                    getattr(self, "_cmd_" + cmd[0])(*cmd[1:])
                if time.monotonic() - last_poll >= self.conf.poll_interval_s:
                    if self._polling():
                        last_poll = time.monotonic()
                        self._cmd_resync()
                    elif self._limbo:
                        last_poll = time.monotonic()
                        self._resolve_limbo()
            except _Stopped:
                break
            except Exception:  # noqa: BLE001 - one bad command must not end the worker
                self.counters["rest_errors"] += 1
                self.log.exception("coinbase worker: %s failed", cmd[0] if cmd else "poll")
        self.client.session.close()

    def _call(self, fn, *args, **kw):
        import requests
        c = self.conf
        for attempt in range(c.max_retries + 1):
            if self._stop.is_set():
                raise _Stopped()
            self.counters["rest_calls"] += 1
            retry_after = 0.0
            try:
                return fn(*args, **kw)
            except requests.HTTPError as e:
                r = e.response
                status = r.status_code if r is not None else 0
                if status == 429:
                    self.counters["http_429"] += 1
                    try:
                        retry_after = float(r.headers.get("retry-after") or 0)
                    except ValueError:
                        retry_after = 0.0
                elif 500 <= status < 600:
                    self.counters["http_5xx"] += 1
                else:
                    raise VenueError(status, r.text if r is not None else str(e)) from None
                why = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as e:
                why = type(e).__name__
            if attempt >= c.max_retries:
                break
            delay = min(c.backoff_max_s, max(retry_after, backoff_delay(attempt, c.backoff_base_s,
                                                                        c.backoff_max_s, self._rng)))
            self.counters["rest_retries"] += 1
            self.log.warning("coinbase %s: %s; retry %d/%d in %.2f s", getattr(fn, "__name__", "call"),
                             why, attempt + 1, c.max_retries, delay)
            if self._stop.wait(delay):
                raise _Stopped()
        raise VenueUnavailable(f"{getattr(fn, '__name__', 'call')}: still failing after {c.max_retries} retries")

    def _cmd_create(self, o):
        try:
            self._create(o)
        except (_Stopped, VenueUnavailable):
            raise
        except Exception:  # noqa: BLE001 - outcome unknown (e.g. an odd response): look it up
            self.log.exception("create %s: unexpected failure; looking it up by client_order_id",
                               o.client_order_id)
            self._limbo[o.client_order_id] = o

    def _create(self, o):
        coid = o.client_order_id
        try:
            r = self._call(self.client.create_order, client_order_id=coid, product_id=o.product,
                           side=o.side, order_configuration=order_configuration(o))
        except VenueError as e:
            self._events([Rejected(coid, Code.VENUE_REJECT, f"Coinbase {e}", time.time_ns())])
            return
        except VenueUnavailable as e:
            # the request may or may not have reached Coinbase: find out before deciding
            self.log.warning("create %s: %s; looking it up by client_order_id", coid, e)
            self._limbo[coid] = o
            self._resolve_limbo()
            return
        if r["success"]:
            sr = r["success_response"] or {}
            vid = sr.get("order_id") or r["order_id"] or ""
            self._open[coid] = vid
            self._events([Accepted(coid, vid, time.time_ns())])
            return
        reason = reject_reason(r)
        if reason.startswith("DUPLICATE_CLIENT_ORDER_ID"):
            d = self._find_by_coid(o)
            if d is not None:       # an earlier attempt of ours got through: adopt it
                self._adopt(d)
                return
        self._events([Rejected(coid, Code.VENUE_REJECT, f"Coinbase: {reason}", time.time_ns())])

    def _resolve_limbo(self):
        for coid, o in list(self._limbo.items()):
            try:
                d = self._find_by_coid(o)
            except VenueUnavailable:
                return              # still unreachable: the order stays NEW and we ask again later
            del self._limbo[coid]
            if d is not None:
                self._adopt(d)
            else:
                self._events([Rejected(coid, Code.VENUE_UNAVAILABLE,
                                       "Coinbase did not confirm the order and has no order with this "
                                       "client_order_id: never placed", time.time_ns())])

    def _adopt(self, d: dict):
        u = parse_rest_order(d, time.time_ns())
        if u.status not in TERMINAL:
            self._open[u.coid] = u.venue_order_id
        self._update(u)

    def _find_by_coid(self, o, pages: int = 5) -> Optional[dict]:
        cursor = None
        for _ in range(pages):
            r = self._call(self.client.list_orders, product_ids=[o.product], limit=250, cursor=cursor)
            for od in (r["orders"] or []):
                d = od.to_dict() if hasattr(od, "to_dict") else od
                if d.get("client_order_id") == o.client_order_id:
                    return d
            cursor = r["cursor"]
            if not r["has_next"] or not cursor:
                return None
        return None

    def _cmd_cancel(self, coid, vid):
        vid = vid or self._open.get(coid, "")
        if not vid:
            self.log.warning("cancel %s: no venue order id (never placed?)", coid)
            return
        try:
            r = self._call(self.client.cancel_orders, order_ids=[vid])
            res = (r["results"] or [None])[0]
            if res is not None and not res["success"]:
                self.log.info("cancel %s refused by Coinbase: %s", coid, res["failure_reason"])
        except VenueError as e:
            self.log.warning("cancel %s failed: %s", coid, e)
        except VenueUnavailable as e:
            self.log.warning("cancel %s: %s (the order stays working; cancel again)", coid, e)
            return
        self._refresh(coid, vid)

    def _refresh(self, coid, vid):
        try:
            r = self._call(self.client.get_order, order_id=vid)
        except VenueError as e:
            self.log.warning("get_order %s (%s) failed: %s", vid, coid, e)
            return
        d = r["order"]
        if d is None:
            return
        d = d.to_dict() if hasattr(d, "to_dict") else d
        u = parse_rest_order(d, time.time_ns())
        if u.status in TERMINAL:
            self._open.pop(coid, None)
        self._update(u)

    def _cmd_resync(self):
        """Poll every open order (user channel down, reconnected, or a gap on it)."""
        if self._limbo:
            self._resolve_limbo()
        if self._open:
            self.counters["polls"] += 1
        for coid, vid in list(self._open.items()):
            try:
                self._refresh(coid, vid)
            except VenueUnavailable as e:
                self.log.warning("poll: %s", e)
                return

    def _cmd_reconcile(self, working):
        """At start: align the journal's working orders with Coinbase (open orders, fills)."""
        open_orders, cursor = {}, None
        try:
            for _ in range(20):
                r = self._call(self.client.list_orders, order_status=["OPEN"], limit=250, cursor=cursor)
                for od in (r["orders"] or []):
                    d = od.to_dict() if hasattr(od, "to_dict") else od
                    open_orders[d.get("client_order_id") or d.get("order_id")] = d
                cursor = r["cursor"]
                if not r["has_next"] or not cursor:
                    break
        except (VenueError, VenueUnavailable) as e:
            self.log.error("reconcile: cannot list open orders: %s; will poll", e)
        mine = {o.client_order_id for o in working}
        for o in working:
            d = open_orders.get(o.client_order_id)
            if d is not None:
                self._adopt(d)
            elif o.venue_order_id:
                self._open[o.client_order_id] = o.venue_order_id
                self._refresh(o.client_order_id, o.venue_order_id)
            else:
                self._limbo[o.client_order_id] = o
        self._resolve_limbo()
        foreign = [k for k in open_orders if k not in mine]
        self.counters["foreign_open_orders"] = len(foreign)
        if foreign:
            self.log.warning("reconcile: %d open orders at Coinbase were not placed by this node "
                             "(left alone): %s", len(foreign), ", ".join(sorted(foreign)[:10]))
        self.log.info("reconcile: %d working orders checked, %d open at Coinbase", len(working), len(open_orders))

    # --- user channel reader ------------------------------------------------------------------
    def _ws_loop(self):
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._ws_session()
            except _Stopped:
                break
            except Exception as e:  # noqa: BLE001 - any failure: mark down, poll, reconnect
                self.counters["ws_errors"] += 1
                self.log.warning("user channel: %s: %s", type(e).__name__, e)
            self.ws_healthy = False
            if time.monotonic() - started > 30:
                attempt = 0
            delay = backoff_delay(attempt, self.conf.backoff_base_s, self.conf.backoff_max_s, self._rng)
            attempt += 1
            if self._stop.wait(delay):
                break

    def _subscribe(self, ws, channel, products):
        from coinbase import jwt_generator
        jwt = jwt_generator.build_ws_jwt(self._key.reveal(), self._unescape(self._secret.reveal()))
        ws.send(json.dumps({"type": "subscribe", "product_ids": products, "channel": channel, "jwt": jwt}))

    def _ws_session(self):
        from websockets.sync.client import connect
        c = self.conf
        with connect(c.ws_user_url, open_timeout=c.rest_timeout_s, close_timeout=1,
                     max_size=10 * 1024 * 1024) as ws:
            self.counters["ws_connects"] += 1
            self._subscribe(ws, "user", [])
            self._subscribe(ws, "heartbeats", [])
            last_rx, last_seq = time.monotonic(), None
            while True:
                if self._stop.is_set():
                    raise _Stopped()
                try:
                    raw = ws.recv(timeout=0.25)
                except TimeoutError:
                    if time.monotonic() - last_rx > c.ws_stale_s:
                        raise ConnectionError(f"no frame for {c.ws_stale_s} s") from None
                    continue
                last_rx = time.monotonic()
                self.counters["ws_frames"] += 1
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if msg.get("type") == "error":
                    raise ConnectionError(f"error frame: {msg.get('message')}")
                seq = msg.get("sequence_num")
                if isinstance(seq, int):
                    if last_seq is not None and seq != last_seq + 1:
                        self.counters["ws_gaps"] += 1
                        self.log.warning("user channel gap (%d after %d): resync over REST", seq, last_seq)
                        self._q.put(("resync",))
                    last_seq = seq
                if msg.get("channel") != "user":
                    continue
                now = time.time_ns()
                for ev in msg.get("events") or []:
                    for od in ev.get("orders") or []:
                        if isinstance(od, dict):
                            self._update(parse_ws_order(od, now))
                    if ev.get("type") == "snapshot" and not self.ws_healthy:
                        self.ws_healthy = True
                        self.log.info("user channel subscribed")
                        self._q.put(("resync",))     # catch up on anything missed while down
