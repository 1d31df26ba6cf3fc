"""Reference implementations of the volatility kernels, for benchmarks and cross-checks.

* ``PyBands``: the same per-tick algorithm as ``kernels.update`` written as a plain Python class
  (floats and a list ring). The benchmark's "pure Python" side, and a second opinion in tests.
* ``numpy_batch``: a vectorised numpy version of ``kernels.batch`` (no Python loop over points):
  rolling variance from shifted cumulative sums, EWMA and Wilder smoothing as blocked closed-form
  linear recurrences, bars with ``np.maximum.reduceat``. Its rolling variance is *less* stable than
  the kernel's (cumulative sums, even shifted, cancel after a huge jump); it is a speed reference.
  Timestamps must be non-decreasing.
"""
import math

import numpy as np

from . import kernels as K


class PyBands:
    """Pure-Python twin of ``kernels.update`` (same algorithm, same outputs up to rounding)."""

    __slots__ = ("w", "a", "bar_ns", "period", "prev", "n", "head", "mean", "m2", "peak", "since",
                 "nret", "evar", "bar", "bh", "bl", "bc", "pc", "nbars", "trsum", "atr_v", "ring",
                 "std", "ewma", "atr", "invw", "invwm1")

    def __init__(self, window: int, alpha: float, bar_ns: int, period: int):
        self.w, self.a, self.bar_ns, self.period = window, alpha, bar_ns, period
        self.invw, self.invwm1 = 1.0 / window, 1.0 / (window - 1)
        self.prev = 0.0
        self.n = self.head = self.since = self.nret = self.nbars = 0
        self.mean = self.m2 = self.peak = self.evar = self.trsum = self.atr_v = 0.0
        self.bar = -1
        self.bh = self.bl = self.bc = self.pc = 0.0
        self.ring = [0.0] * window
        self.std = self.ewma = self.atr = math.nan

    def _recompute(self):
        n = self.n
        xs = self.ring[:n]
        mean = sum(xs) / n
        m2 = c = 0.0
        for x in xs:
            d = x - mean
            m2 += d * d
            c += d
        m2 -= c * c / n
        self.mean = mean + c / n
        self.m2 = self.peak = m2 if m2 > 0.0 else 0.0
        self.since = 0

    def update(self, price: float, ts: int) -> int:
        if not (0.0 < price < math.inf):
            return 0
        prev = self.prev
        self.prev = price
        if prev > 0.0:
            r = math.log1p((price - prev) / prev)
            self.nret += 1
            # rolling stddev (sliding Welford + exact recompute)
            w, n = self.w, self.n
            if n < w:
                self.ring[n] = r
                n += 1
                self.n = n
                d = r - self.mean
                self.mean += d / n
                m2 = self.m2 + d * (r - self.mean)
                self.m2 = m2 if m2 > 0.0 else 0.0
                if self.m2 > self.peak:
                    self.peak = self.m2
            else:
                h = self.head
                old = self.ring[h]
                self.ring[h] = r
                self.head = (h + 1) % w
                mean = self.mean
                new_mean = mean + (r - old) * self.invw
                m2 = self.m2 + (r - old) * (r - new_mean + old - mean)
                self.mean = new_mean
                self.m2 = m2 if m2 > 0.0 else 0.0
                self.since += 1
                if self.m2 > self.peak:
                    self.peak = self.m2
                if self.since >= K.REFRESH_WINDOWS * w or self.m2 < self.peak * K.REFRESH_DROP:
                    self._recompute()
            if n == w:
                self.std = math.sqrt(self.m2 * self.invwm1)
            else:
                self.std = math.sqrt(self.m2 / (n - 1)) if n >= 2 else math.nan
            # EWMA
            v = r * r if self.nret == 1 else self.a * self.evar + (1.0 - self.a) * r * r
            self.evar = v
            self.ewma = math.sqrt(v)
        # ATR over bars
        bar = ts // self.bar_ns
        if self.bar < 0:
            self.bar = bar
            self.bh = self.bl = self.bc = price
        elif bar <= self.bar:
            if price > self.bh:
                self.bh = price
            if price < self.bl:
                self.bl = price
            self.bc = price
        else:
            h, lo = self.bh, self.bl
            tr = h - lo
            if self.nbars > 0:
                tr = max(tr, abs(h - self.pc), abs(lo - self.pc))
            self.nbars += 1
            self.pc = self.bc
            p = self.period
            if self.nbars < p:
                self.trsum += tr
            elif self.nbars == p:
                self.trsum += tr
                self.atr_v = self.atr = self.trsum / p
            else:
                self.atr_v = self.atr = (self.atr_v * (p - 1.0) + tr) / p
            self.bar = bar
            self.bh = self.bl = self.bc = price
        return 1

    def batch(self, prices, ts):
        """The batch form in pure Python: lists of (std, ewma, atr) after each tick."""
        out_s, out_e, out_a = [], [], []
        upd = self.update
        for p, t in zip(prices, ts):
            upd(p, t)
            out_s.append(self.std)
            out_e.append(self.ewma)
            out_a.append(self.atr)
        return out_s, out_e, out_a


