"""The strategy node over real sockets: market data from a PUB bound on the market-data endpoint,
risk events from a PUB on the risk endpoint, and orders answered by a small ROUTER responder bound
on the execution endpoint (which, like execution, publishes the Fill and then the order.filled
event of every order it fills, says it is ready, and answers the positions a restarted strategy
asks for). Submissions are asynchronous: the node's loop never waits for the answer."""
import os
import threading
from decimal import Decimal

import pytest
import zmq

import proto
from proto import Code, topics
from nodes.client import RequestClient
from nodes.strategy import StrategyNode
from nodes.strategy.config import StrategyConfig
from tests.conftest import make_mesh, wait_until

S = 1_000_000_000
T0 = 1_800_000_000 * S


def bind(ctx, mesh, node, kind, sock_type):
    if mesh.transport == "ipc":
        os.makedirs(mesh.ipc_path(), exist_ok=True)
    s = ctx.socket(sock_type)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(mesh.endpoint(node, kind, bind=True))
    return s


class Venue(threading.Thread):
    """ROUTER on execution's request endpoint + PUB on its event endpoint, in one thread.

    ``policy(intent)`` returns "fill", a Code to reject with, or "silent" (no answer)."""

    def __init__(self, ctx, mesh):
        super().__init__(daemon=True)
        self.ctx, self.mesh = ctx, mesh
        self.policy = lambda intent: "fill"
        self.intents = []
        self.held = {}                  # what Query("positions", "strategies") answers
        self.exec_ready = True          # what Query("pretrade") answers
        self.queries = []
        self.warm = threading.Event()
        self.stop_ev = threading.Event()
        self.ready = threading.Event()

    def run(self):
        rtr = bind(self.ctx, self.mesh, "execution", "rep", zmq.ROUTER)
        pub = bind(self.ctx, self.mesh, "execution", "pub", zmq.PUB)
        enc = proto.Encoder("execution")
        probe = _order(proto.OrderIntent("PROBE-USD", "BUY", "MARKET", size=Decimal(1), client_order_id="probe"), "NEW")
        self.ready.set()
        try:
            while not self.stop_ev.is_set():
                if not self.warm.is_set():          # until the strategy hears us (slow joiner)
                    pub.send(enc.encode(topics.ORDER_NEW, probe))
                if not rtr.poll(20):
                    continue
                frames = rtr.recv_multipart()
                head, env = frames[:-1], proto.decode(frames[-1])
                it = env.msg
                if type(it) is proto.Query:
                    self.queries.append(it)
                    data = ({"ready": self.exec_ready, "why_not": "" if self.exec_ready else "no risk state",
                             "products": {"BTC-USD": self.exec_ready}}
                            if it.what == "pretrade" else
                            {"strategies": self.held, "recent_fills": []})
                    rtr.send_multipart(head + [enc.encode("rep", proto.Reply(True, Code.OK, "", data),
                                                          msg_id=env.msg_id)])
                    continue
                self.intents.append(it)
                what = self.policy(it)
                if what == "silent":
                    continue
                if what == "fill":
                    px = Decimal("100.00")
                    order = _order(it, "FILLED", fill_price=px)
                    reply = proto.Reply(True, Code.OK, "", order)
                else:
                    order = _order(it, "REJECTED", code=what, reason=f"test says {what}")
                    reply = proto.Reply(False, what, order.reason, order)
                rtr.send_multipart(head + [enc.encode("rep", reply, msg_id=env.msg_id)])
                if what == "fill":                   # like execution: the fill, then the order event
                    pub.send(enc.encode(topics.fill(it.product), proto.Fill(
                        "f-" + it.client_order_id, it.client_order_id, it.product, it.side, px, it.size,
                        Decimal("0.06"), "TAKER", "paper")))
                pub.send(enc.encode(topics.ORDER_STATUS_TOPIC[order.status], order))
        finally:
            rtr.close(linger=0)
            pub.close(linger=0)


