"""The strategy plugin interface: a small class with its own parameters that sees market events
and its own fills, and returns order intents. The node does everything else (risk state, the kill
switch, rejections and backoff, cooldown, sizes, ids, submission).

A plugin::

    import dataclasses
    from decimal import Decimal
    from nodes.strategy.base import Strategy

    class Breakout(Strategy):
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Params:
            window: int = 50
            size: Decimal = Decimal(0)       # 0: the node's strategy.order_size

        def on_tick(self, tick, env):
            ...
            return [self.buy(tick.product)]  # or None / []

Name it in ``[strategy] plugins = ["mypkg.breakout:Breakout"]`` and give it parameters in
``[strategy.params.breakout]`` (unknown keys and wrong types stop the node at start, naming the
key). Handlers run in the node's loop thread, one event at a time; they must not block. Time is the
event's (``env.ts_event``), never the wall clock, so a replay takes the same decisions.
"""
import dataclasses
from decimal import Decimal

from proto import OrderIntent

BUY, SELL = "BUY", "SELL"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoParams:
    pass


class PluginContext:
    """What a plugin may ask the node: its products, order size and its own position."""

    def __init__(self, name: str, products: tuple, order_size, positions: dict, pending, mesh=None,
                 seed: int = 0, log=None, order_sizes: dict = None):
        self.name = name
        self.products = tuple(products)
        self._order_size = order_size
        self._order_sizes = dict(order_sizes or {})
        self._positions = positions      # product -> Decimal, this plugin's fills only (live view)
        self._pending = pending          # callable(product) -> bool
        self.mesh = mesh
        self.seed = seed
        self.log = log

    def order_size(self, product: str) -> Decimal:
        return self._order_sizes.get(product, self._order_size)

    def position(self, product: str) -> Decimal:
        """This plugin's signed base quantity in ``product`` (from its own fills)."""
        return self._positions.get(product, Decimal(0))

    def pending(self, product: str) -> bool:
        """True while an order of this plugin in ``product`` is working."""
        return self._pending(product)


class Strategy:
    """Base class of strategy plugins. Override the handlers you need; each returns a list of
    ``proto.OrderIntent`` (or None). ``self.params`` is an instance of ``Params``."""

    Params = NoParams

    def __init__(self, name: str, params, ctx: PluginContext):
        self.name = name
        self.params = params
        self.ctx = ctx

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self):
        """Node setup (loop thread): load models, warm caches. Raise ValueError to refuse to start."""

    def state(self) -> dict:
        """JSON-friendly state for ``Query("strategy")``."""
        return {}

    # --- events -------------------------------------------------------------------------------------
    def on_tick(self, tick, env):
        return None

    def on_trade(self, trade, env):
        return None

    def on_fill(self, fill, env):
        """A fill of one of this plugin's orders (the position is already updated)."""
        return None

    def on_order(self, order, env):
        """A state change of one of this plugin's orders."""
        return None

    def on_risk_state(self, state, env):
        return None

    def on_killswitch(self, ks, env):
        return None

    # --- helpers ------------------------------------------------------------------------------------
    def size(self, product: str) -> Decimal:
        s = getattr(self.params, "size", None)
        return s if s else self.ctx.order_size(product)

    def units(self, product: str) -> int:
        """The position in whole order sizes (long-only plugins: 0..max_units)."""
        size = self.size(product)
        if not size:
            return 0
        return int((self.ctx.position(product) / size).to_integral_value())

    def buy(self, product: str, size: Decimal = None) -> OrderIntent:
        return OrderIntent(product, BUY, "MARKET", size=size or self.size(product))

    def sell(self, product: str, size: Decimal = None) -> OrderIntent:
        return OrderIntent(product, SELL, "MARKET", size=size or self.size(product))

    def toward(self, product: str, target_units: int):
        """One order of one unit toward ``target_units`` (or none when there)."""
        u = self.units(product)
        if u < target_units:
            return [self.buy(product)]
        if u > target_units:
            return [self.sell(product)]
        return None


def price_of(tick) -> Decimal:
    """The tick's mid when both sides are quoted, else its last price."""
    if tick.bid > 0 and tick.ask > 0:
        return (tick.bid + tick.ask) / 2
    return tick.price