def _linear_scan(x, a, v0):
    """v[i] = a*v[i-1] + (1-a)*x[i] with v[-1] = v0, vectorised in blocks (closed form inside a
    block, a short Python loop over blocks for the carries)."""
    n = x.shape[0]
    if n == 0:
        return np.empty(0)
    if a == 0.0:
        return x.astype(np.float64, copy=True)
    b = int(min(512, max(8, 200.0 / -math.log10(a))))      # a**-b stays far from overflow
    nb = -(-n // b)
    xp = np.zeros(nb * b)
    xp[:n] = x
    xb = xp.reshape(nb, b)
    j = np.arange(b, dtype=np.float64)
    up = a ** -j                                            # a^-m
    down = a ** j                                           # a^j
    local = (1.0 - a) * down * np.cumsum(xb * up, axis=1)   # zero carry-in
    carry_w = a ** (j + 1.0)                                # weight of the carry-in
    ends = local[:, -1]
    ab = a ** b
    carries = np.empty(nb)
    c = v0
    for k in range(nb):                                     # nb = n / 512 iterations
        carries[k] = c
        c = ab * c + ends[k]
    out = local + carries[:, None] * carry_w[None, :]
    return out.reshape(-1)[:n]


def numpy_batch(prices, ts, window: int, alpha: float, bar_ns: int, period: int):
    """Vectorised numpy twin of ``kernels.batch`` on a fresh state: (std, ewma, atr) per tick."""
    p = np.asarray(prices, dtype=np.float64)
    t = np.asarray(ts, dtype=np.int64)
    n = p.shape[0]
    std = np.full(n, np.nan)
    ewma = np.full(n, np.nan)
    atr = np.full(n, np.nan)
    if n == 0:
        return std, ewma, atr
    r = np.log1p(np.diff(p) / p[:-1])                       # return i belongs to tick i+1
    m = r.shape[0]
    if m:
        # rolling variance over the last `window` returns (shifted sums: shift = global mean)
        shift = r.mean()
        y = r - shift
        c1 = np.concatenate(([0.0], np.cumsum(y)))
        c2 = np.concatenate(([0.0], np.cumsum(y * y)))
        idx = np.arange(1, m + 1)
        lo = np.maximum(0, idx - window)
        cnt = (idx - lo).astype(np.float64)
        s1 = c1[idx] - c1[lo]
        s2 = c2[idx] - c2[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (s2 - s1 * s1 / cnt) / (cnt - 1.0)
        var = np.where(var > 0.0, var, 0.0)
        sd = np.sqrt(var)
        sd[cnt < 2] = np.nan
        std[1:] = sd
        # EWMA seeded with the first squared return
        x = r * r
        ewma[1:] = np.sqrt(_linear_scan(x, alpha, x[0]))
    # bars: a new bar wherever the bar id changes
    bar = t // bar_ns
    starts = np.flatnonzero(np.concatenate(([True], bar[1:] != bar[:-1])))
    nbar = starts.shape[0]
    if nbar > 1:
        hi = np.maximum.reduceat(p, starts)[:-1]            # the last bar never completes
        lo_ = np.minimum.reduceat(p, starts)[:-1]
        ends = np.concatenate((starts[1:], [n])) - 1
        close = p[ends][:-1]
        tr = hi - lo_
        if tr.shape[0] > 1:
            pc = close[:-1]
            tr[1:] = np.maximum(tr[1:], np.maximum(np.abs(hi[1:] - pc), np.abs(lo_[1:] - pc)))
        ncomp = tr.shape[0]
        atr_bars = np.full(ncomp, np.nan)
        if ncomp >= period:
            first = tr[:period].sum() / period
            atr_bars[period - 1] = first
            if ncomp > period:
                atr_bars[period:] = _linear_scan(tr[period:], (period - 1.0) / period, first)
        # tick i in bar j (0-based) sees the ATR after bar j-1 completed
        bar_of_tick = np.cumsum(np.concatenate(([0], (bar[1:] != bar[:-1]).astype(np.int64))))
        known = bar_of_tick - 1
        ok = known >= 0
        atr[ok] = atr_bars[known[ok]]
    return std, ewma, atr
