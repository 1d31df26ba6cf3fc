"""``tickmesh ctl`` against real nodes started in-process (synthetic market data, risk, paper execution,
metrics, alerts), over tcp: status, orders, positions, pnl, kill switch, cancels, and a node that
does not answer."""
import json
import re

import pytest

import proto
from nodes import config
from nodes.alerts import AlertsNode
from nodes.client import RequestClient
from nodes.execution import ExecutionNode
from nodes.marketdata import MarketDataNode
from nodes.metrics import MetricsNode
from nodes.risk import RiskNode
from tests.conftest import make_mesh, wait_until
from tools import ctl


@pytest.fixture
def live(short_tmp, ctx):
    """A running mesh and the path of its config file."""
    mesh = make_mesh("tcp", short_tmp, heartbeat_s=0.3)
    path = short_tmp / "mesh.toml"
    path.write_text(f'[mesh]\ntransport = "tcp"\nbase_port = {mesh.base_port}\nstate_dir = "{mesh.state_dir}"\n'
                    f'heartbeat_s = 0.3\nrequest_timeout_ms = 2000\n'
                    '[marketdata]\nsource = "synthetic"\nsynthetic_rate_hz = 50.0\n'
                    '[metrics]\nport = 0\n[alerts]\nmode = "local"\n')   # never a real channel
    cfg = config.load(path, env={})
    nodes = [cls.from_config(cfg, context=ctx) for cls in (MarketDataNode, RiskNode, ExecutionNode, MetricsNode, AlertsNode)]
    for n in nodes:
        n.start()
    # risk has market data and a healthy feed for BTC-USD: orders can be decided
    with RequestClient.for_node(cfg.mesh, "risk", context=ctx, timeout_ms=1000) as c:
        wait_until(lambda: (c.call(proto.Query("risk"))["feeds"].get("BTC-USD") or {}).get("healthy") is True,
                   10, interval=0.05, what="risk seeing a healthy BTC-USD feed")
    yield str(path), {n.name: n for n in nodes}
    for n in reversed(nodes):
        n.stop()


def run(capsys, *argv):
    rc = ctl.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ctl_against_a_running_mesh(live, capsys):
    conf, nodes = live
    rc, out, err = run(capsys, "--conf", conf, "status", "--expect", "marketdata,risk,execution,metrics,alerts")
    assert rc == 0, err
    table, _, trading = out.partition("\n\n")
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    for n in ("marketdata", "risk", "execution", "metrics", "alerts"):
        assert rows[n][1] == "up" and rows[n][2] == "RUNNING" and rows[n][-1] == "hb+query"
    assert rows["store"][1] == "DOWN" and rows["store"][-1] == "nothing"
    # beside "up": the trading state, the kill switch and each feed's health
    lines = trading.splitlines()
    assert lines[0].startswith("trading      ACTIVE") and lines[1] == "kill switch  off", trading
    assert any(l.startswith("feed BTC-USD  ok, last message ") for l in lines), trading
    assert all(len(l) <= 80 for l in out.splitlines()), out            # fits a terminal
    rc, out, _ = run(capsys, "--conf", conf, "status")              # store, strategy, ... are expected too
    assert rc == 1
    rc, out, _ = run(capsys, "--conf", conf, "--json", "status", "--node", "risk")
    assert rc == 0 and json.loads(out)["nodes"]["risk"]["counters"]["published"] > 0
    rc, out, _ = run(capsys, "--conf", conf, "status", "--json", "--expect", "risk")   # --json after the command
    doc = json.loads(out)
    assert rc == 0 and doc["trading"]["state"] == "ACTIVE" and doc["trading"]["halted"] is False
    assert doc["trading"]["feeds"]["BTC-USD"]["healthy"] is True

    rc, out, err = run(capsys, "--conf", conf, "order", "buy", "BTC-USD", "0.01", "--id", "ctl-it-1")
    assert rc == 0, err
    assert out.startswith("ctl-it-1 FILLED BUY 0.01 BTC-USD MARKET") and "[paper]" in out
    rc, out, _ = run(capsys, "--conf", conf, "--json", "positions")
    pos = {p["product"]: p for p in json.loads(out)["data"]}
    assert rc == 0 and pos["BTC-USD"]["qty"] == "0.01"
    rc, out, _ = run(capsys, "--conf", conf, "pnl")
    assert rc == 0 and "equity" in out and "fees" in out
    pnl = dict(line.split(None, 1) for line in out.splitlines())
    for k in ("realized", "unrealized", "daily", "equity", "fees"):
        assert re.fullmatch(r"-?\d+\.\d\d", pnl[k]), (k, pnl[k])          # to the cent
    rc, out, _ = run(capsys, "--conf", conf, "positions")
    row = dict(zip(out.splitlines()[0].lower().split(), next(l for l in out.splitlines() if l.startswith("BTC-USD")).split()))
    assert row["qty"] == "0.01" and re.fullmatch(r"\d+\.\d\d", row["avg_cost"]), row        # quote_increment 0.01
    rc, out, _ = run(capsys, "--conf", conf, "orders")
    assert rc == 0

    rc, out, _ = run(capsys, "--conf", conf, "killswitch", "engage", "--reason", "ctl test")
    assert rc == 0 and "kill switch engaged" in out and "ctl test" in out
    rc, out, err = run(capsys, "--conf", conf, "order", "sell", "BTC-USD", "0.01")
    assert rc == 1 and "KILL_SWITCH" in out + err
    rc, out, _ = run(capsys, "--conf", conf, "killswitch", "status")
    assert rc == 0 and "engaged" in out
    assert re.search(r"^since +20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", out, re.M), out   # ISO-8601 UTC
    # trading halted: status says so and exits 4
    rc, out, err = run(capsys, "--conf", conf, "status", "--expect", "risk")
    assert rc == 4 and "trading halted: kill switch engaged" in err
    assert re.search(r"^kill switch  ENGAGED since 20\S+Z by manual: ctl test$", out, re.M), out
    rc, out, _ = run(capsys, "--conf", conf, "killswitch", "release", "--reason", "done")
    assert rc == 0

    rc, out, err = run(capsys, "--conf", conf, "cancel", "no-such-order")
    assert rc == 1 and "UNKNOWN_ORDER" in err
    rc, out, err = run(capsys, "--conf", conf, "cancel-all", "BTC-USD")
    assert rc == 0, err
    rc, out, _ = run(capsys, "--conf", conf, "query", "alerts", "alerts")
    assert rc == 0 and "firing" in out

    # a node that does not answer: clear message, exit 3
    nodes["execution"].stop()
    rc, out, err = run(capsys, "--conf", conf, "--timeout", "300", "pnl")
    assert rc == 3 and "execution did not answer within 300 ms" in err
