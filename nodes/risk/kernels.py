"""Volatility kernels, compiled with Numba: rolling stddev of log returns, EWMA variance, Wilder ATR.

The whole state of one product's bands lives in ONE float64 array (layout below: parameters,
kernel state, outputs, then the ring buffer of the rolling window). ``update(st, price, ts_ns)`` is
the per-tick O(1) incremental form that updates every band of the product in one jitted call (a
Numba call costs ~300 ns of dispatch, so one call per tick, not one per kernel). ``batch(st,
prices, ts, out_std, out_ewma, out_atr)`` is the batch form over arrays (warm-up from history,
benchmarks, checks): the same arithmetic in the same order with the state in local variables for
the whole loop (bit-identical results, tested), leaving ``st`` ready for live updates. Each kernel also has a standalone batch form (``std_batch``, ``ewma_batch``,
``atr_batch``) and a step form (``std_step``, ``ewma_step``, ``atr_step``).

Numerics
* Log returns are ``log(p / prev)`` computed as ``2 atanh(u)``, ``u = (p - prev) / (p + prev)``, by a
  short series for tick-sized moves (``_logret``): ``p - prev`` is exact for nearby prices
  (Sterbenz), so tiny moves on prices near 1e5 keep their precision (``log(p / prev)`` through a
  rounded ratio would not); within two ulps of the exact logarithm. Moves over ~0.2% take libm's
  ``log1p((p - prev) / prev)``.
* The rolling variance is a sliding Welford update (mean and M2, never raw sums of squares, which
  lose everything to cancellation on large means). Removing a value can still cancel (a huge jump
  leaving the window), so the M2 is recomputed exactly (two-pass over the ring) when it falls below
  1e-4 of its peak since the last recompute, and in any case every 16 windows of replacements:
  the cost stays amortised O(1) and the rounding error bounded (relative error of M2 below about
  16 x window x 1.1e-16 x 1e4, i.e. ~5e-9 for a 300-tick window; measured far lower).
* EWMA is RiskMetrics style on zero-mean returns: ``var = a*var + (1-a)*r^2``, seeded with the first
  squared return.
* ATR: ticks are aggregated into bars of ``bar_ns`` nanoseconds (bar id = ts // bar_ns); a bar
  completes when a tick of a later bar arrives (intervals without ticks make no bar; the gap shows
  in the next true range through the previous close). TR = max(H-L, |H-Cprev|, |L-Cprev|) (H-L for
  the first bar); the first ATR is the mean of the first ``period`` TRs, then Wilder's smoothing
  ``atr = (atr*(period-1) + TR) / period``. A tick stamped earlier than the current bar counts in
  the current bar.
Outputs are NaN until defined: stddev needs 2 returns, EWMA 1 return, ATR ``period`` bars.

Compilation: every kernel has an explicit signature (production dtypes: float64 state and prices,
int64 nanosecond timestamps, C-contiguous arrays), so Numba compiles it, or loads it from its cache
(``cache=True``, next to this file or in ``NUMBA_CACHE_DIR``), when this module is imported; the
node's ``setup()`` then runs ``warm()`` once before serving. No order ever pays a compile.
"""
import math

import numpy as np
import numpy.ma  # noqa: F401  Numba's typeof() imports it lazily on the first call: pay it here
from numba import njit

# --- state layout (indices into the float64 state array) -----------------------------------------
P_WINDOW = 0      # parameters
P_ALPHA = 1
P_BAR_NS = 2
P_PERIOD = 3
S_PREV = 4        # previous price (0: none yet)
S_N = 5           # returns in the window (<= window)
S_HEAD = 6        # ring slot of the oldest return (overwritten next once full)
S_MEAN = 7
S_M2 = 8
S_PEAK = 9        # peak M2 since the last exact recompute
S_SINCE = 10      # replacements since the last exact recompute
S_NRET = 11       # returns seen in total
S_EVAR = 12       # EWMA variance
S_BAR = 13        # current bar id (-1: none)
S_BH = 14         # current bar high / low / close
S_BL = 15
S_BC = 16
S_PC = 17         # previous bar close
S_NBARS = 18      # completed bars
S_TRSUM = 19      # sum of the first `period` true ranges
S_ATR = 20
O_STD = 21        # outputs: rolling stddev of log returns, sqrt(EWMA var), ATR (price units)
O_EWMA = 22
O_ATR = 23
S_NTICK = 24      # ticks accepted
S_RECOMP = 25     # exact recomputes done (diagnostics)
P_INVW = 26       # 1 / window and 1 / (window - 1): multiplications in the steady state
P_INVWM1 = 27
RING = 32         # ring buffer of the last `window` returns starts here

