"""The volatility kernels: incremental and batch forms against plain numpy/Python references on
random and adversarial series (hypothesis), and the rolling stddev against an exact Fraction
reference."""
import math
import decimal
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nodes.risk import kernels as K
from nodes.risk.reference import PyBands, numpy_batch

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


# --- plain references (written independently of the kernels) ------------------------------------

def ref_returns(p):
    return [math.log1p((p[i] - p[i - 1]) / p[i - 1]) for i in range(1, len(p))]


def ref_rolling_std(r, w):
    """Two-pass numpy std (ddof=1) of every window: accurate, O(n*w)."""
    out = []
    for i in range(len(r)):
        win = np.asarray(r[max(0, i - w + 1):i + 1])
        out.append(float(np.std(win, ddof=1)) if len(win) >= 2 else math.nan)
    return out


def ref_ewma(r, a):
    out, v = [], None
    for x in r:
        v = x * x if v is None else a * v + (1 - a) * x * x
        out.append(math.sqrt(v))
    return out


def ref_atr(p, ts, bar_ns, period):
    """Bars first (list of [bar, high, low, close]), then Wilder; per tick: ATR of completed bars."""
    bars = []
    for px, t in zip(p, ts):
        b = t // bar_ns
        if bars and b <= bars[-1][0]:
            bars[-1][1] = max(bars[-1][1], px)
            bars[-1][2] = min(bars[-1][2], px)
            bars[-1][3] = px
        else:
            bars.append([b, px, px, px])
    # ATR after k completed bars
    trs = []
    for k in range(1, len(bars)):
        _, h, lo, _c = bars[k - 1]
        tr = h - lo if k == 1 else max(h - lo, abs(h - bars[k - 2][3]), abs(lo - bars[k - 2][3]))
        trs.append(tr)
    atr_after = [math.nan]            # index: completed bars
    atr = math.nan
    for k, tr in enumerate(trs, 1):
        if k < period:
            atr = math.nan
        elif k == period:
            atr = sum(trs[:period]) / period
        else:
            atr = (atr * (period - 1) + tr) / period
        atr_after.append(atr)
    out = []
    nb = 0
    cur = None
    for px, t in zip(p, ts):
        b = t // bar_ns
        if cur is None:
            cur = b
        elif b > cur:
            cur = b
            nb += 1
        out.append(atr_after[nb])
    return out


def run_incremental(p, ts, w, a, bar_ns, period):
    st = K.new_state(w, a, bar_ns, period)
    out = np.empty((len(p), 3))
    for i, (px, t) in enumerate(zip(p, ts)):
        K.update(st, float(px), int(t))
        out[i] = st[K.O_STD], st[K.O_EWMA], st[K.O_ATR]
    return out, st


def run_batch(p, ts, w, a, bar_ns, period):
    st = K.new_state(w, a, bar_ns, period)
    n = len(p)
    o = [np.empty(n) for _ in range(3)]
    used = K.batch(st, np.ascontiguousarray(p, dtype=np.float64), np.ascontiguousarray(ts, dtype=np.int64), *o)
    assert used == n
    return np.stack(o, axis=1), st


def assert_close_nan(a, b, rtol, atol, what):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN pattern differs"
    m = ~np.isnan(a)
    atol = np.broadcast_to(atol, a.shape)[m] if np.ndim(atol) else atol
    err = np.abs(a[m] - b[m])
    lim = atol + rtol * np.abs(b[m])
    bad = np.flatnonzero(err > lim)
    assert bad.size == 0, f"{what}: {bad.size} points off, worst at {bad[0]}: {a[m][bad[0]]!r} vs {b[m][bad[0]]!r}"


