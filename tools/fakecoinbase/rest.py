"""Fake Coinbase Advanced Trade REST API (HTTPS) and its exchange: orders, fills, balances, faults.

What the official SDK (``coinbase.rest.RESTClient``) needs to run unmodified against 127.0.0.1:

* **TLS**: the SDK always builds ``https://{base_url}{path}``, so the server serves HTTPS with a
  self-signed certificate for IP 127.0.0.1 made at start (``cryptography``). Point the client at
  ``RestServer.ca_bundle`` (``session.verify = path`` plus ``session.trust_env = False``, or
  ``REQUESTS_CA_BUNDLE``) and use ``RestServer.base_url`` (``127.0.0.1:PORT``) as ``base_url``.
* **JWT**: every private request needs ``Authorization: Bearer <JWT>`` signed by a registered key
  (``FakeExchange.add_key``): ES256 or EdDSA, ``iss = "cdp"``, ``sub`` = ``kid`` = key name, a fresh
  ``nonce``, within ``nbf``/``exp``, and ``uri = "<METHOD> <host:port><path>"``. Failure: 401 with
  the plain-text body ``Unauthorized`` (like Coinbase).
* **Orders** (``/api/v3/brokerage``): POST ``/orders`` (market_market_ioc/fok, limit_limit_gtc/fok,
  sor_limit_ioc), POST ``/orders/batch_cancel``, GET ``/orders/historical/{id}``,
  ``/orders/historical/batch``, ``/orders/historical/fills``, ``/accounts``, ``/best_bid_ask``,
  ``/time``. Rejections come back as HTTP 200 ``success: false``: ``INSUFFICIENT_FUND``,
  ``INVALID_LIMIT_PRICE_POST_ONLY``, ``DUPLICATE_CLIENT_ORDER_ID``, ``UNTRADABLE_PRODUCT``.
* **Matching** against a synthetic market (best bid/ask per product, ``set_market``; optional
  seeded random walk): marketable orders fill at once at the touch (taker fee); resting limits fill
  (maker fee) when ``trade()`` prints through them, sized by the traded volume, or when
  ``set_market`` moves the touch through them.
* **Public market data** (no JWT, like Coinbase): GET ``/market/products/{id}``,
  ``/market/products/{id}/candles`` and ``/market/products/{id}/ticker`` (market trades), served
  from ``PublicHistory``: seeded trades that are the same for any window asked, and candles
  aggregated from those very trades. Coinbase's limits are enforced: at most 350 candles per
  request (more is a 400), ``limit`` required and at most 1000 for trades.
* **Faults on demand**: ``fail_next(n, status=429|500|503, method=, path=, skip=)``; optional rate
  limits (private, and public per ``public_rate_limit_per_s``). A fault with no ``path`` only hits
  private requests; name a ``/market/`` path to fail public ones.
* Order changes are pushed to listeners: the ``user`` WebSocket channel (``tools.fakecoinbase.user``).

``python -m tools.fakecoinbase.rest`` runs REST + user channel standalone (see ``main``). Money is
Decimal throughout.
"""
import argparse
import collections
import datetime as _dt
import ipaddress
import json
import logging
import math
import os
import random
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("tickmesh.fakecoinbase.rest")

D = Decimal
ZERO = D(0)
BPS = D(10000)
API = "/api/v3/brokerage"
TIF = {"market_market_ioc": "IMMEDIATE_OR_CANCEL", "market_market_fok": "FILL_OR_KILL",
       "limit_limit_gtc": "GOOD_UNTIL_CANCELLED", "limit_limit_fok": "FILL_OR_KILL",
       "sor_limit_ioc": "IMMEDIATE_OR_CANCEL"}
TERMINAL = ("FILLED", "CANCELLED", "EXPIRED", "FAILED")
DEFAULT_MARKET = {"BTC-USD": ("64999.99", "65000.01"), "ETH-USD": ("3499.99", "3500.01"),
                  "SOL-USD": ("149.99", "150.01")}