REFRESH_DROP = 1e-4   # exact recompute when M2 falls below this fraction of its peak
REFRESH_WINDOWS = 16  # and in any case after this many windows' worth of replacements
LOGRET_FAST = 1e-3    # |u| below this: the atanh series for log returns (see _logret)
CHUNK = 512           # batch: returns are computed a chunk at a time into an L1-resident buffer


def new_state(window: int, alpha: float, bar_ns: int, period: int) -> np.ndarray:
    """A fresh state array for one product."""
    if window < 2 or not (0.0 < alpha < 1.0) or bar_ns < 1000 or period < 1:
        # bar ids (ts // bar_ns) live in the float64 state: exact below 2**53, i.e. for any
        # epoch-nanosecond timestamp as long as bars are at least a microsecond
        raise ValueError("bad kernel parameters (window >= 2, 0 < alpha < 1, bar_ns >= 1000, period >= 1)")
    st = np.zeros(RING + window, dtype=np.float64)
    st[P_WINDOW] = window
    st[P_ALPHA] = alpha
    st[P_BAR_NS] = bar_ns
    st[P_PERIOD] = period
    st[P_INVW] = 1.0 / window
    st[P_INVWM1] = 1.0 / (window - 1)
    st[S_BAR] = -1.0
    st[O_STD] = st[O_EWMA] = st[O_ATR] = np.nan
    return st


@njit(inline="always", cache=True, error_model="numpy")
def _atanh2(u):
    """2 atanh(u) by its series to u^5 (for |u| < LOGRET_FAST the first omitted term, u^7 * 2/7,
    is below 1.5e-19 of the result: under a thousandth of an ulp)."""
    u2 = u * u
    t = 2.0 * u
    return t + t * (u2 * (1.0 / 3.0 + u2 * 0.2))


@njit(inline="always", cache=True, error_model="numpy")
def _logret(price, prev):
    """The log return log(price / prev) of two positive finite prices. Tick-sized moves (|u| <
    LOGRET_FAST, i.e. moves under about 0.2%) take log(p/q) = 2 atanh(u) with u = (p - q) / (p + q):
    ``p - q`` is exact for nearby prices (Sterbenz), so tiny moves on prices near 1e5 keep their
    precision, and one division plus a short polynomial is several times cheaper than libm (measured
    within 2.7e-16 relative of the exact logarithm of the two floats). Larger moves take libm's
    log1p((p - q) / q). The batch form computes the same expression, vectorised, bit for bit."""
    u = (price - prev) / (price + prev)
    if abs(u) < LOGRET_FAST:
        return _atanh2(u)
    return math.log1p((price - prev) / prev)


@njit("UniTuple(float64, 2)(float64[::1], int64)", cache=True, error_model="numpy")
def _exact_moments(st, n):
    """Exact (corrected two-pass) mean and M2 of the n returns in the ring (order is irrelevant)."""
    s = 0.0
    for i in range(n):
        s += st[RING + i]
    mean = s / n
    m2 = 0.0
    c = 0.0
    for i in range(n):
        d = st[RING + i] - mean
        m2 += d * d
        c += d
    m2 -= c * c / n          # the corrected two-pass: removes the rounding error of the mean
    if m2 < 0.0:
        m2 = 0.0
    return mean + c / n, m2