def check_all(p, ts, w, a, bar_ns, period):
    inc, st_i = run_incremental(p, ts, w, a, bar_ns, period)
    bat, st_b = run_batch(p, ts, w, a, bar_ns, period)
    # the two forms run the same step code: identical results and identical end state
    assert np.array_equal(inc, bat, equal_nan=True)
    assert np.array_equal(st_i, st_b, equal_nan=True)
    r = ref_returns(list(p))
    std_ref = [math.nan] + ref_rolling_std(r, w)
    # per-window absolute floor: 1e-9 of the largest |return| in the window (exactly-zero
    # variances are compared against rounding noise of the returns themselves)
    floor = [0.0] + [1e-9 * max(abs(x) for x in r[max(0, i - w + 1):i + 1]) for i in range(len(r))]
    assert_close_nan(inc[:, 0], std_ref, 1e-6, np.asarray(floor) + 1e-300, "rolling stddev")
    ew_ref = [math.nan] + ref_ewma(r, a)
    assert_close_nan(inc[:, 1], ew_ref, 1e-9, 1e-300, "ewma")
    atr_ref = ref_atr(list(p), list(ts), bar_ns, period)
    assert_close_nan(inc[:, 2], atr_ref, 1e-9, 1e-9 * float(np.max(p)), "atr")
    # the pure-Python twin gives the same numbers (it takes libm's log1p where the kernel has a
    # polynomial fast path for tiny moves: returns may differ in the last bit)
    py = PyBands(w, a, bar_ns, period)
    s, e, t = py.batch([float(x) for x in p], [int(x) for x in ts])
    assert_close_nan(inc[:, 0], s, 1e-9, np.asarray(floor) + 1e-300, "PyBands stddev")
    assert_close_nan(inc[:, 1], e, 1e-12, 1e-300, "PyBands ewma")
    assert_close_nan(inc[:, 2], t, 1e-12, 1e-300, "PyBands atr")
    return inc


# --- series strategies -----------------------------------------------------------------------------

