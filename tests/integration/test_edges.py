"""Bad input at the edges of the mesh.

* A node started with a bad configuration (a wrong type, an unknown key, a value from the
  environment that does not parse, TOML that does not parse, live trading without its secrets)
  stops at once with exit status 2 and exactly one line naming the key -- and never prints a secret.
* A node whose endpoint cannot be bound (``mesh.host`` / ``mesh.hosts`` naming an address this
  machine does not have) exits 1 with a line naming the endpoint and the reason, no traceback.
* ``tickmesh ctl`` with bad arguments prints its usage and exits 2 without talking to anything.
* Orders with negative, zero, NaN/infinite (raw frames: the codec refuses to encode them), absurdly
  large or absurdly precise sizes and prices are rejected with a code and a reason by execution
  (its validation, then the pre-trade checks it runs in-process against risk's published state),
  and none of them is ever accepted, filled or handed to the venue; a sane order in the same session
  is filled (the path works). Risk and execution both refuse undecodable request frames.

Nodes run as real processes (config, bind) or as real nodes in threads over tcp (orders).
"""
import dataclasses
import os
import re
import socket
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import msgpack
import pytest
import zmq

import proto
from nodes import config
from nodes.client import RequestClient
from nodes.execution import ExecutionNode
from nodes.execution.journal import read_records
from nodes.marketdata import MarketDataNode
from nodes.risk import RiskNode
from proto import Code, OrderIntent
from tests.conftest import ROOT, free_base_port, make_mesh, wait_until

PY = sys.executable
TICKMESH = Path(sys.executable).parent / "tickmesh"
SECRET_VALUE = "organizations/edge-test/apiKeys/never-print-me"