@njit("void(float64[::1])", cache=True, error_model="numpy")
def _recompute(st):
    mean, m2 = _exact_moments(st, int(st[S_N]))
    st[S_MEAN] = mean
    st[S_M2] = m2
    st[S_PEAK] = m2
    st[S_SINCE] = 0.0
    st[S_RECOMP] += 1.0


@njit("void(float64[::1], float64)", cache=True, error_model="numpy")
def std_step(st, r):
    """Add one log return to the rolling window (O(1) amortised); writes st[O_STD]."""
    w = int(st[P_WINDOW])
    n = int(st[S_N])
    if n < w:
        st[RING + n] = r
        n += 1
        st[S_N] = n
        d = r - st[S_MEAN]
        st[S_MEAN] += d / n
        st[S_M2] += d * (r - st[S_MEAN])
        if st[S_M2] < 0.0:
            st[S_M2] = 0.0
        if st[S_M2] > st[S_PEAK]:
            st[S_PEAK] = st[S_M2]
    else:
        h = int(st[S_HEAD])
        old = st[RING + h]
        st[RING + h] = r
        h += 1
        st[S_HEAD] = h if h < w else 0
        mean = st[S_MEAN]
        new_mean = mean + (r - old) * st[P_INVW]
        m2 = st[S_M2] + (r - old) * (r - new_mean + old - mean)
        st[S_MEAN] = new_mean
        st[S_M2] = m2 if m2 > 0.0 else 0.0
        st[S_SINCE] += 1.0
        if st[S_M2] > st[S_PEAK]:
            st[S_PEAK] = st[S_M2]
        if st[S_SINCE] >= REFRESH_WINDOWS * w or st[S_M2] < st[S_PEAK] * REFRESH_DROP:
            _recompute(st)
    if n == w:
        st[O_STD] = math.sqrt(st[S_M2] * st[P_INVWM1])
    elif n >= 2:
        st[O_STD] = math.sqrt(st[S_M2] / (n - 1))
    else:
        st[O_STD] = np.nan


@njit("void(float64[::1], float64)", cache=True, error_model="numpy")
def ewma_step(st, r):
    """RiskMetrics EWMA variance of log returns; writes st[O_EWMA] = sqrt(var)."""
    a = st[P_ALPHA]
    if st[S_NRET] <= 1.0:       # S_NRET counts this return already: seed with the first one
        v = r * r
    else:
        v = a * st[S_EVAR] + (1.0 - a) * r * r
    st[S_EVAR] = v
    st[O_EWMA] = math.sqrt(v)


@njit(inline="always", cache=True, error_model="numpy")
def _true_range(h, lo, pc, nbars):
    """True range of a closing bar: H - L, widened to the previous close once there is one
    (``nbars``: bars closed before this one)."""
    tr = h - lo
    if nbars > 0.0:
        a = abs(h - pc)
        b = abs(lo - pc)
        if a > tr:
            tr = a
        if b > tr:
            tr = b
    return tr


@njit(inline="always", cache=True, error_model="numpy")
def _wilder(nbars, tr, trsum, atr, period):
    """Fold the true range of bar number ``nbars`` (from 1) in: the first ATR is the mean of the
    first ``period`` ranges, then Wilder's smoothing. Returns (trsum, atr, ATR defined)."""
    if nbars < period:
        return trsum + tr, atr, False
    if nbars == period:
        trsum += tr
        return trsum, trsum / period, True
    return trsum, (atr * (period - 1.0) + tr) / period, True


