"""The strategy node: runs strategy plugins on market data and submits their orders to execution.

Plugins (``nodes.strategy.base.Strategy``) turn ticks, trades, their own fills and risk state into
order intents. The node passes every intent through the gate (``nodes.strategy.gate``: kill switch,
HALTED/REDUCING, a working order, backoff after rejections, cooldown), sizes it to the product's
increment, tags it (``strategy`` = plugin name, ``client_order_id``, ``origin_ns`` = ``ts_recv`` of the
market event that triggered it) and submits it to execution with the runtime's asynchronous request
(``Node.request``): the loop goes on at once and the reply arrives as an event. Rejections are
counted by code and back off; while the kill switch is engaged or risk says HALTED nothing is sent.

Readiness: nothing is sent in a product until execution says it is ready for it (risk state
received and market data for that product: ``exec.risk_ok`` and ``exec.ready.<P>`` in its
heartbeat, or its ``Query("pretrade")``) and each plugin's
positions are restored from execution (``Query("positions", "strategies")``): a restarted strategy
starts from what it holds, never flat. Positions are execution's; the node follows them from the
fills execution publishes.

``market_events_done`` (heartbeat counter) counts ticks and trades of traded products whose handling,
order submissions included, is complete: a lockstep replay can wait on it before the next event.
"""
import importlib
import os
from collections import OrderedDict
from decimal import ROUND_DOWN, Decimal

import proto
from proto import (Code, Fill, Heartbeat, KillSwitch, KillSwitchCmd, Order, OrderIntent, Query, RiskState,
                   Tick, Trade, topics)
from nodes.config import ConfigError, build
from nodes.runtime import Node

from .base import PluginContext, Strategy
from .config import StrategyConfig
from .gate import FINAL, Gate

__all__ = ["StrategyNode", "StrategyConfig", "Strategy", "BUILTINS", "load_plugins"]

BUILTINS = {
    "sma": "nodes.strategy.sma:SmaCrossover",
    "momentum": "nodes.strategy.momentum:Momentum",
    "qlearn": "nodes.strategy.qlearn:QLearn",
}

RISK_CODES = frozenset({Code.RISK_UNAVAILABLE, Code.INVALID_ORDER, Code.KILL_SWITCH, Code.HALTED,
                        Code.REDUCE_ONLY, Code.NO_MARKET_DATA, Code.FEED_STALE, Code.FEED_GAP,
                        Code.SIZE_MIN, Code.SIZE_MAX, Code.SIZE_INCREMENT, Code.PRICE_INCREMENT,
                        Code.VOL_BAND, Code.PRICE_BAND, Code.SLIPPAGE, Code.MAX_NOTIONAL,
                        Code.MAX_POSITION, Code.MAX_EXPOSURE, Code.GROSS_EXPOSURE, Code.RATE_LIMIT})
NS = 1_000_000_000


def _resolve(spec: str, key: str):
    target = BUILTINS.get(spec, spec)
    if ":" in target:
        mod, _, attr = target.partition(":")
    else:
        mod, _, attr = target.rpartition(".")
    if not mod or not attr:
        raise ConfigError(f"{key}: {spec!r} is neither a built-in ({', '.join(BUILTINS)}) nor pkg.module:Class")
    try:
        cls = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{key}: cannot load {target!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"{key}: {target!r} is not a nodes.strategy.base.Strategy subclass")
    return cls


