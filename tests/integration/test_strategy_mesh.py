"""The strategy against the real nodes: market data (synthetic source), risk, execution (paper
venue) and the store, each a node in a thread over tcp. Orders flow, fills come back, the
strategy's own positions agree with execution's, the store records it all, and the kill switch
engaged through risk stops the strategy's orders until released."""
import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest

import proto
from proto import jsonl
from nodes import config
from nodes.client import RequestClient
from nodes import execution, risk
from nodes import marketdata as md
from nodes.store import StoreNode
from nodes.strategy import StrategyNode
from tests.conftest import make_mesh, wait_until


@pytest.fixture
def mesh_nodes(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    cfg = config.load(config.DEFAULT_CONF, env={}, read_dotenv=False)
    cfg = cfg.replace("mesh", **{f.name: getattr(mesh, f.name) for f in dataclasses.fields(mesh)})
    cfg = cfg.replace("marketdata", source="synthetic", seed=3, synthetic_rate_hz=50.0)
    cfg = cfg.replace("execution", venue="paper", live_trading=False)
    cfg = cfg.replace("store", flush_interval_s=0.05)
    cfg = cfg.replace("strategy", cooldown_s=0.0, params={"sma": {"fast": 2, "slow": 4, "threshold_bps": "0"}})
    started = {}
    try:
        for cls in (StoreNode, risk.RiskNode, execution.ExecutionNode, StrategyNode, md.MarketDataNode):
            n = cls.from_config(cfg, context=ctx)
            n.start()
            started[cls.name] = n
        yield mesh, started
    finally:
        for n in reversed(list(started.values())):
            n.stop()


def test_strategy_trades_through_real_risk_and_execution(mesh_nodes, ctx):
    mesh, nodes = mesh_nodes
    st = nodes["strategy"]
    wait_until(lambda: st.c["fills"] >= 4, 30, what="four fills of the strategy's orders")
    # engage the kill switch through risk: the strategy stops sending
    with RequestClient.for_node(mesh, "risk", context=ctx, timeout_ms=2000) as r:
        assert r.call(proto.KillSwitchCmd("engage", "test")).engaged
    wait_until(lambda: st.gate.killswitch and not st.gate.pending, 10, what="strategy saw the kill switch")
    submitted = st.c["submitted"]
    before = st.c["suppressed_killswitch"]
    wait_until(lambda: st.c["suppressed_killswitch"] >= before + 2, 20, what="signals suppressed")
    assert st.c["submitted"] == submitted
    # the strategy's positions (from its own fills) are execution's positions
    with RequestClient.for_node(mesh, "execution", context=ctx, timeout_ms=2000) as x:
        positions = {p.product: p.qty for p in x.call(proto.Query("positions"))}
        orders = x.call(proto.Query("orders", "all"))
    mine = st.positions["sma"]
    assert {p: q for p, q in positions.items() if q} == {p: q for p, q in mine.items() if q}
    assert orders and all(o.strategy == "sma" and 0 < o.origin_ns <= o.created_ns for o in orders)
    assert {o.client_order_id for o in orders} <= set(st.orders)
    # the store has every fill of those orders, money exact
    with RequestClient.for_node(mesh, "store", context=ctx, timeout_ms=3000) as s:
        q = s.call(proto.Query("store", "flush"))
    fills = [e.msg for f in sorted(Path(q["dir"]).glob("*.jsonl")) for e in jsonl.read(f) if e.type == "Fill"]
    assert len(fills) == st.c["fills"]
    total = {}
    for f in fills:
        total[f.product] = total.get(f.product, Decimal(0)) + (f.size if f.side == "BUY" else -f.size)
    assert {p: q for p, q in total.items() if q} == {p: q for p, q in mine.items() if q}
    # released: orders flow again
    with RequestClient.for_node(mesh, "risk", context=ctx, timeout_ms=2000) as r:
        assert not r.call(proto.KillSwitchCmd("release", "test")).engaged
    wait_until(lambda: st.c["submitted"] > submitted, 30, what="orders after release")