@njit("void(float64[::1], float64, int64)", cache=True, error_model="numpy")
def atr_step(st, price, ts):
    """Aggregate one tick into bars; on a bar close update Wilder's ATR; writes st[O_ATR]."""
    bar_ns = np.int64(st[P_BAR_NS])
    cur = st[S_BAR]
    if cur < 0.0:
        st[S_BAR] = float(ts // bar_ns)
        st[S_BH] = st[S_BL] = st[S_BC] = price
        return
    if ts < (np.int64(cur) + 1) * bar_ns:     # same bar (or a late tick): extend it
        if price > st[S_BH]:
            st[S_BH] = price
        if price < st[S_BL]:
            st[S_BL] = price
        st[S_BC] = price
        return
    # a later bar: close the current one
    nb = st[S_NBARS]
    tr = _true_range(st[S_BH], st[S_BL], st[S_PC], nb)
    nb += 1.0
    st[S_NBARS] = nb
    st[S_PC] = st[S_BC]
    trsum, atr, ready = _wilder(nb, tr, st[S_TRSUM], st[S_ATR], st[P_PERIOD])
    st[S_TRSUM] = trsum
    st[S_ATR] = atr
    if ready:
        st[O_ATR] = atr
    st[S_BAR] = float(ts // bar_ns)
    st[S_BH] = st[S_BL] = st[S_BC] = price


@njit("int64(float64[::1], float64, int64)", cache=True, error_model="numpy")
def update(st, price, ts):
    """THE per-tick call: every band of one product in one jitted call. Returns 1 if the tick was
    used, 0 if refused (a price that is not a finite positive number)."""
    if not (price > 0.0) or price == np.inf:
        return 0
    st[S_NTICK] += 1.0
    prev = st[S_PREV]
    st[S_PREV] = price
    if prev > 0.0:
        r = _logret(price, prev)
        st[S_NRET] += 1.0
        std_step(st, r)
        ewma_step(st, r)
    atr_step(st, price, ts)
    return 1


@njit("int64(float64[::1], float64[::1], int64[::1], float64[::1], float64[::1], float64[::1])", cache=True, error_model="numpy")
def batch(st, prices, ts, out_std, out_ewma, out_atr):
    """The batch form: exactly the arithmetic of ``update`` (same operations in the same order, so
    the outputs and the final state are bit-identical), with the state held in local variables
    for the length of the loop instead of in the array. Outputs after each tick; returns the
    number of ticks used; leaves ``st`` ready for live ``update`` calls.

    Prices go through in chunks of CHUNK: (1) the chunk's log returns into a small buffer, in
    vectorised loops when every price of the chunk is valid (the usual case; the scalar rules of
    ``update`` otherwise); (2a) the rolling stddev and EWMA recurrences over those returns; (2b) the
    bars and ATR over the prices and stamps. Three short loops, each with few live values, instead of
    one long one (measured 8.8 -> 7.0 ns per price on 10 M prices, the whole gain of the layout)."""
    w = int(st[P_WINDOW])
    a = st[P_ALPHA]
    bar_ns = np.int64(st[P_BAR_NS])
    period = st[P_PERIOD]
    invw = st[P_INVW]
    invwm1 = st[P_INVWM1]
    oma = 1.0 - a
    prev = st[S_PREV]
    n = int(st[S_N])
    head = int(st[S_HEAD])
    mean = st[S_MEAN]
    m2 = st[S_M2]
    peak = st[S_PEAK]
    since = st[S_SINCE]
    nret = st[S_NRET]
    evar = st[S_EVAR]
    cur = st[S_BAR]
    bh = st[S_BH]
    bl = st[S_BL]
    bc = st[S_BC]
    pc = st[S_PC]
    nbars = st[S_NBARS]
    trsum = st[S_TRSUM]
    atr = st[S_ATR]
    o_std = st[O_STD]
    o_ewma = st[O_EWMA]
    o_atr = st[O_ATR]
    ntick = st[S_NTICK]
    recomp = st[S_RECOMP]
    # end of the current bar; with no bar yet, below every timestamp (the first tick opens one)
    bar_end = (np.int64(cur) + 1) * bar_ns if cur >= 0.0 else np.int64(-9223372036854775808)
    used = 0
    rbuf = np.empty(CHUNK)
    ring = st[RING:RING + w]
    npx = prices.shape[0]
    for i0 in range(0, npx, CHUNK):
        m = min(CHUNK, npx - i0)
        px = prices[i0:i0 + m]          # chunk views: indices provably in range, no wraparound
        tx = ts[i0:i0 + m]
        os_ = out_std[i0:i0 + m]
        oe = out_ewma[i0:i0 + m]
        oa = out_atr[i0:i0 + m]
        rb = rbuf[:m]
        # 1. the chunk's log returns into rb (rb[k] belongs to px[k]; NaN: no return for it).
        # One vectorised pass counts the valid prices and computes u = (p - q) / (p + q) and the
        # atanh series for every price against the one before (the first against prev); it is
        # kept when every price is valid and there is a previous price (the usual case), and
        # moves too large for the series (rare) are redone with libm, as _logret does.
        x = px[0]
        good = 1 if (x > 0.0 and x < np.inf) else 0
        u = (x - prev) / (x + prev)
        big = 1 if abs(u) >= LOGRET_FAST else 0
        rb[0] = _atanh2(u)
        for k in range(1, m):
            x = px[k]
            y = px[k - 1]
            good += 1 if (x > 0.0 and x < np.inf) else 0
            u = (x - y) / (x + y)
            big += 1 if abs(u) >= LOGRET_FAST else 0
            rb[k] = _atanh2(u)
        used += good
        allgood = good == m
        if allgood and prev > 0.0:
            if big:
                y = prev
                for k in range(m):
                    x = px[k]
                    if not (abs((x - y) / (x + y)) < LOGRET_FAST):
                        rb[k] = math.log1p((x - y) / y)
                    y = x
            prev = px[m - 1]
        else:
            # an invalid price or no previous price: the scalar rules of ``update``
            for k in range(m):
                x = px[k]
                rb[k] = np.nan
                if not (x > 0.0) or x == np.inf:
                    continue
                if prev > 0.0:
                    rb[k] = _logret(x, prev)
                prev = x
        # 2. the recurrences, in two loops over the chunk (fewer live values in each)
        # 2a. rolling stddev and EWMA, from the returns
        for k in range(m):
            r = rb[k]
            if r != r:                      # no return for this tick (refused, or the first price)
                os_[k] = o_std
                oe[k] = o_ewma
                continue
            nret += 1.0
            if n < w:
                ring[n] = r
                n += 1
                d = r - mean
                mean += d / n
                m2 += d * (r - mean)
                if m2 < 0.0:
                    m2 = 0.0
                if m2 > peak:
                    peak = m2
            else:
                old = ring[head]
                ring[head] = r
                head += 1
                if head >= w:
                    head = 0
                new_mean = mean + (r - old) * invw
                m2n = m2 + (r - old) * (r - new_mean + old - mean)
                mean = new_mean
                m2 = m2n if m2n > 0.0 else 0.0
                since += 1.0
                if m2 > peak:
                    peak = m2
                if since >= REFRESH_WINDOWS * w or m2 < peak * REFRESH_DROP:
                    mean, m2 = _exact_moments(st, n)
                    peak = m2
                    since = 0.0
                    recomp += 1.0
            if n == w:
                o_std = math.sqrt(m2 * invwm1)
            elif n >= 2:
                o_std = math.sqrt(m2 / (n - 1))
            else:
                o_std = np.nan
            if nret <= 1.0:
                evar = r * r
            else:
                evar = a * evar + oma * r * r
            o_ewma = math.sqrt(evar)
            os_[k] = o_std
            oe[k] = o_ewma
        # 2b. bars and ATR, from the prices and stamps
        for k in range(m):
            price = px[k]
            t = tx[k]
            if not allgood and (not (price > 0.0) or price == np.inf):
                oa[k] = o_atr
                continue
            if t < bar_end:                 # the current bar (or a late tick)
                bh = max(bh, price)
                bl = min(bl, price)
                bc = price
            elif cur < 0.0:                 # the very first tick opens the first bar
                cur = float(t // bar_ns)
                bar_end = (np.int64(cur) + 1) * bar_ns
                bh = price
                bl = price
                bc = price
            else:                           # a later bar: close the current one
                tr = _true_range(bh, bl, pc, nbars)
                nbars += 1.0
                pc = bc
                trsum, atr, ready = _wilder(nbars, tr, trsum, atr, period)
                if ready:
                    o_atr = atr
                if t < bar_end + bar_ns:    # the next bar (no 64-bit division)
                    cur += 1.0
                    bar_end += bar_ns
                else:
                    cur = float(t // bar_ns)
                    bar_end = (np.int64(cur) + 1) * bar_ns
                bh = price
                bl = price
                bc = price
            oa[k] = o_atr
    st[S_PREV] = prev
    st[S_N] = n
    st[S_HEAD] = head
    st[S_MEAN] = mean
    st[S_M2] = m2
    st[S_PEAK] = peak
    st[S_SINCE] = since
    st[S_NRET] = nret
    st[S_EVAR] = evar
    st[S_BAR] = cur
    st[S_BH] = bh
    st[S_BL] = bl
    st[S_BC] = bc
    st[S_PC] = pc
    st[S_NBARS] = nbars
    st[S_TRSUM] = trsum
    st[S_ATR] = atr
    st[O_STD] = o_std
    st[O_EWMA] = o_ewma
    st[O_ATR] = o_atr
    st[S_NTICK] = ntick + used
    st[S_RECOMP] = recomp
    return used


# --- standalone batch forms of each kernel (same step code) --------------------------------------

@njit("float64[::1](float64[::1], float64[::1])", cache=True, error_model="numpy")
def std_batch(returns, st):
    """Rolling stddev (ddof=1) of ``returns`` over st[P_WINDOW]; NaN until 2 values. ``st`` is a
    state array from ``new_state`` (the batch continues from it and leaves it updated)."""
    out = np.empty(returns.shape[0])
    for i in range(returns.shape[0]):
        std_step(st, returns[i])
        out[i] = st[O_STD]
    return out


@njit("float64[::1](float64[::1], float64[::1])", cache=True, error_model="numpy")
def ewma_batch(returns, st):
    """sqrt of the EWMA variance after each return (alpha from ``st``)."""
    out = np.empty(returns.shape[0])
    for i in range(returns.shape[0]):
        st[S_NRET] += 1.0
        ewma_step(st, returns[i])
        out[i] = st[O_EWMA]
    return out


@njit("float64[::1](float64[::1], int64[::1], float64[::1])", cache=True, error_model="numpy")
def atr_batch(prices, ts, st):
    """Wilder ATR known after each tick (bars of st[P_BAR_NS], period st[P_PERIOD])."""
    out = np.empty(prices.shape[0])
    for i in range(prices.shape[0]):
        atr_step(st, prices[i], ts[i])
        out[i] = st[O_ATR]
    return out


@njit("float64[::1](float64[::1])", cache=True, error_model="numpy")
def log_returns(prices):
    out = np.empty(max(prices.shape[0] - 1, 0))
    for i in range(1, prices.shape[0]):
        out[i - 1] = _logret(prices[i], prices[i - 1])
    return out


def warm(window: int = 8, alpha: float = 0.94, bar_ns: int = 1_000_000_000, period: int = 3):
    """Compile (or load from the cache) every kernel with the production dtypes: float64 state and
    prices, int64 timestamps. Call before the first tick so no order ever pays a compile."""
    st = new_state(window, alpha, bar_ns, period)
    n = 3 * window
    p = 100.0 + np.arange(n, dtype=np.float64) * 0.01
    t = np.arange(n, dtype=np.int64) * bar_ns
    update(st, 100.0, np.int64(0))
    update(st, float(p[1]), int(t[1]))    # python float/int arguments as the node passes them
    o1, o2, o3 = np.empty(n), np.empty(n), np.empty(n)
    batch(st, p, t, o1, o2, o3)
    r = log_returns(p)
    std_batch(r, new_state(window, alpha, bar_ns, period))
    ewma_batch(r, new_state(window, alpha, bar_ns, period))
    atr_batch(p, t, new_state(window, alpha, bar_ns, period))
    return st