def _iso(ts: float = None) -> str:
    t = _dt.datetime.fromtimestamp(time.time() if ts is None else ts, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _s(d: Decimal) -> str:
    return format(d.normalize(), "f") if d else "0"


# --- keys and certificates -------------------------------------------------------------------------

def make_api_key(name: str = None):
    """A new EC P-256 API key: ``(name, private_pem, public_key)``; the PEM is what the SDK signs with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    return name or f"organizations/fake-org/apiKeys/{uuid.uuid4()}", pem, key.public_key()


def make_certificate(directory) -> tuple:
    """A self-signed certificate for 127.0.0.1 / localhost: ``(cert_path, key_path)``. The cert is
    its own CA, so the cert file is the CA bundle clients trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakecoinbase 127.0.0.1")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, "fakecoinbase-ca.pem")
    key_path = os.path.join(directory, "fakecoinbase-tls.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class AuthError(Exception):
    pass


# --- public market history (candles and market trades) ---------------------------------------------

GRANULARITY = {"ONE_MINUTE": 60, "FIVE_MINUTE": 300, "FIFTEEN_MINUTE": 900, "THIRTY_MINUTE": 1800,
               "ONE_HOUR": 3600, "TWO_HOUR": 7200, "SIX_HOUR": 21600, "ONE_DAY": 86400}
MAX_CANDLES = 350           # per request: Coinbase answers 400 beyond it
MAX_TRADES = 1000           # market trades ``limit``
PRICE_TICK = D("0.01")
SIZE_QUANTUM = D("0.00000001")
HISTORY_BASE = {"BTC-USD": 65000.0, "ETH-USD": 3500.0, "SOL-USD": 150.0}


class RequestError(Exception):
    """A request the API refuses: ``status`` and the Coinbase error body."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.body = status, {"error": error, "error_details": message, "message": message}


def _bad(message: str) -> RequestError:
    return RequestError(400, "INVALID_ARGUMENT", message)


def _unix_arg(q: dict, name: str, required: bool):
    v = (q.get(name) or [None])[0]
    if v in (None, ""):
        if required:
            raise _bad(f"{name} is required")
        return None
    try:
        return int(v)
    except ValueError:
        raise _bad(f"{name} must be a UNIX timestamp in seconds, got {v!r}") from None


class PublicHistory:
    """Seeded market trades for any product and any window, and the candles of those trades.

    The tape is a function of ``(seed, product, hour)``: each UTC hour is generated on its own (a
    Brownian bridge of the log mid between two seeded hourly anchors, so hours join up; a spread of
    1-5 ticks; Poisson arrivals at ``trades_per_s``; each trade at the ask (taker buy) or at the bid
    (taker sell); log-normal sizes), so two requests for overlapping windows see the same trades,
    whatever the order they come in. Trade ids are ``epoch_second * 100 + i``: increasing with time.
    ``side`` is the maker's side, as on the ``market_trades`` channel. Candles are aggregated from
    the same trades (a bucket without trades has no candle, as on Coinbase)."""

    def __init__(self, seed: int = 0, trades_per_s: float = 0.5, cache_hours: int = 64):
        self.seed = seed
        self.trades_per_s = trades_per_s
        self._cache = collections.OrderedDict()     # (product, hour) -> [trade tuple]
        self._cache_hours = cache_hours
        self._lock = threading.Lock()

    def _anchor(self, product: str, hour: int) -> float:
        r = random.Random(f"fakecb-anchor:{self.seed}:{product}:{hour}")
        base = math.log(HISTORY_BASE.get(product, 100.0))
        return (base + 0.04 * math.sin(2 * math.pi * hour / 168) + 0.015 * math.sin(2 * math.pi * hour / 24)
                + r.gauss(0.0, 0.004))

    def _hour(self, product: str, hour: int) -> list:
        key = (product, hour)
        with self._lock:
            got = self._cache.get(key)
            if got is not None:
                self._cache.move_to_end(key)
                return got
        rng = random.Random(f"fakecb-tape:{self.seed}:{product}:{hour}")
        a, b = self._anchor(product, hour), self._anchor(product, hour + 1)
        sigma = 0.00012                               # per sqrt(second): ~3.5% a day
        walk, w = [], 0.0
        for _ in range(3600):
            w += rng.gauss(0.0, sigma)
            walk.append(w)
        drift = walk[-1] - (b - a)
        base_size = math.log(200.0 / math.exp(a))     # median notional ~200 quote
        lam = self.trades_per_s
        out = []
        t0 = hour * 3600
        for k in range(3600):
            mid = math.exp(a + walk[k] - (k + 1) / 3600 * drift)
            spread = rng.choices((1, 2, 3, 5), (70, 15, 10, 5))[0]
            n, t = 0, rng.expovariate(lam) if lam > 0 else 2.0
            while t < 1.0 and n < 99:
                n += 1
                t += rng.expovariate(lam)
            if not n:
                continue
            bid_ticks = int(math.floor(mid / 0.01 - spread / 2))
            bid, ask = D(bid_ticks) * PRICE_TICK, D(bid_ticks + spread) * PRICE_TICK
            micros = sorted(rng.randrange(1_000_000) for _ in range(n))
            sec = t0 + k
            for i, us in enumerate(micros):
                taker_buy = rng.random() < 0.5
                size = D(str(round(math.exp(rng.gauss(base_size, 1.2)), 8))).quantize(SIZE_QUANTUM)
                size = max(size, SIZE_QUANTUM)
                # (time in µs, trade id, price, size, maker side)
                out.append((sec * 1_000_000 + us, sec * 100 + i, ask if taker_buy else bid, size,
                            "SELL" if taker_buy else "BUY"))
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self._cache_hours:
                self._cache.popitem(last=False)
        return out

    def trades(self, product: str, start_s: int, end_s: int) -> list:
        """Every trade with ``start_s <= time < end_s``, oldest first."""
        out = []
        lo, hi = start_s * 1_000_000, end_s * 1_000_000
        for hour in range(start_s // 3600, (end_s - 1) // 3600 + 1):
            out.extend(t for t in self._hour(product, hour) if lo <= t[0] < hi)
        return out

    @staticmethod
    def _trade_json(product: str, t) -> dict:
        return {"trade_id": str(t[1]), "product_id": product, "price": _s_fixed(t[2]), "size": _s_fixed(t[3]),
                "time": _iso_us(t[0]), "side": t[4], "exchange": "coinbase"}

    def market_trades(self, product: str, q: dict) -> dict:
        """GET /market/products/{id}/ticker: the newest ``limit`` trades of [start, end), newest first
        (``best_bid``/``best_ask``, the current touch, are the exchange's to add)."""
        raw = (q.get("limit") or [None])[0]
        if raw in (None, ""):
            raise _bad("limit is required")
        try:
            limit = int(raw)
        except ValueError:
            raise _bad(f"limit must be an integer, got {raw!r}") from None
        if not 1 <= limit <= MAX_TRADES:
            raise _bad(f"limit must be between 1 and {MAX_TRADES}")
        end = _unix_arg(q, "end", False)
        start = _unix_arg(q, "start", False)
        end = int(time.time()) + 1 if end is None else end
        if start is not None and start >= end:
            raise _bad("start must be before end")
        picked, hour_end = [], end
        while len(picked) < limit:            # newest first, an hour at a time
            lo = max(start if start is not None else end - 86400, (hour_end - 1) // 3600 * 3600)
            if lo >= hour_end:
                break
            chunk = self.trades(product, lo, hour_end)
            picked.extend(reversed(chunk))
            hour_end = lo
        return {"trades": [self._trade_json(product, t) for t in picked[:limit]]}

    def candles(self, product: str, q: dict) -> dict:
        """GET /market/products/{id}/candles: buckets starting in [start, end), newest first."""
        gran = (q.get("granularity") or [""])[0]
        g = GRANULARITY.get(gran)
        if g is None:
            raise _bad(f"granularity must be one of {', '.join(GRANULARITY)}, got {gran!r}")
        start, end = _unix_arg(q, "start", True), _unix_arg(q, "end", True)
        if start >= end:
            raise _bad("start must be before end")
        limit = MAX_CANDLES
        raw = (q.get("limit") or [None])[0]
        if raw not in (None, ""):
            try:
                limit = int(raw)
            except ValueError:
                raise _bad(f"limit must be an integer, got {raw!r}") from None
            if not 1 <= limit <= MAX_CANDLES:
                raise _bad(f"limit must be between 1 and {MAX_CANDLES}")
        first = start - start % g
        buckets = math.ceil((end - first) / g)
        if buckets > limit:
            raise _bad(f"start and end argument is invalid - number of candles requested should be "
                       f"less than or equal to {limit}, got {buckets}")
        agg: dict = {}
        for t in self.trades(product, first, first + buckets * g):
            b = t[0] // 1_000_000 // g * g
            c = agg.get(b)
            if c is None:
                agg[b] = [t[2], t[2], t[2], t[2], t[3]]       # open, high, low, close, volume
            else:
                c[1] = max(c[1], t[2])
                c[2] = min(c[2], t[2])
                c[3] = t[2]
                c[4] += t[3]
        return {"candles": [{"start": str(b), "low": _s_fixed(c[2]), "high": _s_fixed(c[1]), "open": _s_fixed(c[0]),
                             "close": _s_fixed(c[3]), "volume": _s_fixed(c[4])}
                            for b, c in sorted(agg.items(), reverse=True)]}


def _s_fixed(d: Decimal) -> str:
    return format(d, "f")


def _iso_us(us: int) -> str:
    t = _dt.datetime.fromtimestamp(us // 1_000_000, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


def public_product(product: str, bid: Decimal, ask: Decimal) -> dict:
    """GET /market/products/{id}: the fields of Coinbase's product object a client reads."""
    base, quote = product.split("-")
    mid = (bid + ask) / 2
    return {"product_id": product, "price": _s(mid), "price_percentage_change_24h": "0", "volume_24h": "0",
            "volume_percentage_change_24h": "0", "base_increment": "0.00000001", "quote_increment": "0.01",
            "quote_min_size": "1", "quote_max_size": "150000000", "base_min_size": "0.00000001",
            "base_max_size": "3400", "base_name": base, "quote_name": quote, "watched": False,
            "is_disabled": False, "new": False, "status": "online", "cancel_only": False, "limit_only": False,
            "post_only": False, "trading_disabled": False, "auction_mode": False, "product_type": "SPOT",
            "quote_currency_id": quote, "base_currency_id": base, "mid_market_price": _s(mid),
            "price_increment": "0.01", "display_name": f"{base}/{quote}", "product_venue": "CBE",
            "alias": "", "alias_to": []}


# --- the exchange ----------------------------------------------------------------------------------

class FakeExchange:
    """Orders, fills, balances and a synthetic market. Thread-safe: one lock around everything."""

    def __init__(self, products=None, *, balances=None, maker_fee_bps="40", taker_fee_bps="60",
                 seed: int = 0, rate_limit_per_s: int = 0, public_rate_limit_per_s: int = 0,
                 trades_per_s: float = 0.5):
        self.lock = threading.RLock()
        self.market = {}
        for p in products or ("BTC-USD", "ETH-USD"):
            bid, ask = DEFAULT_MARKET.get(p, ("99.99", "100.01"))
            self.market[p] = {"bid": D(bid), "ask": D(ask), "bid_size": D("5"), "ask_size": D("5")}
        self.balances = {k: D(v) for k, v in (balances or {"USD": "1000000", "BTC": "10", "ETH": "100",
                                                          "SOL": "1000"}).items()}
        self.maker_fee = D(str(maker_fee_bps)) / BPS
        self.taker_fee = D(str(taker_fee_bps)) / BPS
        self.orders: dict = {}              # order_id -> internal order dict (insertion = creation order)
        self.by_coid: dict = {}
        self.fills: list = []
        self.keys: dict = {}                # key name -> public key
        self.listeners: list = []           # fn(order) called (under the lock) on every order change
        self.requests = collections.Counter()   # "METHOD /path-template" -> count
        self.user_id = str(uuid.UUID(int=random.Random(f"user-{seed}").getrandbits(128)))
        self._faults: list = []             # [remaining, status, method, path_prefix, skip]
        self._nonces: dict = {}             # nonce -> exp (replay protection)
        self._rng = random.Random(seed)
        self._trade_ids = 0
        self.rate_limit_per_s = rate_limit_per_s
        self._window = collections.deque()
        self.public_rate_limit_per_s = public_rate_limit_per_s
        self._public_window = collections.deque()
        self.history = PublicHistory(seed, trades_per_s)

    # --- keys, faults --------------------------------------------------------------------------
    def add_key(self, name: str, public_key) -> None:
        self.keys[name] = public_key

    def fail_next(self, n: int = 1, status: int = 429, method: str = None, path: str = None,
                  skip: int = 0) -> None:
        """After ``skip`` matching requests, the next ``n`` get HTTP ``status`` instead of an answer.
        Without ``path`` only private requests match; a public one (``/market/...``) must be named."""
        with self.lock:
            self._faults.append([n, status, method, path, skip])

    @staticmethod
    def _over(window, limit: int) -> bool:
        now = time.monotonic()
        while window and now - window[0] > 1.0:
            window.popleft()
        if len(window) >= limit:
            return True
        window.append(now)
        return False

    def take_fault(self, method: str, path: str, public: bool = False):
        with self.lock:
            if public:
                if self.public_rate_limit_per_s and self._over(self._public_window, self.public_rate_limit_per_s):
                    return 429
            elif self.rate_limit_per_s and self._over(self._window, self.rate_limit_per_s):
                return 429
            for f in self._faults:
                if public and f[3] is None:
                    continue
                if f[0] > 0 and (f[2] is None or f[2] == method) and (f[3] is None or path.startswith(f[3])):
                    if f[4] > 0:
                        f[4] -= 1
                        continue
                    f[0] -= 1
                    if f[0] == 0:
                        self._faults.remove(f)
                    return f[1]
        return None

    def check_jwt(self, header: str, method: str = None, host: str = None, path: str = None,
                  *, token: str = None) -> dict:
        """Verify a REST (``Bearer`` header, with ``uri``) or WebSocket (``token``, no uri) JWT."""
        import jwt
        if token is None:
            if not header or not header.startswith("Bearer "):
                raise AuthError("missing bearer token")
            token = header[7:].strip()
        try:
            h = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise AuthError(f"bad token: {e}") from None
        kid, alg = h.get("kid"), h.get("alg")
        key = self.keys.get(kid)
        if key is None:
            raise AuthError(f"unknown key {kid!r}")
        if alg not in ("ES256", "EdDSA") or not h.get("nonce"):
            raise AuthError("alg must be ES256/EdDSA and a nonce is required")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], issuer="cdp", leeway=5,
                                options={"require": ["exp", "nbf", "iss", "sub"], "verify_aud": False})
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from None
        if claims.get("sub") != kid:
            raise AuthError("sub does not match kid")
        if method is not None:
            want = f"{method} {host}{path}"
            if claims.get("uri") != want:
                raise AuthError(f"uri claim {claims.get('uri')!r} does not match {want!r}")
        with self.lock:
            now = time.time()
            for n in [n for n, exp in self._nonces.items() if exp < now - 10]:
                del self._nonces[n]
            if h["nonce"] in self._nonces:
                raise AuthError("nonce reused")
            self._nonces[h["nonce"]] = claims["exp"]
        return claims

    # --- market ---------------------------------------------------------------------------------
    def set_market(self, product: str, bid, ask, bid_size="5", ask_size="5") -> None:
        """Move the touch; resting orders it crosses fill (maker, up to the displayed size)."""
        with self.lock:
            m = self.market.setdefault(product, {})
            m.update(bid=D(str(bid)), ask=D(str(ask)), bid_size=D(str(bid_size)), ask_size=D(str(ask_size)))
            for o in self._resting(product):
                if o["side"] == "BUY" and m["ask"] <= o["limit_price"]:
                    self._execute(o, o["limit_price"], min(self._left(o), m["ask_size"]), "MAKER")
                elif o["side"] == "SELL" and m["bid"] >= o["limit_price"]:
                    self._execute(o, o["limit_price"], min(self._left(o), m["bid_size"]), "MAKER")

    def trade(self, product: str, price, size) -> None:
        """A print at ``price``: resting orders it went through (strictly) fill, sized by ``size``."""
        price, volume = D(str(price)), D(str(size))
        with self.lock:
            hit = [o for o in self._resting(product) if (o["side"] == "BUY" and o["limit_price"] > price)
                   or (o["side"] == "SELL" and o["limit_price"] < price)]
            hit.sort(key=lambda o: (-o["limit_price"] if o["side"] == "BUY" else o["limit_price"], o["seq"]))
            for o in hit:
                if volume <= 0:
                    break
                take = min(self._left(o), volume)
                volume -= take
                self._execute(o, o["limit_price"], take, "MAKER")

    def step(self) -> None:
        """One seeded random-walk step of every product's touch (for the standalone server)."""
        with self.lock:
            for p, m in self.market.items():
                tick = D("0.01")
                move = D(self._rng.choice((-3, -2, -1, 0, 0, 1, 2, 3))) * tick * max(1, int(m["ask"] / 1000))
                self.set_market(p, m["bid"] + move, m["ask"] + move, m["bid_size"], m["ask_size"])

    # --- orders ---------------------------------------------------------------------------------
    def _resting(self, product):
        return [o for o in self.orders.values() if o["product_id"] == product and o["status"] == "OPEN"
                and o["order_type"] == "LIMIT"]

    @staticmethod
    def _left(o):
        return o["base_size"] - o["filled_size"]

    def _available(self, currency: str) -> Decimal:
        held = ZERO
        for o in self.orders.values():
            if o["status"] != "OPEN" or o["order_type"] != "LIMIT":
                continue
            base, quote = o["product_id"].split("-")
            if o["side"] == "BUY" and quote == currency:
                held += self._left(o) * o["limit_price"] * (1 + self.taker_fee)
            elif o["side"] == "SELL" and base == currency:
                held += self._left(o)
        return self.balances.get(currency, ZERO) - held

    @staticmethod
    def _failure(error: str, message: str, cfg, new_reason: str = "UNKNOWN_FAILURE_REASON",
                 preview: str = None) -> dict:
        return {"success": False, "failure_reason": "UNKNOWN_FAILURE_REASON", "order_id": "",
                "error_response": {"error": error, "message": message, "error_details": "",
                                   "preview_failure_reason": preview or f"PREVIEW_{error}",
                                   "new_order_failure_reason": new_reason},
                "order_configuration": cfg}

    def create_order(self, body: dict):
        """(http_status, response) for POST /orders."""
        coid = body.get("client_order_id")
        product = body.get("product_id")
        side = body.get("side")
        cfg = body.get("order_configuration")
        if not isinstance(coid, str) or not coid or side not in ("BUY", "SELL") or not isinstance(cfg, dict) \
                or len(cfg) != 1 or next(iter(cfg)) not in TIF or not isinstance(next(iter(cfg.values())), dict):
            return 400, {"error": "INVALID_ARGUMENT", "error_details": "bad order request",
                         "message": "bad order request"}
        kind, params = next(iter(cfg.items()))
        try:
            base = D(params["base_size"]) if params.get("base_size") not in (None, "") else None
            quote = D(params["quote_size"]) if params.get("quote_size") not in (None, "") else None
            limit = D(params["limit_price"]) if params.get("limit_price") not in (None, "") else None
        except (InvalidOperation, TypeError):
            return 400, {"error": "INVALID_ARGUMENT", "error_details": "bad number", "message": "bad number"}
        is_market = kind.startswith("market")
        if (is_market and (base is None) == (quote is None)) or (not is_market and (base is None or limit is None)) \
                or any(v is not None and v <= 0 for v in (base, quote, limit)):
            return 400, {"error": "INVALID_ARGUMENT", "error_details": "sizes/prices", "message": "invalid size or price"}
        post_only = bool(params.get("post_only", False))
        with self.lock:
            if coid in self.by_coid:
                return 200, self._failure("DUPLICATE_CLIENT_ORDER_ID", "client_order_id was already used", cfg,
                                          preview="PREVIEW_UNKNOWN_FAILURE_REASON")
            m = self.market.get(product)
            if m is None:
                return 200, self._failure("UNTRADABLE_PRODUCT", f"{product} is not tradable", cfg)
            base_ccy, quote_ccy = product.split("-")
            touch = m["ask"] if side == "BUY" else m["bid"]
            crosses = is_market or (side == "BUY" and limit >= m["ask"]) or (side == "SELL" and limit <= m["bid"])
            if post_only and crosses:
                return 200, self._failure("UNKNOWN_FAILURE_REASON", "post-only order would cross", cfg,
                                          new_reason="INVALID_LIMIT_PRICE_POST_ONLY",
                                          preview="PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY")
            if base is None:        # quote-sized market order: what it buys at the touch
                base = (quote / touch).quantize(D("0.00000001"), rounding=ROUND_FLOOR)
            if side == "BUY":
                need, have = base * (limit if limit is not None and not crosses else touch) * (1 + self.taker_fee), \
                    self._available(quote_ccy)
            else:
                need, have = base, self._available(base_ccy)
            if need > have:
                return 200, self._failure("INSUFFICIENT_FUND", "Insufficient balance in source account", cfg)
            oid = str(uuid.UUID(int=self._rng.getrandbits(128)))
            o = {"order_id": oid, "client_order_id": coid, "product_id": product, "side": side,
                 "order_type": "MARKET" if is_market else "LIMIT", "time_in_force": TIF[kind],
                 "base_size": base, "quote_size": quote, "limit_price": limit, "post_only": post_only,
                 "order_configuration": cfg, "status": "OPEN", "filled_size": ZERO, "filled_value": ZERO,
                 "total_fees": ZERO, "number_of_fills": 0, "created_time": _iso(), "last_fill_time": None,
                 "reject_reason": "", "cancel_message": "", "seq": len(self.orders) + 1}
            self.orders[oid] = o
            self.by_coid[coid] = oid
            self._notify(o)
            tif = TIF[kind]
            if crosses:
                px = touch
                avail = m["ask_size"] if side == "BUY" else m["bid_size"]
                if is_market:
                    avail = base        # the synthetic market is deep enough for market orders
                if tif == "FILL_OR_KILL" and avail < base:
                    self._finish(o, "CANCELLED", "fill-or-kill not filled")
                else:
                    self._execute(o, px, min(base, avail), "TAKER")
            if o["status"] == "OPEN" and tif != "GOOD_UNTIL_CANCELLED":
                self._finish(o, "CANCELLED", "immediate-or-cancel remainder")
            return 200, {"success": True, "success_response": {"order_id": oid, "product_id": product,
                                                               "side": side, "client_order_id": coid},
                         "order_configuration": cfg}

    def _execute(self, o, price: Decimal, size: Decimal, liquidity: str) -> None:
        if size <= 0:
            return
        base_ccy, quote_ccy = o["product_id"].split("-")
        fee = price * size * (self.maker_fee if liquidity == "MAKER" else self.taker_fee)
        if o["side"] == "BUY":
            self.balances[quote_ccy] = self.balances.get(quote_ccy, ZERO) - price * size - fee
            self.balances[base_ccy] = self.balances.get(base_ccy, ZERO) + size
        else:
            self.balances[base_ccy] = self.balances.get(base_ccy, ZERO) - size
            self.balances[quote_ccy] = self.balances.get(quote_ccy, ZERO) + price * size - fee
        o["filled_size"] += size
        o["filled_value"] += price * size
        o["total_fees"] += fee
        o["number_of_fills"] += 1
        o["last_fill_time"] = _iso()
        self._trade_ids += 1
        self.fills.append({"entry_id": str(uuid.UUID(int=self._rng.getrandbits(128))),
                           "trade_id": str(self._trade_ids), "order_id": o["order_id"],
                           "trade_time": o["last_fill_time"], "trade_type": "FILL", "price": _s(price),
                           "size": _s(size), "commission": _s(fee), "product_id": o["product_id"],
                           "sequence_timestamp": o["last_fill_time"], "liquidity_indicator": liquidity,
                           "size_in_quote": False, "user_id": self.user_id, "side": o["side"],
                           "retail_portfolio_id": ""})
        if o["filled_size"] >= o["base_size"]:
            o["status"] = "FILLED"
        self._notify(o)

    def _finish(self, o, status: str, message: str) -> None:
        o["status"] = status
        o["cancel_message"] = message
        self._notify(o)

    def cancel_orders(self, ids) -> dict:
        results = []
        with self.lock:
            for oid in ids if isinstance(ids, list) else []:
                o = self.orders.get(oid)
                if o is None:
                    results.append({"success": False, "failure_reason": "UNKNOWN_CANCEL_ORDER", "order_id": oid})
                elif o["status"] == "FILLED":
                    results.append({"success": False, "failure_reason": "ORDER_IS_FULLY_FILLED", "order_id": oid})
                elif o["status"] in TERMINAL:
                    results.append({"success": False, "failure_reason": "DUPLICATE_CANCEL_REQUEST", "order_id": oid})
                else:
                    self._finish(o, "CANCELLED", "User requested cancel")
                    results.append({"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON",
                                    "order_id": oid})
        return {"results": results}

    def _notify(self, o) -> None:
        for fn in list(self.listeners):
            try:
                fn(o)
            except Exception:  # noqa: BLE001 - a broken listener must not break matching
                log.exception("order listener failed")

    # --- views ----------------------------------------------------------------------------------
    @staticmethod
    def rest_view(o) -> dict:
        filled, value, fees = o["filled_size"], o["filled_value"], o["total_fees"]
        size = o["base_size"]
        return {"order_id": o["order_id"], "product_id": o["product_id"], "user_id": "fake-user",
                "order_configuration": o["order_configuration"], "side": o["side"],
                "client_order_id": o["client_order_id"], "status": o["status"],
                "time_in_force": o["time_in_force"], "created_time": o["created_time"],
                "completion_percentage": _s((filled / size * 100).quantize(D("0.01"))) if size else "0",
                "filled_size": _s(filled), "average_filled_price": _s(value / filled) if filled else "0",
                "fee": "", "number_of_fills": str(o["number_of_fills"]), "filled_value": _s(value),
                "pending_cancel": False, "size_in_quote": o["quote_size"] is not None, "total_fees": _s(fees),
                "size_inclusive_of_fees": False,
                "total_value_after_fees": _s(value + fees if o["side"] == "BUY" else value - fees),
                "trigger_status": "INVALID_ORDER_TYPE", "order_type": o["order_type"],
                "reject_reason": o["reject_reason"], "settled": o["status"] in TERMINAL, "product_type": "SPOT",
                "reject_message": "", "cancel_message": o["cancel_message"],
                "order_placement_source": "RETAIL_ADVANCED", "outstanding_hold_amount": "0",
                "is_liquidation": False, "last_fill_time": o["last_fill_time"], "edit_history": [],
                "leverage": "", "margin_type": "UNKNOWN_MARGIN_TYPE", "retail_portfolio_id": "",
                "originating_order_id": "", "attached_order_id": ""}

    @staticmethod
    def ws_view(o) -> dict:
        """The ``user`` channel form: every field a string."""
        filled, value, fees = o["filled_size"], o["filled_value"], o["total_fees"]
        size = o["base_size"]
        return {"order_id": o["order_id"], "client_order_id": o["client_order_id"], "product_id": o["product_id"],
                "product_type": "SPOT", "order_side": o["side"], "order_type": o["order_type"],
                "status": o["status"], "time_in_force": o["time_in_force"],
                "limit_price": _s(o["limit_price"]) if o["limit_price"] is not None else "",
                "stop_price": "", "post_only": "true" if o["post_only"] else "false",
                "cumulative_quantity": _s(filled), "leaves_quantity": _s(max(ZERO, size - filled)),
                "avg_price": _s(value / filled) if filled else "0", "filled_value": _s(value),
                "number_of_fills": str(o["number_of_fills"]),
                "completion_percentage": _s((filled / size * 100).quantize(D("0.01"))) if size else "0",
                "total_fees": _s(fees), "total_value_after_fees": _s(value + fees if o["side"] == "BUY" else value - fees),
                "outstanding_hold_amount": "0", "cancel_reason": o["cancel_message"] if o["status"] == "CANCELLED" else "",
                "reject_reason": o["reject_reason"], "trigger_status": "INVALID_ORDER_TYPE",
                "contract_expiry_type": "UNKNOWN_CONTRACT_EXPIRY_TYPE",
                "risk_managed_by": "UNKNOWN_RISK_MANAGEMENT_TYPE", "retail_portfolio_id": "",
                "creation_time": o["created_time"], "start_time": "0001-01-01T00:00:00Z",
                "end_time": "0001-01-01T00:00:00Z"}

    def get_order(self, oid: str):
        with self.lock:
            o = self.orders.get(oid)
            return None if o is None else {"order": self.rest_view(o)}

    def list_orders(self, q: dict) -> dict:
        with self.lock:
            rows = list(reversed(self.orders.values()))          # newest first
            if q.get("order_ids"):
                rows = [o for o in rows if o["order_id"] in q["order_ids"]]
            if q.get("product_ids"):
                rows = [o for o in rows if o["product_id"] in q["product_ids"]]
            if q.get("order_status"):
                rows = [o for o in rows if o["status"] in q["order_status"]]
            limit = min(int((q.get("limit") or ["100"])[0]), 1000)
            start = int((q.get("cursor") or ["0"])[0] or 0)
            page = rows[start:start + limit]
            more = start + limit < len(rows)
            return {"orders": [self.rest_view(o) for o in page], "sequence": "0", "has_next": more,
                    "cursor": str(start + limit) if more else ""}

    def list_fills(self, q: dict) -> dict:
        with self.lock:
            rows = list(reversed(self.fills))
            if q.get("order_ids"):
                rows = [f for f in rows if f["order_id"] in q["order_ids"]]
            if q.get("product_ids"):
                rows = [f for f in rows if f["product_id"] in q["product_ids"]]
            return {"fills": rows, "cursor": ""}

    def open_orders(self, products=()) -> list:
        with self.lock:
            return [self.ws_view(o) for o in self.orders.values() if o["status"] == "OPEN"
                    and (not products or o["product_id"] in products)]

    def accounts(self) -> dict:
        with self.lock:
            accts = [{"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, c)), "name": f"{c} Wallet", "currency": c,
                      "available_balance": {"value": _s(self._available(c)), "currency": c}, "default": False,
                      "active": True, "created_at": "2024-01-01T00:00:00.000Z", "updated_at": _iso(),
                      "deleted_at": None, "type": "ACCOUNT_TYPE_FIAT" if c == "USD" else "ACCOUNT_TYPE_CRYPTO",
                      "ready": True, "hold": {"value": _s(self.balances[c] - self._available(c)), "currency": c},
                      "retail_portfolio_id": "", "platform": "ACCOUNT_PLATFORM_CONSUMER"}
                     for c in sorted(self.balances)]
            return {"accounts": accts, "has_next": False, "cursor": "", "size": len(accts)}

    def best_bid_ask(self, products) -> dict:
        with self.lock:
            books = [{"product_id": p, "bids": [{"price": _s(m["bid"]), "size": _s(m["bid_size"])}],
                      "asks": [{"price": _s(m["ask"]), "size": _s(m["ask_size"])}], "time": _iso()}
                     for p, m in self.market.items() if not products or p in products]
            return {"pricebooks": books}


# --- HTTPS ------------------------------------------------------------------------------------------

def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakecoinbase"
    sys_version = ""

    def log_message(self, fmt, *args):  # noqa: D102 - quiet: requests are counted instead
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _send(self, status: int, body: bytes, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method):
        ex: FakeExchange = self.server.exchange
        url = urlsplit(self.path)
        path, q = url.path, parse_qs(url.query)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send(400, _json({"error": "INVALID_ARGUMENT", "message": "body is not JSON"}))
        if path.startswith("/_fake/"):
            return self._control(ex, method, path, body)
        route = self._route_name(method, path)
        with ex.lock:
            ex.requests[route] += 1
        public = path == f"{API}/time" or path.startswith(f"{API}/market/")
        if not public:
            try:
                ex.check_jwt(self.headers.get("Authorization"), method, self.headers.get("Host"), path)
            except AuthError as e:
                log.info("401 %s %s: %s", method, path, e)
                return self._send(401, b"Unauthorized\n", "text/plain")
        status = ex.take_fault(method, path, public)
        if status is not None:
            err = {429: ("RATE_LIMIT_EXCEEDED", "Too many requests"),
                   400: ("INVALID_ARGUMENT", "injected fault")}.get(status, ("INTERNAL", "internal error"))
            return self._send(status, _json({"error": err[0], "error_details": err[1], "message": err[1]}))
        try:
            status, out = self._dispatch(ex, method, path, q, body)
        except RequestError as e:
            status, out = e.status, e.body
        except Exception as e:  # noqa: BLE001 - a fake bug shows as a 500, with a log line
            log.exception("fake REST %s %s failed", method, path)
            status, out = 500, {"error": "INTERNAL", "message": str(e)}
        self._send(status, _json(out))

    @staticmethod
    def _route_name(method, path):
        p = path[len(API):] if path.startswith(API) else path
        if p.startswith("/orders/historical/") and p not in ("/orders/historical/batch", "/orders/historical/fills"):
            p = "/orders/historical/{id}"
        elif p.startswith("/market/products/"):
            parts = p.split("/")          # '', market, products, id[, candles|ticker]
            p = "/market/products/{id}" + ("/" + parts[4] if len(parts) > 4 else "")
        return f"{method} {p}"

    def _dispatch(self, ex, method, path, q, body):
        p = path[len(API):] if path.startswith(API) else None
        nf = (404, {"error": "NOT_FOUND", "error_details": "not found", "message": "not found"})
        if p is None:
            return nf
        if method == "POST" and p == "/orders":
            return ex.create_order(body)
        if method == "POST" and p == "/orders/batch_cancel":
            return 200, ex.cancel_orders(body.get("order_ids"))
        if method == "GET" and p == "/orders/historical/batch":
            return 200, ex.list_orders(q)
        if method == "GET" and p == "/orders/historical/fills":
            return 200, ex.list_fills(q)
        if method == "GET" and p.startswith("/orders/historical/"):
            r = ex.get_order(p.rsplit("/", 1)[1])
            if r is None:
                return 404, {"error": "NOT_FOUND", "error_details": "order with this orderID was not found",
                             "message": "order with this orderID was not found"}
            return 200, r
        if method == "GET" and p == "/accounts":
            return 200, ex.accounts()
        if method == "GET" and p == "/best_bid_ask":
            return 200, ex.best_bid_ask(q.get("product_ids") or [])
        if method == "GET" and p == "/time":
            now = time.time()
            return 200, {"iso": _iso(now), "epochSeconds": str(int(now)), "epochMillis": str(int(now * 1000))}
        if method == "GET" and p.startswith("/market/products/"):
            return self._public_market(ex, p.split("/")[3:], q)
        return nf

    @staticmethod
    def _public_market(ex, parts, q):
        """/market/products/{id}[/candles|/ticker]: an unknown product is Coinbase's 404."""
        product, what = parts[0], (parts[1] if len(parts) == 2 else None)
        if len(parts) > 2 or what not in (None, "candles", "ticker"):
            return 404, {"error": "NOT_FOUND", "error_details": "not found", "message": "not found"}
        with ex.lock:
            m = ex.market.get(product)
            touch = (m["bid"], m["ask"]) if m is not None else None
        if touch is None:
            return 404, {"error": "NOT_FOUND", "error_details": "valid product_id is required",
                         "message": "valid product_id is required"}
        if what is None:
            return 200, public_product(product, *touch)
        if what == "candles":
            return 200, ex.history.candles(product, q)
        out = ex.history.market_trades(product, q)
        out.update(best_bid=_s(touch[0]), best_ask=_s(touch[1]))
        return 200, out

    def _control(self, ex, method, path, body):
        """Test control (no auth; 127.0.0.1 only): market, trade, fail, state."""
        try:
            if method == "POST" and path == "/_fake/market":
                ex.set_market(body["product_id"], body["bid"], body["ask"], body.get("bid_size", "5"),
                              body.get("ask_size", "5"))
            elif method == "POST" and path == "/_fake/trade":
                ex.trade(body["product_id"], body["price"], body["size"])
            elif method == "POST" and path == "/_fake/fail":
                ex.fail_next(int(body.get("count", 1)), int(body.get("status", 429)), body.get("method"),
                             body.get("path"), int(body.get("skip", 0)))
            elif not (method == "GET" and path == "/_fake/state"):
                return self._send(404, _json({"error": "NOT_FOUND"}))
        except (KeyError, ValueError, InvalidOperation) as e:
            return self._send(400, _json({"error": "INVALID_ARGUMENT", "message": str(e)}))
        with ex.lock:
            state = {"requests": dict(ex.requests), "balances": {k: _s(v) for k, v in ex.balances.items()},
                     "orders": len(ex.orders), "fills": len(ex.fills)}
        self._send(200, _json(state))


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, addr, exchange, sslctx):
        super().__init__(addr, _Handler)
        self.exchange = exchange
        self.socket = sslctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request, client_address):
        request.settimeout(10)
        # headers and body leave in two writes: without this, Nagle holds the body until the
        # client's delayed ACK (40 ms a request)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            request.do_handshake()       # in the request's thread, never in the accept loop
        except (ssl.SSLError, OSError) as e:
            log.debug("TLS handshake from %s failed: %s", client_address, e)
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class RestServer:
    """The HTTPS server around a FakeExchange: ``start()``, ``base_url``, ``ca_bundle``, ``stop()``."""

    def __init__(self, exchange: FakeExchange, host: str = "127.0.0.1", port: int = 0, cert_dir: str = None):
        self.exchange, self.host, self.port = exchange, host, port
        self._cert_dir = cert_dir
        self._tmp = None
        self._httpd = None
        self._thread = None
        self.ca_bundle = None

    def start(self) -> "RestServer":
        if self._cert_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakecb-")
            self._cert_dir = self._tmp.name
        cert, key = make_certificate(self._cert_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._httpd = _TLSServer((self.host, self.port), self.exchange, ctx)
        self.port = self._httpd.server_address[1]
        self.ca_bundle = cert
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fakecoinbase-rest", daemon=True)
        self._thread.start()
        log.info("fake Coinbase REST on https://%s (CA bundle %s)", self.base_url, cert)
        return self

    @property
    def base_url(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(2)
            self._httpd = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class Served:
    """A running REST server + user channel (what ``serve`` returns): ``.stop()`` ends both."""

    def __init__(self, exchange, rest, user, key_file, follower=None, stop_event=None):
        self.exchange, self.rest, self.user, self.key_file = exchange, rest, user, key_file
        self._follower, self._stop = follower, stop_event

    def describe(self) -> str:
        return (f"fake Coinbase REST:  https://{self.rest.base_url}   (CA bundle: {self.rest.ca_bundle})\n"
                f"fake user channel:   {self.user.url}\n"
                f"API key (name + privateKey): {self.key_file}\n"
                f"execution config:  venue = \"coinbase\", live_trading = true, "
                f"rest_base_url = \"{self.rest.base_url}\",\n"
                f"                   rest_ca_bundle = \"{os.path.abspath(self.rest.ca_bundle)}\", "
                f"ws_user_url = \"{self.user.url}\"\n"
                f"secrets:           TICKMESH_LIVE=yes, COINBASE_API_KEY / COINBASE_API_SECRET from the key file\n"
                f"public history:    tickmesh history fetch ... --base-url {self.rest.base_url} "
                f"--ca-bundle {os.path.abspath(self.rest.ca_bundle)}")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._follower.join(2)
        self.user.stop()
        self.rest.stop()


def follow_market(exchange: FakeExchange, market, stop: threading.Event, interval: float = 0.2) -> None:
    """Keep the exchange's touch on a ``nodes.marketdata.synthetic.Market`` (the WebSocket fake's
    market), so REST fills happen at the prices the market-data feed shows. The market is stepped
    in another thread: a read that races a step is skipped and retried at the next interval."""
    while not stop.wait(interval):
        for name, prod in list(market.products.items()):
            try:
                t = prod.ticker()
            except RuntimeError:          # the market moved under us (dict changed size): next round
                continue
            if name in exchange.market and D(t["best_bid"]) < D(t["best_ask"]):
                exchange.set_market(name, t["best_bid"], t["best_ask"], t["best_bid_quantity"] or "0",
                                    t["best_ask_quantity"] or "0")


def serve(host: str = "127.0.0.1", rest_port: int = 8443, user_port: int = 8766, products=("BTC-USD", "ETH-USD"),
          *, seed: int = 0, directory: str = "var/fakecoinbase", rate_limit_per_s: int = 30, market=None,
          public_rate_limit_per_s: int = 10) -> Served:
    """Start the REST API and the user channel with a fresh API key (written to ``directory``).
    ``market``: a synthetic ``Market`` to follow (``python -m tools.fakecoinbase --rest`` passes
    the WebSocket fake's)."""
    from .user import UserChannelServer
    ex = FakeExchange(list(products), seed=seed, rate_limit_per_s=rate_limit_per_s,
                      public_rate_limit_per_s=public_rate_limit_per_s)
    name, pem, pub = make_api_key()
    ex.add_key(name, pub)
    os.makedirs(directory, exist_ok=True)
    key_file = os.path.join(directory, "fakecoinbase-key.json")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"name": name, "privateKey": pem}, f)
    rest = RestServer(ex, host, rest_port, cert_dir=directory).start()
    try:
        user = UserChannelServer(ex, host, user_port).start()
    except BaseException:
        rest.stop()
        raise
    follower = stop = None
    if market is not None:
        stop = threading.Event()
        follower = threading.Thread(target=follow_market, args=(ex, market, stop), name="fakecoinbase-follow",
                                    daemon=True)
        follower.start()
    return Served(ex, rest, user, key_file, follower, stop)


def main(argv=None) -> int:
    """Run the fake REST API and the ``user`` channel until Ctrl-C / SIGTERM."""
    import signal
    p = argparse.ArgumentParser(prog="python -m tools.fakecoinbase.rest", description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (0: any free port)")
    p.add_argument("--user-port", type=int, default=8766, help="user channel WebSocket port")
    p.add_argument("--dir", default="var/fakecoinbase", help="where the CA bundle and the API key file go")
    p.add_argument("--products", default="BTC-USD,ETH-USD")
    p.add_argument("--walk", type=float, default=0.0, help="random-walk the market every N seconds (0: off)")
    p.add_argument("--rate-limit", type=int, default=30, help="private requests per second before 429 (0: off)")
    p.add_argument("--public-rate-limit", type=int, default=10,
                   help="public (/market/) requests per second before 429, Coinbase's 10 (0: off)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s fakecoinbase: %(message)s")
    try:
        served = serve(a.host, a.port, a.user_port, a.products.split(","), seed=a.seed, directory=a.dir,
                       rate_limit_per_s=a.rate_limit, public_rate_limit_per_s=a.public_rate_limit)
    except OSError as e:
        print(f"fakecoinbase.rest: {e}", file=sys.stderr)
        return 1
    print(served.describe(), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(a.walk or 0.5):
            if a.walk:
                served.exchange.step()
    finally:
        served.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