@st.composite
def series(draw):
    kind = draw(st.sampled_from(["walk", "constant", "jumps", "tiny_near_1e5", "gaps", "mixed"]))
    n = draw(st.integers(2, 160))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = draw(st.sampled_from([0.5, 1.0, 187.3, 65000.0, 99999.99, 1e5]))
    if kind == "walk":
        p = base * np.exp(np.cumsum(rng.normal(0, draw(st.sampled_from([1e-6, 1e-4, 1e-2])), n)))
    elif kind == "constant":
        p = np.full(n, base)
    elif kind == "jumps":
        r = rng.normal(0, 1e-5, n)
        idx = rng.integers(0, n, size=max(1, n // 40))
        r[idx] = rng.choice([-2.0, -0.9, 0.7, 3.0], size=idx.size)   # x0.13 .. x20 in one tick
        p = base * np.exp(np.cumsum(r))
    elif kind == "tiny_near_1e5":
        p = 1e5 + np.cumsum(rng.choice([-0.01, 0.0, 0.01], n))          # moves of 1e-7 relative
    elif kind == "gaps":
        p = base * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    else:
        p = np.concatenate([np.full(n // 2, base), base * np.exp(np.cumsum(rng.normal(0, 1e-3, n - n // 2)))])
        p[n // 3] *= 50.0
    p = np.maximum(p, 1e-6)
    if kind == "gaps":
        steps = rng.choice([0, SEC // 10, SEC, 37 * SEC, 3600 * SEC], size=n, p=[0.2, 0.4, 0.2, 0.15, 0.05])
    else:
        steps = rng.integers(0, 2 * SEC, n)
    ts = T0 + np.cumsum(steps).astype(np.int64)
    w = draw(st.sampled_from([2, 3, 5, 17, 64]))
    a = draw(st.sampled_from([0.5, 0.94, 0.99]))
    bar_ns = draw(st.sampled_from([1000, SEC, 5 * SEC, 60 * SEC]))
    period = draw(st.sampled_from([1, 2, 3, 14]))
    return p, ts, w, a, bar_ns, period


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series())
def test_kernels_match_references(s):
    check_all(*s)


@pytest.mark.long
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series())
def test_kernels_match_references_long(s):
    check_all(*s)


@st.composite
def long_series(draw):
    """Batches that span several of the batch form's chunks (K.CHUNK prices), with refused prices
    (0, negative, NaN, inf) anywhere, including chunk edges, big moves (libm path), late ticks and
    bar gaps, cut into pieces that end mid-chunk."""
    n = draw(st.integers(K.CHUNK - 3, 3 * K.CHUNK + 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    r = rng.normal(0, draw(st.sampled_from([1e-6, 1e-4, 5e-3])), n)
    r[rng.integers(0, n, size=3)] = rng.choice([-1.0, 0.5], size=3)
    p = 65000.0 * np.exp(np.cumsum(r))
    nbad = draw(st.integers(0, 12))
    where = list(rng.integers(0, n, size=nbad)) + draw(st.lists(st.sampled_from(
        [0, 1, K.CHUNK - 1, K.CHUNK, K.CHUNK + 1, 2 * K.CHUNK]), max_size=4))
    for i in where:
        if i < n:
            p[i] = rng.choice([0.0, -5.0, math.nan, math.inf, -math.inf])
    steps = rng.choice([0, SEC // 10, SEC, 37 * SEC, -SEC], size=n, p=[0.2, 0.5, 0.2, 0.05, 0.05])
    ts = T0 + np.cumsum(steps).astype(np.int64)
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True)))
    return p, ts, cuts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_series(), st.sampled_from([5, 64, 300]), st.sampled_from([SEC, 5 * SEC]))
def test_batch_across_chunks_and_refused_prices_matches_per_tick_updates(s, w, bar_ns):
    p, ts, cuts = s
    st_i = K.new_state(w, 0.94, bar_ns, 14)
    inc = np.empty((len(p), 3))
    used_i = 0
    for i, (px, t) in enumerate(zip(p, ts)):
        used_i += K.update(st_i, float(px), int(t))
        inc[i] = st_i[K.O_STD], st_i[K.O_EWMA], st_i[K.O_ATR]
    st_b = K.new_state(w, 0.94, bar_ns, 14)
    bat = np.empty((len(p), 3))
    used_b = 0
    for a, b in zip([0] + cuts, cuts + [len(p)]):         # several calls continue one state
        o = [np.empty(b - a) for _ in range(3)]
        used_b += K.batch(st_b, np.ascontiguousarray(p[a:b]), np.ascontiguousarray(ts[a:b]), *o)
        bat[a:b] = np.stack(o, axis=1)
    assert used_b == used_i == int(np.sum((p > 0) & np.isfinite(p)))
    assert np.array_equal(inc, bat, equal_nan=True)
    assert np.array_equal(st_i, st_b, equal_nan=True)


def test_constant_prices_give_zero_vol():
    p = np.full(50, 65000.0)
    ts = T0 + np.arange(50, dtype=np.int64) * SEC
    out = check_all(p, ts, 10, 0.94, SEC, 3)
    assert out[-1, 0] == 0.0 and out[-1, 1] == 0.0 and out[-1, 2] == 0.0


def test_huge_jump_leaving_the_window_is_recomputed_exactly():
    # quiet market, one x10 jump and back, then quiet again: once the jump leaves the window the
    # variance is tiny again and must not carry the jump's rounding error
    rng = np.random.default_rng(7)
    r = rng.normal(0, 1e-7, 400)
    r[100], r[101] = math.log(10), -math.log(10)
    p = 65000.0 * np.exp(np.cumsum(r))
    ts = T0 + np.arange(400, dtype=np.int64) * SEC
    inc = check_all(p, ts, 50, 0.94, SEC, 3)
    rr = ref_returns(list(p))
    exact = np.std(rr[-50:], ddof=1)
    assert abs(inc[-1, 0] - exact) / exact < 1e-9


def test_tiny_window_two():
    p = np.array([100.0, 101.0, 100.0, 100.0, 102.0])
    ts = T0 + np.arange(5, dtype=np.int64) * 1000
    inc = check_all(p, ts, 2, 0.94, 1000, 1)
    r = ref_returns(list(p))
    assert inc[-1, 0] == pytest.approx(np.std(r[-2:], ddof=1), rel=1e-12)


def test_bad_prices_are_refused_and_change_nothing():
    st_ = K.new_state(5, 0.94, SEC, 2)
    K.update(st_, 100.0, T0)
    before = st_.copy()
    for bad in (0.0, -1.0, math.nan, math.inf, -math.inf):
        assert K.update(st_, bad, T0 + SEC) == 0
    assert np.array_equal(st_, before, equal_nan=True)


def test_standalone_batch_forms_agree_with_combined():
    rng = np.random.default_rng(3)
    n = 500
    p = 3000.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    ts = T0 + np.cumsum(rng.integers(0, 3 * SEC, n)).astype(np.int64)
    comb, _ = run_batch(p, ts, 20, 0.9, 10 * SEC, 5)
    r = K.log_returns(p)
    assert np.allclose(r, ref_returns(list(p)), rtol=4e-16, atol=0)   # within an ulp of libm
    sd = K.std_batch(r, K.new_state(20, 0.9, 10 * SEC, 5))
    ew = K.ewma_batch(r, K.new_state(20, 0.9, 10 * SEC, 5))
    at = K.atr_batch(p, ts, K.new_state(20, 0.9, 10 * SEC, 5))
    assert np.array_equal(sd, comb[1:, 0], equal_nan=True)
    assert np.array_equal(ew, comb[1:, 1], equal_nan=True)
    assert np.array_equal(at, comb[:, 2], equal_nan=True)


def test_batch_then_incremental_continues_the_same_state():
    """Warm-up from history with the batch form, then live ticks: same as all live."""
    rng = np.random.default_rng(5)
    n = 300
    p = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    ts = T0 + np.arange(n, dtype=np.int64) * (SEC // 3)
    all_live, _ = run_incremental(p, ts, 30, 0.94, SEC, 4)
    st_ = K.new_state(30, 0.94, SEC, 4)
    o = [np.empty(200) for _ in range(3)]
    K.batch(st_, p[:200].copy(), ts[:200].copy(), *o)
    for i in range(200, n):
        K.update(st_, float(p[i]), int(ts[i]))
    assert (st_[K.O_STD], st_[K.O_EWMA], st_[K.O_ATR]) == tuple(all_live[-1])


def test_numpy_vectorised_reference_agrees():
    rng = np.random.default_rng(11)
    n = 5000
    p = 65000.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    ts = T0 + np.cumsum(rng.integers(0, SEC, n)).astype(np.int64)
    bat, _ = run_batch(p, ts, 100, 0.94, 5 * SEC, 14)
    s, e, a = numpy_batch(p, ts, 100, 0.94, 5 * SEC, 14)
    assert_close_nan(s, bat[:, 0], 1e-7, 0.0, "numpy std")
    assert_close_nan(e, bat[:, 1], 1e-9, 0.0, "numpy ewma")
    assert_close_nan(a, bat[:, 2], 1e-9, 0.0, "numpy atr")


def test_rolling_std_against_exact_fractions():
    """Prices near 65,000 moving by cents: the stddev of log returns matches an exact rational
    computation (returns from the same floats, sums in Fractions, sqrt in 50-digit Decimal)."""
    rng = np.random.default_rng(13)
    n, w = 1500, 100
    p = 65000.0 + np.round(np.cumsum(rng.choice([-0.01, 0.0, 0.01], n)), 2)
    ts = T0 + np.arange(n, dtype=np.int64) * SEC
    st_ = K.new_state(w, 0.94, SEC, 14)
    o = [np.empty(n) for _ in range(3)]
    K.batch(st_, p, ts, *o)
    r = [Fraction(x) for x in K.log_returns(p)]      # the kernel's own float returns, exactly
    getcontext().prec = 50
    worst = 0.0
    for i in range(w - 1, len(r), 7):
        win = r[i - w + 1:i + 1]
        mean = sum(win) / w
        var = sum((x - mean) ** 2 for x in win) / (w - 1)
        exact = (Decimal(var.numerator) / Decimal(var.denominator)).sqrt()
        got = Decimal(float(o[0][i + 1]))
        worst = max(worst, float(abs(got - exact) / exact))
    assert worst < 1e-9, worst


def test_log_returns_are_within_two_ulps_of_the_exact_logarithm():
    """The atanh fast path (tick-sized moves) and the libm path (large moves) against the exact
    natural log of the ratio of the two float prices (60-digit Decimal)."""
    rng = np.random.default_rng(17)
    x = np.concatenate([rng.uniform(-2e-3, 2e-3, 3000), rng.normal(0, 1e-7, 1000), [0.0, 1e-300, -1e-300],
                        rng.uniform(-0.5, 2.0, 500)])
    base = np.concatenate([np.full(x.size // 2, 100.0), rng.uniform(1e-3, 1e5, x.size - x.size // 2)])
    p = np.empty(2 * x.size)
    p[0::2] = base
    p[1::2] = base * (1.0 + x)
    got = K.log_returns(p)[0::2]
    ctx = decimal.Context(prec=60)
    worst = 0.0
    for q, r, g in zip(p[0::2], p[1::2], got):
        exact = ctx.ln(ctx.divide(Decimal(float(r)), Decimal(float(q))))
        if exact == 0:
            assert g == 0.0
            continue
        worst = max(worst, float(abs((Decimal(float(g)) - exact) / exact)))
    assert worst <= 4e-16, worst           # within two ulps (measured 3.05e-16)


def test_warm_compiles_everything_with_production_dtypes():
    st_ = K.warm()
    assert st_[K.S_NTICK] > 0
    for f in (K.update, K.batch, K.std_batch, K.ewma_batch, K.atr_batch, K.log_returns):
        assert f.signatures, f"{f.py_func.__name__} has no compiled signature"