def _order(it, status, code="OK", reason="", fill_price=Decimal(0)):
    filled = it.size if status == "FILLED" else Decimal(0)
    return proto.Order(it.client_order_id, "v-" + it.client_order_id, it.product, it.side, it.order_type, it.tif,
                       it.size, it.quote_size, it.limit_price, it.post_only, it.reduce_only, status, filled,
                       fill_price, Decimal(0), filled, fill_price, code, reason, it.strategy, "paper", 1, 2,
                       it.origin_ns)


class Rig:
    """A strategy node (sma fast=2 slow=4, no cooldown) wired to test publishers and the venue."""

    def __init__(self, ctx, mesh, **conf):
        self.ctx, self.mesh = ctx, mesh
        self.venue = Venue(ctx, mesh)
        self.venue.start()
        assert self.venue.ready.wait(5)
        self.md = bind(ctx, mesh, "marketdata", "pub", zmq.PUB)
        self.risk = bind(ctx, mesh, "risk", "pub", zmq.PUB)
        self.emd, self.erisk = proto.Encoder("marketdata"), proto.Encoder("risk")
        c = dict(plugins=("sma",), products=("BTC-USD",), order_size=Decimal("0.001"), cooldown_s=0.0,
                 reject_backoff_s=2.0, submit_timeout_ms=300,
                 params={"sma": {"fast": 2, "slow": 4, "threshold_bps": "0"}})
        c.update(conf)
        self.node = StrategyNode(mesh, StrategyConfig(**c), context=ctx).start()
        self.i = 0
        self.t_ns = T0               # market time (ts_event) of the last tick
        self.ts_recv = []

    def _seen(self, source):
        return any(src == source for src, _ in list(self.node._seqs))

    def warm_feeds(self):
        probe = proto.Tick("PROBE-USD", Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(0))

        def md_seen():
            if self._seen("marketdata"):
                return True
            self.md.send(self.emd.encode(topics.tick("PROBE-USD"), probe))
            return False

        def risk_seen():
            if self._seen("risk"):
                return True
            self.risk.send(self.erisk.encode(topics.RISK_STATE, proto.RiskState("ACTIVE", "ACTIVE", "probe")))
            return False
        wait_until(md_seen, 5, interval=0.002, what="strategy subscribed to market data")
        wait_until(risk_seen, 5, interval=0.002, what="strategy subscribed to risk")
        wait_until(lambda: self._seen("execution"), 5, what="strategy subscribed to execution")
        self.venue.warm.set()

    def warm(self):
        self.warm_feeds()
        wait_until(lambda: self.node.ready_products and self.node.restored, 5, what="strategy ready")

    def tick(self, price, dt_s=0.1):
        """Publish one BTC-USD tick ``dt_s`` of market time after the previous one; wait until handled."""
        self.i += 1
        px = Decimal(price)
        self.t_ns += int(dt_s * S)
        ts_event = self.t_ns
        ts_recv = 7_000_000_000 + self.i
        self.ts_recv.append(ts_recv)
        t = proto.Tick("BTC-USD", px, px - Decimal("0.01"), Decimal(1), px + Decimal("0.01"), Decimal(1), Decimal(0))
        self.md.send(self.emd.encode(topics.tick("BTC-USD"), t, ts_event=ts_event, ts_recv=ts_recv))
        wait_until(lambda: self.node._seqs.get(("marketdata", "md.tick.BTC-USD")) == self.i, 5,
                   what=f"tick {self.i} received")
        self.barrier()

    def barrier(self):
        """A request round trip: the loop answers it only after the event it is handling (and any
        submit that event caused) is done, so what the node did is visible afterwards."""
        self.query()

    def risk_event(self, topic, msg, check):
        self.risk.send(self.erisk.encode(topic, msg))
        wait_until(check, 5, what=f"{topic} handled")
        self.barrier()

    def query(self):
        with RequestClient(self.mesh.endpoint("strategy", "rep"), context=self.ctx, timeout_ms=2000) as c:
            return c.call(proto.Query("strategy"))

    def close(self):
        self.node.stop()
        self.venue.stop_ev.set()
        self.venue.join(2)
        self.md.close(linger=0)
        self.risk.close(linger=0)


