"""tools.report.html formatting (money shown exactly, never rounded) and charts.downsample."""
from decimal import Decimal as D

import numpy as np
import pytest

from tools.report import charts as C
from tools.report import html as H


@pytest.mark.parametrize("value, shown", [
    (D("0.84436280000"), "0.8443628"), (D("100000"), "100,000.00"), (D("-1234.5"), "-1,234.50"),
    (D("1E+2"), "100.00"), (D("0.0000000012"), "0.0000000012"), (D("-0"), "-0.00"), (None, "-"),
    (D("65000.123456789012345678901234"), "65,000.123456789012345678901234"),
])
def test_money_is_exact(value, shown):
    assert H.money(value) == shown
    if value is not None:
        assert D(shown.replace(",", "")) == value          # nothing lost


def test_figures_table_formats_undefined_and_escapes_names():
    f = {"net_pnl": D("-1.5"), "sharpe": None, "win_rate": 0.25, "risk_refusals": {"MAX_POSITION": 2},
         "max_position": {"BTC-USD": D("0.00100000")}, "drawdown_recovery_ns": None}
    page = H.figures_table([("strategy <b>x</b>", f)])
    assert "strategy &lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert '<td class="neg">-1.50</td>' in page
    assert "<td>25%</td>" in page and "MAX_POSITION 2" in page and "BTC-USD 0.001" in page
    row = next(line for line in page.splitlines() if "Sharpe (annualised)" in line)
    assert "<td>-</td>" in row


def test_downsample_keeps_every_bucket_extreme_and_both_ends():
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.integers(1, 1000, 200_000)).astype(np.int64)
    y = np.cumsum(rng.normal(size=200_000))
    ts, ys = C.downsample(t, y, buckets=500)
    assert len(ts) <= 3 * 500 + 1 and np.all(np.diff(ts) > 0)
    assert (ts[0], ts[-1]) == (t[0], t[-1])
    assert ys.min() == y.min() and ys.max() == y.max()
    b = ((t - t[0]).astype(np.float64) * 499 / (t[-1] - t[0])).astype(np.int64)
    bs = ((ts - t[0]).astype(np.float64) * 499 / (t[-1] - t[0])).astype(np.int64)
    for k in (0, 17, 250, 499):                       # each bucket's own min and max survive
        assert y[b == k].min() == ys[bs == k].min() and y[b == k].max() == ys[bs == k].max()
    short_t, short_y = C.downsample(t[:100], y[:100])
    assert np.array_equal(short_t, t[:100]) and np.array_equal(short_y, y[:100])
