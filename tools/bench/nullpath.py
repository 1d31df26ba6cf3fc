"""The tick-to-trade path with no per-order logic: ``python -m tools.bench.nullpath strategy|execution``
(config: ``--conf``, $TICKMESH_CONF or conf/mesh.toml, as for a node).

The tick-to-trade benchmark runs these two in the strategy's and execution's slots, between the
real market-data and risk nodes, to measure ``logic_floor``: what the path costs with the design's
processes, bus hops and node runtime (loop, codec, sequence checks, asynchronous request,
heartbeats) but none of the strategy's or execution's own work.

* ``NullStrategy`` sends one market order to execution on every ``md.tick``, alternating sides,
  with the runtime's asynchronous request: no plugin, gate, readiness or positions.
* ``NullExecution`` answers every ``OrderIntent`` by publishing the order (``order.new``) and one
  fill at the last tick's price: no checks, journal, venue, positions or PnL.

Nothing here trades: they exist only for that measurement.
"""
import sys
from decimal import Decimal

from nodes.execution.orders import ACCEPTED, FILLED, OrderState
from nodes.runtime import Node, run_main
from proto import Code, Fill, OrderIntent, Reply, Tick, topics

ZERO = Decimal(0)


def _ignore(*_):
    pass


class NullStrategy(Node):
    """The strategy's slot with no strategy: a market order per tick (benchmark floor only)."""

    name = "strategy"
    subscriptions = (topics.MD_TICK,)

    def __init__(self, mesh, conf=None, **kw):
        super().__init__(mesh, conf, **kw)
        self._n = 0
        self._size = conf.order_size if conf is not None else Decimal("0.0001")
        self.on(Tick, self._on_tick)

    def _on_tick(self, env):
        self._n += 1
        it = OrderIntent(env.msg.product, "BUY" if self._n % 2 else "SELL", "MARKET", size=self._size,
                         client_order_id=f"null-{self._n}", strategy="null", origin_ns=env.ts_recv)
        self.request("execution", it, _ignore, _ignore, timeout_s=2.0)


class NullExecution(Node):
    """The execution's slot with no execution: every order is published and filled at the last
    tick's price (benchmark floor only)."""

    name = "execution"
    subscriptions = (topics.MD_TICK,)

    def __init__(self, mesh, conf=None, **kw):
        super().__init__(mesh, conf, **kw)
        self._last = {}
        self.on(Tick, self._on_tick)
        self.serve(OrderIntent, self._on_submit)

    def _on_tick(self, env):
        self._last[env.msg.product] = env.msg.price

    def _on_submit(self, env):
        it = env.msg
        price = self._last.get(it.product)
        if price is None:
            return Reply(False, Code.NO_MARKET_DATA, f"no tick for {it.product} yet")
        now = self.now_ns()
        o = OrderState.from_intent(it, "paper", now)
        self.publish(topics.ORDER_NEW, o.to_proto(), now, now)
        o.transition(ACCEPTED, now)
        self.publish(topics.fill(it.product), Fill(f"{it.client_order_id}-f", it.client_order_id, it.product,
                                                   it.side, price, it.size, ZERO, "TAKER", "paper"), now, now)
        o.apply_fill(price, it.size, ZERO)
        return Reply(True, Code.OK, "", o.transition(FILLED, now))


NODES = {"strategy": NullStrategy, "execution": NullExecution}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NODES:
        print(f"usage: python -m tools.bench.nullpath {{{'|'.join(NODES)}}} [--conf PATH] [--log-level L]",
              file=sys.stderr)
        return 2
    return run_main(NODES[argv[0]], argv[1:], prog=f"python -m tools.bench.nullpath {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