@pytest.fixture
def rig_factory(ctx):
    made = []

    def make(mesh, **conf):
        r = Rig(ctx, mesh, **conf)
        made.append(r)
        r.warm()
        return r
    yield make
    for r in made:
        r.close()


def test_orders_go_to_execution_tagged_and_sized_and_fills_move_the_position(mesh, rig_factory):
    r = rig_factory(mesh)
    for p in ("100", "100", "100", "100"):
        r.tick(p)
    assert r.venue.intents == []
    r.tick("101")                                     # fast mean crosses above the slow one
    wait_until(lambda: r.node.positions["sma"].get("BTC-USD") == Decimal("0.001"), 5, what="filled")
    (buy,) = r.venue.intents
    assert (buy.product, buy.side, buy.order_type, buy.size) == ("BTC-USD", "BUY", "MARKET", Decimal("0.001"))
    assert buy.strategy == "sma" and buy.client_order_id == f"sma-{r.node.run_id}-1"
    assert buy.origin_ns == r.ts_recv[4]              # ts_recv of the tick that caused it
    wait_until(lambda: not r.node.gate.pending, 5, what="order done")
    r.tick("102")
    assert len(r.venue.intents) == 1                  # at target: no second buy
    for p in ("99", "95"):
        r.tick(p)
    wait_until(lambda: r.node.positions["sma"].get("BTC-USD") == Decimal("0"), 5, what="sold")
    sell = r.venue.intents[1]
    assert sell.side == "SELL" and sell.origin_ns in r.ts_recv[-2:]
    q = r.query()
    assert q["counters"]["accepted"] == 2 and q["counters"]["fills"] == 2 and q["counters"]["rejected"] == 0
    assert q["positions"] == {"sma": {"BTC-USD": Decimal("0")}}
    assert q["plugins"][0]["name"] == "sma" and q["plugins"][0]["state"]["BTC-USD"]["target_units"] == 0


def test_risk_rejections_are_counted_and_back_off_by_market_time(short_tmp, rig_factory):
    r = rig_factory(make_mesh("tcp", short_tmp))
    r.venue.policy = lambda it: Code.MAX_POSITION
    for p in ("100", "100", "100", "100", "101"):
        r.tick(p)
    wait_until(lambda: r.node.c["rejected"] == 1, 5, what="rejection")
    assert r.node.c["risk_rejects"] == 1 and r.node.extra_counters()["reject.MAX_POSITION"] == 1
    for p in ("102", "103", "104"):                   # 0.3 s of market time: inside the 2 s pause
        r.tick(p)
    assert len(r.venue.intents) == 1 and r.node.c["suppressed_backoff"] == 3
    r.venue.policy = lambda it: "fill"
    r.tick("105", dt_s=2.0)                           # the pause is over: it tries again
    wait_until(lambda: len(r.venue.intents) == 2 and r.node.c["accepted"] == 1, 5, what="retry")
    assert r.node.gate.backoff == {}                  # success resets the backoff


def test_no_orders_while_the_kill_switch_is_engaged_or_risk_halted(short_tmp, rig_factory):
    r = rig_factory(make_mesh("tcp", short_tmp))
    r.risk_event(topics.RISK_KILLSWITCH, proto.KillSwitch(True, "test", "manual", 1), lambda: r.node.gate.killswitch)
    for p in ("100", "100", "100", "100", "101", "102"):
        r.tick(p)
    assert r.venue.intents == [] and r.node.c["suppressed_killswitch"] == 2
    r.risk_event(topics.RISK_KILLSWITCH, proto.KillSwitch(False, "", "manual", 0), lambda: not r.node.gate.killswitch)
    r.risk_event(topics.RISK_STATE, proto.RiskState("HALTED", "ACTIVE", "test"),
                 lambda: r.node.gate.risk_state == "HALTED")
    r.tick("103")
    assert r.venue.intents == [] and r.node.c["suppressed_halted"] == 1
    r.risk_event(topics.RISK_STATE, proto.RiskState("ACTIVE", "HALTED", "test"),
                 lambda: r.node.gate.risk_state == "ACTIVE")
    r.tick("104")
    wait_until(lambda: len(r.venue.intents) == 1, 5, what="order after release")
    assert r.venue.intents[0].side == "BUY"


