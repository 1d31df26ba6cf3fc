"""The run report in a real browser: an offline run writes report.html; Debian's Chromium, headless,
opens it; every chart renders (its screenshot region is not blank) and the page loads nothing from
the network (every request the page made, as the DevTools protocol reports them, is file: or data:).

Chromium is driven over its DevTools protocol (a websocket; `websockets` is already a dependency).
Without a chromium binary the test skips, except when CI=true (.ci/run installs it): then it fails.
"""
import base64
import io
import itertools
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from PIL import Image, ImageStat
from websockets.sync.client import connect

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--remote-debugging-port=0", "--window-size=1280,900")


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "chromium not installed (Debian: apt-get install -y chromium; .ci/run does it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " and CI=true: the browser test must run in CI")
        pytest.skip(msg)
    return path


class DevTools:
    """A minimal DevTools-protocol client: one websocket, commands by id, events kept in order."""

    def __init__(self, url):
        self.ws = connect(url, max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.events = []

    def call(self, method, session=None, timeout=30.0, **params):
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            m = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if m.get("id") == msg_id:
                if "error" in m:
                    raise AssertionError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            for m in self.events:
                if m.get("method") == method:
                    return m
            self.events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))

    def close(self):
        self.ws.close()


def _devtools_url(proc, timeout=30.0) -> str:
    """Chromium prints ``DevTools listening on ws://...`` on stderr once it is ready."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.01, deadline - time.monotonic())):
            break
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "DevTools listening on " in line:
            return line.split("DevTools listening on ", 1)[1].strip()
    raise AssertionError("chromium gave no DevTools endpoint: " + "".join(seen[-10:]))


def _not_blank(png: bytes, what: str):
    img = Image.open(io.BytesIO(png)).convert("L")
    stat = ImageStat.Stat(img)
    hist = img.histogram()
    non_white = 1 - sum(hist[245:]) / (img.width * img.height)
    assert stat.stddev[0] > 10 and non_white > 0.02, \
        f"{what}: looks blank (stddev {stat.stddev[0]:.1f}, {non_white:.1%} non-white pixels)"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """``make run``'s path: an offline run, which writes its report and prints the headline figures."""
    state = tmp_path_factory.mktemp("offline-run")
    summary = state / "summary.json"
    r = subprocess.run([sys.executable, "-m", "nodes.offline", "--duration", "8", "--quiet", "--state-dir", str(state),
                        "--summary-json", str(summary)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return state, r.stdout, json.loads(summary.read_text())


@pytest.fixture(scope="module")
def offline_report(offline_run):
    return offline_run[0] / "report.html"


def test_offline_run_prints_the_report_path_and_headline_figures(offline_run):
    state, out, summary = offline_run
    assert f"report               {state / 'report.html'}" in out
    for k in ("return_pct", "sharpe", "max_drawdown", "win_rate_pct", "closed_trades", "fees"):
        assert f"  {k:<20} " in out, k
        assert k in summary, k
    assert summary["report"] == str(state / "report.html")
    figures = json.loads((state / "report.json").read_text())
    # the summary keeps execution's own fees; the report recomputes them from the fills: the same amount
    assert Decimal(figures["total"]["fees"]) == Decimal(summary["fees"])
    assert figures["total"]["trades"] == summary["closed_trades"]
    assert sorted(p.name for p in state.glob("report-*.png"))[:1] == ["report-equity.png"]


def test_report_renders_every_chart_and_loads_nothing_from_the_network(offline_report, tmp_path):
    browser = _chromium()
    page_url = offline_report.resolve().as_uri()
    html = offline_report.read_text()
    assert "default-src 'none'" in html and "<script" not in html.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I), "an external reference"
    proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = None
    try:
        dt = DevTools(_devtools_url(proc))
        target = dt.call("Target.createTarget", url="about:blank")["targetId"]
        session = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        dt.call("Network.enable", session)
        dt.call("Page.enable", session)
        dt.events.clear()
        dt.call("Page.navigate", session, url=page_url)
        dt.wait_event("Page.loadEventFired")
        charts = json.loads(dt.call("Runtime.evaluate", session, returnByValue=True, expression="""
            JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => {
              const img = f.querySelector('img'); const r = img.getBoundingClientRect();
              return {id: f.id, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
                      x: r.left + window.scrollX, y: r.top + window.scrollY, cw: r.width, ch: r.height};
            }))""")["result"]["value"])
        ids = [c["id"] for c in charts]
        assert {"chart-equity", "chart-positions", "chart-states", "chart-strategies"} <= set(ids), ids
        assert any(i.startswith("chart-price-") for i in ids), ids
        for c in charts:
            assert c["complete"] and c["w"] > 300 and c["h"] > 100, f"{c['id']} did not decode: {c}"
            shot = dt.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                           clip={"x": c["x"], "y": c["y"], "width": c["cw"], "height": c["ch"], "scale": 1})
            _not_blank(base64.b64decode(shot["data"]), c["id"])
        whole = base64.b64decode(dt.call("Page.captureScreenshot", session, format="png",
                                         captureBeyondViewport=True)["data"])
        (tmp_path / "report-screenshot.png").write_bytes(whole)
        _not_blank(whole, "the page")
        requests = [m["params"]["request"]["url"] for m in dt.events if m.get("method") == "Network.requestWillBeSent"]
        assert page_url in requests, requests[:5]            # the capture works: the page itself is seen
        remote = [u for u in requests if not u.startswith(("file:", "data:"))]
        assert remote == [], f"the report fetched: {remote}"
    finally:
        if dt is not None:
            dt.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()