def _env(conf: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TICKMESH_", "COINBASE_", "SLACK_", "TEAMS_", "USE_OFFICIAL_SDK"))}
    env.update(TICKMESH_CONF=str(conf), PYTHONUNBUFFERED="1", **extra)
    return env


def _run_nodes(cases, tmp: Path, timeout=30):
    """Start every case's node process at once (they only differ in config), wait for all."""
    procs = []
    for i, (node, toml, env_extra) in enumerate(cases):
        conf = tmp / f"case{i}.toml"
        conf.write_text(f'[mesh]\nbase_port = {free_base_port()}\nstate_dir = "{tmp}/state{i}"\n'
                        f'ipc_dir = "{tmp}/ipc{i}"\n' + toml)
        procs.append(subprocess.Popen([PY, "-m", f"nodes.{node}"], cwd=ROOT, env=_env(conf, **env_extra),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=timeout)
            out.append((p.returncode, [ln for ln in text.splitlines() if ln.strip()]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return out


CONFIG_CASES = [
    # (node, extra toml, extra environment, the one line's expected text)
    ("risk", "[risk]\nmax_position = [1]\n", {},
     "risk: config error: risk.max_position: expected a decimal, got list [1]"),
    ("execution", "[execution]\nfrobnicate = 1\n", {},
     "execution: config error: execution.frobnicate: unknown key (known: "),
    ("store", '[store]\nfsync = "sometimes"\n', {},
     "store: config error: store.fsync: must be one of never, interval, always, got 'sometimes'"),
    ("strategy", "", {"TICKMESH_STRATEGY__COOLDOWN_S": "soon"},
     "strategy: config error: strategy.cooldown_s: expected a number, got 'soon'"),
    ("metrics", "[metrics]\nport = 9464\nport = 9465\n", {},
     "metrics: config error: case4.toml: not valid TOML: "),
    ("marketdata", "[mesh]\n", {},
     "marketdata: config error: case5.toml: not valid TOML: "),
    # live trading asked for, both switches on, but the API secret missing: refused, and the API key
    # (a secret) never shows up in the output
    ("execution", '[execution]\nvenue = "coinbase"\nlive_trading = true\n',
     {"TICKMESH_LIVE": "yes", "COINBASE_API_KEY": SECRET_VALUE},
     'execution: config error: execution.venue = "coinbase" (live trading) refused: '
     "the secret COINBASE_API_SECRET is empty. Use venue = \"paper\" for a dry run."),
    ("alerts", "[alerts]\nnode_timeout_s = true\n", {},
     "alerts: config error: alerts.node_timeout_s: expected a number, got bool True"),
]


def test_bad_config_stops_the_node_with_one_line_naming_the_key(short_tmp):
    results = _run_nodes([(n, t, e) for n, t, e, _ in CONFIG_CASES], short_tmp)
    for (node, _, _, want), (rc, lines) in zip(CONFIG_CASES, results):
        assert rc == 2, (node, rc, lines)
        assert len(lines) == 1, (node, lines)
        assert lines[0].startswith(want), (node, lines[0], want)
        assert SECRET_VALUE not in lines[0]


def _unassigned_address() -> str:
    """An address from TEST-NET-1 (RFC 5737) that this machine does not have."""
    for addr in ("192.0.2.1", "192.0.2.77", "198.51.100.9"):
        s = socket.socket()
        try:
            s.bind((addr, 0))
        except OSError:
            return addr
        finally:
            s.close()
    pytest.skip("every TEST-NET address tried is assigned to this machine")


def test_unbindable_endpoint_stops_the_node_naming_it(short_tmp):
    addr = _unassigned_address()
    cases = [("risk", f'[mesh]\nhost = "{addr}"\n', {}),                       # every node elsewhere
             ("execution", f'[mesh]\nhosts = {{ execution = "{addr}" }}\n', {})]  # per-node host (multi-host)
    # the two [mesh] tables above would be duplicates: merge them into the generated one
    results = _run_nodes([(n, t.replace("[mesh]\n", ""), e) for n, t, e in cases], short_tmp)
    for (node, _, _), (rc, lines) in zip(cases, results):
        assert rc == 1, (node, rc, lines)
        errors = [ln for ln in lines if " ERROR " in ln]
        assert errors, lines
        assert not any("Traceback" in ln for ln in lines), lines
        last = lines[-1]
        assert re.search(rf" ERROR {node}: cannot start: .*cannot bind tcp://{re.escape(addr)}:\d+: "
                         r"Cannot assign requested address", last), last
        # every error line is about that endpoint (nothing else went wrong)
        assert all(f"tcp://{addr}:" in ln for ln in errors), errors


def test_unbindable_endpoint_is_reported_once(short_tmp):
    addr = _unassigned_address()
    (rc, lines), = _run_nodes([("risk", f'host = "{addr}"\n', {})], short_tmp)
    assert rc == 1
    assert len([ln for ln in lines if " ERROR " in ln]) == 1, lines


CTL_BAD = [
    [],                                              # no command
    ["frobnicate"],                                  # unknown command
    ["order", "buy", "BTC-USD"],                     # no size
    ["order", "buy", "BTC-USD", "lots"],             # not a number
    ["order", "buy", "BTC-USD", "NaN"],              # not finite
    ["order", "buy", "BTC-USD", "-1"],               # not positive
    ["order", "hold", "BTC-USD", "1"],               # bad side
    ["order", "buy", "BTCUSD", "1"],                 # not BASE-QUOTE
    ["order", "buy", "BTC-USD", "1", "--post-only"],  # post-only without --limit
    ["order", "buy", "BTC-USD", "1", "--tif", "DAY"],
    ["killswitch", "explode"],
    ["status", "--node", "nosuch"],
    ["query", "nosuch", "status"],
    ["--timeout", "soon", "status"],
]


def test_ctl_with_bad_arguments_prints_usage_and_exits_2(short_tmp):
    conf = short_tmp / "mesh.toml"
    conf.write_text(f"[mesh]\nbase_port = {free_base_port()}\n")     # nothing runs there
    procs = [subprocess.Popen([str(TICKMESH), "ctl", *args], cwd=short_tmp, env=_env(conf),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in CTL_BAD]
    for args, p in zip(CTL_BAD, procs):
        out, err = p.communicate(timeout=30)
        assert p.returncode == 2, (args, p.returncode, out, err)
        assert "usage: tickmesh ctl" in err, (args, err)
        assert "did not answer" not in err, (args, err)      # refused before any request
    # the top-level dispatcher too
    r = subprocess.run([str(TICKMESH), "no-such-tool"], env=_env(conf), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown command 'no-such-tool'" in r.stderr and "--help" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr             # one clear line


# --- orders ---------------------------------------------------------------------------------------

BTC = "BTC-USD"


def _intent(coid, order_type="MARKET", size=None, price=None, quote=None, side="BUY"):
    return OrderIntent(BTC, side, order_type, size=size, quote_size=quote, limit_price=price,
                       client_order_id=coid, strategy="edge")


# (client order id, intent, codes either side may answer with)
BAD_ORDERS = [
    _intent("neg-size", size=D("-0.01")),
    _intent("zero-size", size=D("0")),
    _intent("minus-zero-size", size=D("-0")),
    _intent("huge-size", size=D("1E+30")),
    _intent("overflow-size", size=D("1E+999999999")),
    _intent("tiny-size", size=D("1E-30")),
    _intent("too-many-btc", size=D("100000")),                       # > base_max_size, > any limit
    _intent("neg-quote", quote=D("-100")),
    _intent("neg-price", "LIMIT", size=D("0.01"), price=D("-65000")),
    _intent("zero-price", "LIMIT", size=D("0.01"), price=D("0")),
    _intent("huge-price", "LIMIT", size=D("0.01"), price=D("1E+30")),
    _intent("penny-price", "LIMIT", size=D("0.01"), price=D("0.01")),  # absurdly far from the market
    _intent("sub-tick-price", "LIMIT", size=D("0.01"), price=D("65000.000000000000000000001")),
]
# a coid-less copy of the overflowing one: execution derives ids from the intent's numbers
BAD_ORDERS.append(_intent("", size=D("1E+999999999"), side="SELL"))
REJECT_CODES = {Code.INVALID_ORDER, Code.SIZE_MIN, Code.SIZE_MAX, Code.SIZE_INCREMENT, Code.PRICE_INCREMENT,
                Code.VOL_BAND, Code.PRICE_BAND, Code.SLIPPAGE, Code.MAX_NOTIONAL, Code.MAX_POSITION,
                Code.MAX_EXPOSURE, Code.GROSS_EXPOSURE}
NON_FINITE = ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf"]


def _raw_request(enc, intent, field, text):
    """An OrderIntent request frame whose ``field`` carries ``text``: what a foreign client could
    send (our encoder refuses non-finite Decimals)."""
    frame = enc.encode("req", intent, msg_id=enc.next_id())
    topic, _, payload = frame.partition(b"\x00")
    env = msgpack.unpackb(payload, raw=False)
    env[8][OrderIntent._fields.index(field)] = text
    return topic + b"\x00" + msgpack.packb(env, use_bin_type=True)


def _send_raw(ctx, endpoint, frame):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send(frame)
        assert s.poll(3000), "no reply to a raw request"
        env = proto.decode(s.recv())
    finally:
        s.close(linger=0)
    # an undecodable request cannot be correlated by its id: the reply carries a fresh one
    return env.msg


@pytest.fixture
def order_mesh(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    cfg = config.load(config.DEFAULT_CONF, env={}, read_dotenv=False)
    cfg = cfg.replace("mesh", **{f.name: getattr(mesh, f.name) for f in dataclasses.fields(mesh)})
    cfg = cfg.replace("marketdata", source="synthetic", seed=5, synthetic_rate_hz=50.0)
    cfg = cfg.replace("execution", venue="paper", live_trading=False)
    nodes = []
    try:
        for cls in (RiskNode, ExecutionNode, MarketDataNode):
            nodes.append(cls.from_config(cfg, context=ctx).start())
        yield mesh, {n.name: n for n in nodes}
    finally:
        for n in reversed(nodes):
            n.stop()


def test_absurd_orders_are_rejected_with_a_reason_and_never_sent(order_mesh, ctx, collector):
    mesh, nodes = order_mesh
    ex = nodes["execution"]
    # live at execution's PUB before any order: the control order's events are the first we wait on
    seen = collector(mesh, ["execution", "risk"], ["order.", "risk.decision"]).ready("execution")
    ec = RequestClient.for_node(mesh, "execution", timeout_ms=3000, source="tests", context=ctx)
    try:
        wait_until(lambda: ex.pretrade.view.feed(BTC) == ("", "") and BTC in ex.venue.books
                   and not ex.pretrade.ready([BTC]), 20, interval=0.05,
                   what="execution holding risk's verdict of a healthy synthetic feed")
        # the sane control order goes through: the path works (and our SUB sees its events)
        ok = ec.request(_intent("edge-control", size=D("0.001")))
        assert ok.ok and ok.data.status == "FILLED", ok
        seen.wait_for(lambda e: e.topic == "order.filled" and e.msg.client_order_id == "edge-control", 5)
        sent_before = ex.venue.submitted

        # execution: every one rejected with a code and a reason, nothing to the venue
        coids = []
        for intent in BAD_ORDERS:
            r = ec.request(intent)
            assert not r.ok and r.code in REJECT_CODES and r.reason, (intent, r)
            assert r.data.status == "REJECTED" and r.data.reason == r.reason, r
            coids.append(r.data.client_order_id)
        assert all(coids) and len(set(coids)) == len(coids)
        # non-finite numbers cannot be encoded by us: raw frames; both refuse them as BAD_REQUEST
        enc = proto.Encoder("edge")
        for text in NON_FINITE:
            for field, base in (("size", _intent("nan-size", size=D("0.01"))),
                                ("limit_price", _intent("nan-price", "LIMIT", size=D("0.01"), price=D("65000"))),
                                ("quote_size", _intent("nan-quote", quote=D("100")))):
                for node in ("execution", "risk"):
                    frame = _raw_request(enc, base, field, text)
                    r = _send_raw(ctx, mesh.endpoint(node, "rep"), frame)
                    assert type(r) is proto.Reply and not r.ok and r.code == Code.BAD_REQUEST, (node, field, text, r)
                    assert field in r.reason, (field, r.reason)
        # and the nodes are still fine: a second sane order fills
        ok2 = ec.request(_intent("edge-control-2", size=D("0.001"), side="SELL"))
        assert ok2.ok and ok2.data.status == "FILLED", ok2
        assert ex.venue.submitted == sent_before + 1
        assert ex.c["fills"] >= 2
        # the bus: the bad orders went NEW -> REJECTED, never accepted or filled; each one that got
        # past validation to the checks has its denial published, with the same code
        seen.wait_for(lambda e: e.topic == "order.filled" and e.msg.client_order_id == "edge-control-2", 5)
        events = [e for e in seen.events if e.topic.startswith("order.") and e.msg.client_order_id in coids]
        assert {e.topic for e in events} == {"order.new", "order.rejected"}, {e.topic for e in events}
        assert {e.msg.client_order_id for e in events if e.topic == "order.rejected"} == set(coids)
        assert not any(e.msg.client_order_id.startswith("nan-") for e in seen.events if e.topic.startswith("order."))
        rejected = {e.msg.client_order_id: e.msg.code for e in events if e.topic == "order.rejected"}
        denials = [e.msg for e in seen.events if e.topic == "risk.decision" and not e.msg.approved]
        assert denials and all(d.client_order_id in rejected and d.code == rejected[d.client_order_id]
                               for d in denials)
        assert {c for c in rejected.values()} - {Code.INVALID_ORDER}      # some reached the checks
        # nothing made a handler fail on the way (an absurd number must be refused, not raise)
        assert ex.counters["handler_errors"] == 0 and nodes["risk"].counters["handler_errors"] == 0
        # the journal: no bad order was ever marked sent
        recs = read_records(ex.journal_path())
        for rec in recs:
            o = rec.get("o") or {}
            if o.get("client_order_id") in coids:
                assert not o["sent"] and rec["k"] == "order" and o["status"] in ("NEW", "REJECTED"), rec
        assert not any((r.get("o") or {}).get("client_order_id", "").startswith("nan-") for r in recs)
    finally:
        ec.close()