def test_starts_with_the_kill_switch_state_risk_reports(short_tmp, ctx, rig_factory):
    """Before any risk.killswitch event arrives, the node asks risk (KillSwitchCmd status)."""
    mesh = make_mesh("tcp", short_tmp)
    rtr = bind(ctx, mesh, "risk", "rep", zmq.ROUTER)
    answered = threading.Event()

    def serve():
        if rtr.poll(5000):
            frames = rtr.recv_multipart()
            env = proto.decode(frames[-1])
            assert env.msg == proto.KillSwitchCmd("status")
            ks = proto.KillSwitch(True, "engaged before the strategy started", "manual", 1)
            rtr.send_multipart(frames[:-1] + [proto.Encoder("risk").encode("rep", proto.Reply(True, Code.OK, "", ks),
                                                                           msg_id=env.msg_id)])
            answered.set()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = rig_factory(mesh)
        wait_until(lambda: answered.is_set() and r.node.gate.killswitch, 5, what="risk's answer")
        for p in ("100", "100", "100", "100", "101"):
            r.tick(p)
        assert r.venue.intents == [] and r.node.c["suppressed_killswitch"] == 1
    finally:
        t.join(6)
        rtr.close(linger=0)


def test_a_silent_execution_times_out_and_the_order_stays_pending(short_tmp, rig_factory):
    r = rig_factory(make_mesh("tcp", short_tmp), pending_timeout_s=5.0)
    r.venue.policy = lambda it: "silent"
    for p in ("100", "100", "100", "100", "101"):
        r.tick(p)
    wait_until(lambda: r.node.c["submit_timeouts"] == 1, 5, what="the submit's timeout")
    assert len(r.venue.intents) == 1
    for p in ("102", "103"):
        r.tick(p, dt_s=1.5)                           # 3 s later: past the backoff, outcome still unknown
    assert r.node.c["suppressed_pending"] == 2 and len(r.venue.intents) == 1
    r.venue.policy = lambda it: "fill"
    r.tick("104", dt_s=2.5)                           # 5.5 s after the submit: pending expired, try again
    wait_until(lambda: len(r.venue.intents) == 2, 5, what="second attempt")
    assert r.node.gate.expired_pending == 1


def test_a_restarted_strategy_starts_from_the_positions_execution_holds(short_tmp, ctx):
    """Execution says the sma plugin holds 0.002 BTC: the plugin starts there (not flat), so it
    sells on the next cross down instead of waiting to buy first."""
    mesh = make_mesh("tcp", short_tmp)
    r = Rig(ctx, mesh)
    try:
        r.venue.held = {"sma": {"BTC-USD": Decimal("0.002")}}
        r.warm()
        assert r.node.positions["sma"] == {"BTC-USD": Decimal("0.002")}
        assert any(q.what == "positions" and q.arg == "strategies" for q in r.venue.queries)
        for p in ("100", "100", "100", "100", "99"):
            r.tick(p)
        wait_until(lambda: r.venue.intents, 5, what="an order")
        assert r.venue.intents[0].side == "SELL"
    finally:
        r.close()


def test_nothing_is_sent_before_execution_is_ready(short_tmp, ctx):
    mesh = make_mesh("tcp", short_tmp)
    r = Rig(ctx, mesh)
    try:
        r.venue.exec_ready = False                  # execution: "no risk state yet"
        r.warm_feeds()
        wait_until(lambda: r.node.restored and any(q.what == "pretrade" for q in r.venue.queries), 5,
                   what="the strategy asking")
        assert not r.node.ready_products
        for p in ("100", "100", "100", "100", "101"):
            r.tick(p)
        assert r.venue.intents == [] and r.node.c["suppressed_not_ready"] == 1
    finally:
        r.close()