def load_plugins(conf: StrategyConfig):
    """[(alias, class, params)] from config; ConfigError names the bad key."""
    out, seen = [], set()
    for i, entry in enumerate(conf.plugins):
        key = f"strategy.plugins[{i}]"
        alias, eq, spec = entry.partition("=")
        if not eq:
            spec = entry
            alias = entry if entry in BUILTINS else entry.replace(":", ".").rpartition(".")[2].lower()
        alias, spec = alias.strip(), spec.strip()
        if not alias or not alias.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{key}: bad plugin name {alias!r}")
        if alias in seen:
            raise ConfigError(f"{key}: plugin name {alias!r} used twice (use alias=spec)")
        seen.add(alias)
        cls = _resolve(spec, key)
        pkey = f"strategy.params.{alias}"
        try:
            params = build(cls.Params, dict(conf.params.get(alias, {})), pkey)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{pkey}: {e}") from None
        out.append((alias, cls, params))
    for name in conf.params:
        if name not in seen:
            raise ConfigError(f"strategy.params.{name}: no plugin named {name!r} in strategy.plugins")
    return out


class StrategyNode(Node):
    """Strategy: runs plugins on market data and submits their order intents to execution."""

    name = "strategy"
    subscriptions = ("md.tick.", "md.trade.", "risk.state", "risk.killswitch", "fill.", "order.",
                     topics.heartbeat("execution"))

    def __init__(self, mesh, conf: StrategyConfig = None, **kw):
        conf = conf or StrategyConfig()
        super().__init__(mesh, conf, **kw)
        self.products = tuple(conf.products or mesh.products)
        self.gate = Gate(cooldown_ns=int(conf.cooldown_s * NS), backoff_ns=int(conf.reject_backoff_s * NS),
                         max_backoff_ns=int(conf.max_backoff_s * NS),
                         pending_timeout_ns=int(conf.pending_timeout_s * NS))
        self.positions = {}          # plugin -> {product: Decimal}
        self.plugins = []
        for alias, cls, params in load_plugins(conf):
            pos = self.positions.setdefault(alias, {})
            ctx = PluginContext(alias, self.products, conf.order_size, pos,
                                pending=lambda product, a=alias: self.gate.is_pending(a, product),
                                mesh=mesh, seed=conf.seed, log=self.log, order_sizes=conf.order_sizes)
            try:
                self.plugins.append(cls(alias, params, ctx))
            except ValueError as e:
                raise ConfigError(f"strategy.params.{alias}: {e}") from None
        if not any(type(p).on_trade is not Strategy.on_trade for p in self.plugins):
            # no plugin looks at market trades (the busiest topic): do not receive them at all
            self.subscriptions = tuple(t for t in self.subscriptions if t != "md.trade.")
        self.run_id = f"{conf.seed:x}" if conf.seed else os.urandom(4).hex()
        self._n = 0
        self.orders = OrderedDict()  # client_order_id -> (plugin, product), bounded
        self._filled = {}            # client_order_id -> base size filled so far (own fills)
        self._final = {}             # client_order_id -> filled_size of a final order awaiting fills
        self.clock_ns = 0            # market time: the latest ts_event of a market event
        self.ready_products = set()  # products execution can check orders in (risk state + market data)
        self.restored = False        # plugin positions restored from execution
        self._early_fills = []       # fills seen before the restore answer arrived
        self.c = {k: 0 for k in (
            "ticks", "trades", "market_events_done", "intents", "submitted", "accepted", "rejected", "risk_rejects",
            "submit_timeouts", "submit_errors", "fills", "orders_final", "invalid_intents",
            "plugin_errors", "suppressed_not_ready", "suppressed_killswitch", "suppressed_halted",
            "suppressed_reducing", "suppressed_pending", "suppressed_backoff", "suppressed_cooldown")}
        self.reject_codes = {}
        self.on(Tick, self._on_tick)
        self.on(Trade, self._on_trade)
        self.on(Fill, self._on_fill)
        self.on(Order, self._on_order)
        self.on(RiskState, self._on_risk_state)
        self.on(KillSwitch, self._on_killswitch)
        self.on(Heartbeat, self._on_exec_heartbeat)
        self.queries["strategy"] = self._query

    # --- lifecycle -------------------------------------------------------------------------------------
    def setup(self):
        for p in self.plugins:
            try:
                p.start()
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self.connect_requests("execution", "risk")
        self._ask_start_state()
        self.log.info("plugins %s on %s, order size %s, run id %s",
                      ", ".join(p.name for p in self.plugins), ", ".join(self.products),
                      self.conf.order_size, self.run_id)

    def _ask_start_state(self):
        """Until they are known: execution's readiness, the plugins' positions, the kill switch.
        Asynchronous: the answers arrive as events; unanswered, the next tick of this timer asks
        again (an unready strategy sends nothing)."""
        if self.restored and self.ready_products:
            return
        self.after(1.0, self._ask_start_state)      # again in a second, until both are known
        t = self.conf.submit_timeout_ms / 1000
        if not self.restored:
            self.request("execution", Query("positions", "strategies"), self._on_positions, None, t)
        if not self.ready_products:
            self.request("execution", Query("pretrade"), self._on_pretrade, None, t)
            self.request("risk", KillSwitchCmd("status"), self._on_ks_status, None, t)

    def _on_pretrade(self, r):
        if r.ok and isinstance(r.data, dict):
            prods = r.data.get("products") or {}
            self._set_ready({p for p, ok in prods.items() if ok}, r.data.get("why_not", ""))

    def _on_exec_heartbeat(self, env):
        hb = env.msg
        if hb.node == "execution" and "exec.risk_ok" in hb.counters:
            c = hb.counters
            ok = hb.state == "RUNNING" and c["exec.risk_ok"] == 1
            self._set_ready({p for p in self.products if ok and c.get(f"exec.ready.{p}") == 1}, "")

    def _set_ready(self, products, why):
        """Execution said which products it can check orders in now: only those are traded."""
        products &= set(self.products)
        if products != self.ready_products:
            self.log.info("execution ready for %s%s", ", ".join(sorted(products)) or "no product",
                          f" ({why})" if why else "")
            self.ready_products = products

    def _on_ks_status(self, r):
        ks = r.data
        if r.ok and type(ks) is KillSwitch:
            self.gate.set_killswitch(ks.engaged)
            self.log.info("kill switch at start: %s", "ENGAGED" if ks.engaged else "released")

    def _on_positions(self, r):
        if self.restored or not r.ok or not isinstance(r.data, dict):
            return
        held = r.data.get("strategies", {})
        recent = set(r.data.get("recent_fills", ()))
        for alias, pos in self.positions.items():
            for product, qty in (held.get(alias) or {}).items():
                pos[product] = qty
        self.restored = True
        early, self._early_fills = self._early_fills, []
        for env in early:               # fills execution had not booked when it answered
            if env.msg.fill_id not in recent:
                self._apply_fill(env)
        got = {a: {p: str(q) for p, q in pos.items() if q} for a, pos in self.positions.items()}
        self.log.info("positions restored from execution: %s", got or "flat")

    # --- market events -------------------------------------------------------------------------------
    def _tick_clock(self, env):
        if env.ts_event > self.clock_ns:
            self.clock_ns = env.ts_event

    def _on_tick(self, env):
        if env.msg.product not in self.products:
            return
        self.c["ticks"] += 1
        self._tick_clock(env)
        for p in self.plugins:
            self._call_plugin(p, p.on_tick, env)
        self.c["market_events_done"] += 1

    def _on_trade(self, env):
        if env.msg.product not in self.products:
            return
        self.c["trades"] += 1
        self._tick_clock(env)
        for p in self.plugins:
            self._call_plugin(p, p.on_trade, env)
        self.c["market_events_done"] += 1

    # --- own orders ------------------------------------------------------------------------------------
    def _on_fill(self, env):
        f = env.msg
        if f.client_order_id not in self.orders:
            alias = f.client_order_id.rsplit("-", 2)[0]
            if alias not in self.positions or alias == f.client_order_id:
                return
            # an order of one of our plugins placed before this process started (a restart)
            self.orders[f.client_order_id] = (alias, f.product)
        if not self.restored:
            self._early_fills.append(env)
            return
        self._apply_fill(env)

    def _apply_fill(self, env):
        f = env.msg
        plugin_name, product = self.orders[f.client_order_id]
        pos = self.positions[plugin_name]
        pos[product] = pos.get(product, Decimal(0)) + (f.size if f.side == "BUY" else -f.size)
        self.c["fills"] += 1
        got = self._filled[f.client_order_id] = self._filled.get(f.client_order_id, Decimal(0)) + f.size
        want = self._final.get(f.client_order_id)
        if want is not None and got >= want:
            del self._final[f.client_order_id]
            self._done(f.client_order_id, plugin_name, product)
        p = self._plugin(plugin_name)
        if p is not None:
            self._call_plugin(p, p.on_fill, env)

    def _on_order(self, env):
        o = env.msg
        owner = self.orders.get(o.client_order_id)
        if owner is None:
            if o.strategy in self.positions and o.status != "REJECTED":
                # an order of one of our plugins placed before this process started (a restart):
                # its fills are that plugin's too
                owner = self.orders[o.client_order_id] = (o.strategy, o.product)
            else:
                return
        if o.status in FINAL and o.client_order_id not in self._final:
            self.c["orders_final"] += 1
            if self._filled.get(o.client_order_id, Decimal(0)) >= o.filled_size:
                self._done(o.client_order_id, owner[0], owner[1])
            else:       # its fills are still on the way: the position is not current yet
                self._final[o.client_order_id] = o.filled_size
        p = self._plugin(owner[0])
        if p is not None:
            self._call_plugin(p, p.on_order, env)

    def _done(self, coid, plugin_name, product):
        self._filled.pop(coid, None)
        self.gate.order_done(plugin_name, product, coid)

    # --- risk --------------------------------------------------------------------------------------------
    def _on_risk_state(self, env):
        st = env.msg
        if st.state != self.gate.risk_state:
            self.log.warning("risk state %s -> %s (%s)", self.gate.risk_state, st.state, st.reason)
        self.gate.set_risk_state(st.state)
        for p in self.plugins:
            self._call_plugin(p, p.on_risk_state, env)

    def _on_killswitch(self, env):
        ks = env.msg
        if ks.engaged != self.gate.killswitch:
            self.log.warning("kill switch %s (%s: %s): %s", "ENGAGED" if ks.engaged else "released",
                             ks.source, ks.reason, "no orders until released" if ks.engaged else "resuming")
        self.gate.set_killswitch(ks.engaged)
        for p in self.plugins:
            self._call_plugin(p, p.on_killswitch, env)

    # --- plugins and submission --------------------------------------------------------------------------
    def _plugin(self, name):
        for p in self.plugins:
            if p.name == name:
                return p
        return None

    def _call_plugin(self, plugin, handler, env):
        try:
            intents = handler(env.msg, env)
        except Exception:  # noqa: BLE001 - one plugin's bug must not stop the others
            self.c["plugin_errors"] += 1
            if self.c["plugin_errors"] <= 20:
                self.log.exception("plugin %s failed on %s", plugin.name, env.msg.TAG)
            return
        if intents:
            for it in intents:
                self._submit(plugin, it, env)

    def _prepare(self, it):
        """Check and size a plugin's intent; None if unusable."""
        if type(it) is not OrderIntent or it.side not in ("BUY", "SELL") or it.product not in self.products:
            return None
        if any(v is not None and type(v) is not Decimal for v in (it.size, it.quote_size, it.limit_price)):
            return None                     # money must be Decimal: a float size is a plugin bug
        spec = self.mesh.spec(it.product)
        if spec is None or it.size is None:
            return it if it.quote_size is not None and it.quote_size > 0 else None
        size = it.size.quantize(spec.base_increment, rounding=ROUND_DOWN) if spec.base_increment > 0 else it.size
        if size <= 0 or size < spec.base_min_size:
            return None
        return it._replace(size=size)

    def _submit(self, plugin, it, env):
        self.c["intents"] += 1
        it = self._prepare(it)
        if it is None:
            self.c["invalid_intents"] += 1
            return
        now = self.clock_ns or env.ts_event
        if not (self.restored and it.product in self.ready_products):
            self.c["suppressed_not_ready"] += 1
            return
        pos = self.positions[plugin.name].get(it.product, Decimal(0))
        why = self.gate.check(plugin.name, it, now, pos)
        if why is not None:
            self.c["suppressed_" + why] += 1
            return
        if self.gate.risk_state == "REDUCING":
            it = it._replace(reduce_only=True)
        self._n += 1
        coid = f"{plugin.name}-{self.run_id}-{self._n}"
        it = it._replace(client_order_id=coid, strategy=plugin.name, origin_ns=env.ts_recv)
        self.orders[coid] = (plugin.name, it.product)
        while len(self.orders) > 10000:
            old, _ = self.orders.popitem(last=False)
            self._filled.pop(old, None)
            self._final.pop(old, None)
        self.gate.sent(plugin.name, it, now)
        self.c["submitted"] += 1
        try:
            self.request("execution", it, lambda r: self._submitted(plugin, it, now, r),
                         lambda why: self._submit_timeout(plugin, it, now, why),
                         timeout_s=self.conf.submit_timeout_ms / 1000)
        except proto.EncodeError as e:   # nothing left the node
            self.c["submit_errors"] += 1
            self.gate.rejected(plugin.name, it, now)
            self.log.error("%s: cannot encode %s: %s", plugin.name, it, e)

    def _submit_timeout(self, plugin, it, now, why):
        """No answer: the outcome is unknown; it stays pending and the plugin backs off."""
        self.c["submit_timeouts"] += 1
        pause = self.gate.rejected(plugin.name, it, now, outcome_known=False)
        self.log.warning("%s: %s %s %s: %s; pausing %.1f s", plugin.name, it.side, it.size, it.product,
                         why, pause / NS)

    def _submitted(self, plugin, it, now, reply):
        order = reply.data if type(reply.data) is Order else None
        if reply.ok and (order is None or order.status != "REJECTED"):
            self.c["accepted"] += 1
            self.gate.accepted(plugin.name, it)
            return
        code = reply.code if not reply.ok else order.code
        reason = reply.reason if not reply.ok else order.reason
        self.c["rejected"] += 1
        if code in RISK_CODES:
            self.c["risk_rejects"] += 1
        self.reject_codes[code] = self.reject_codes.get(code, 0) + 1
        pause = self.gate.rejected(plugin.name, it, now)
        if self.c["rejected"] <= 20 or self.c["rejected"] % 100 == 0:
            self.log.info("%s: %s %s %s rejected: %s %s; pausing %.1f s", plugin.name, it.side, it.size,
                          it.product, code, reason, pause / NS)

    # --- reporting -------------------------------------------------------------------------------------
    def extra_counters(self) -> dict:
        out = dict(self.c)
        out["pending_orders"] = len(self.gate.pending)
        out["killswitch"] = int(self.gate.killswitch)
        out["ready"] = int(self.restored and bool(self.ready_products))
        for code, n in self.reject_codes.items():
            out[f"reject.{code}"] = n
        return out

    def _query(self, arg: str):
        return {"plugins": [{"name": p.name, "class": f"{type(p).__module__}:{type(p).__name__}",
                             "state": p.state()} for p in self.plugins],
                "positions": {k: dict(v) for k, v in self.positions.items()},
                "killswitch": self.gate.killswitch, "risk_state": self.gate.risk_state,
                "pending": {f"{k[0]}/{k[1]}": v[0] for k, v in self.gate.pending.items()},
                "counters": self.extra_counters(), "reject_codes": dict(self.reject_codes),
                "run_id": self.run_id}
