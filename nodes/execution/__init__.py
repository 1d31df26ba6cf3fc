"""The execution node: orders through the risk gate to the paper venue or to Coinbase.

Request API (its ROUTER socket): ``OrderIntent`` (submit), ``CancelOrder``, ``CancelAll``,
``Query("orders"|"order"|"positions"|"pnl")``; every answer is ``Reply(ok, code, reason, data)``.

A submit, in order: idempotency by ``client_order_id`` (given, or derived from the intent) ->
journal the intent (NEW) and publish ``order.new`` -> ask risk (deadline ``risk_timeout_ms``; no
answer, an error or a risk-side failure => REJECTED ``RISK_UNAVAILABLE``, nothing sent: fail
closed) -> journal "sent" and fsync -> the venue. Venue events (accepted, fills, cancels) go
through the state machine in ``orders.py``; each change is journaled, then published (``Fill``
on ``fill.P``, the whole ``Order`` on ``order.<status>``, ``Position`` on ``position.P``, ``PnL``
on ``pnl``; positions and PnL also every ``pnl_interval_s``). ``risk.killswitch`` engaged cancels
every working order. On start the journal rebuilds orders and positions (paper: resting orders go
back on the paper book; Coinbase: the venue reconciles open orders and fills).
"""
import random
import time

import zmq

from nodes.client import RequestClient, RequestTimeout
from nodes.runtime import Node, NodeStartError
from proto import (Book, CancelAll, CancelOrder, Code, Fill, KillSwitch, OrderIntent, Reply,
                   RiskDecision, RiskState, Tick, Trade, topics)

from . import orders as O
from .config import ExecutionConfig, check_live
from .journal import Journal, JournalError, compacted, rebuild
from .orders import (Accepted, Cancelled, Completed, Filled, OrderState, Rejected,
                     derive_client_order_id, same_intent, validate_intent)
from .paper import PaperVenue
from .positions import PositionBook, mid

__all__ = ["ExecutionNode", "ExecutionConfig"]

_RISK_PLUMBING = {Code.HANDLER_ERROR, Code.BAD_REQUEST, Code.UNKNOWN_REQUEST, Code.TIMEOUT, ""}


class ExecutionNode(Node):
    """Execution: the risk-gated, journaled order router (paper or Coinbase venue)."""

    name = "execution"
    subscriptions = (topics.MD, topics.RISK_KILLSWITCH, topics.RISK_STATE)

    def __init__(self, mesh, conf=None, *, context=None, secrets=None, instance=None):
        super().__init__(mesh, conf if conf is not None else ExecutionConfig(), context=context,
                         secrets=secrets, instance=instance)
        c = self.conf
        check_live(c, self.secrets)          # raises LiveTradingRefused (a ConfigError) saying why
        self.journal = Journal(self.journal_path(), fsync=c.journal_fsync)
        self.orders: dict = {}               # coid -> OrderState
        self.by_venue_id: dict = {}          # venue order id -> coid
        self.fill_ids: set = set()
        self.book = PositionBook(c.starting_equity)
        self.venue = None
        self.risk = None
        self.killswitch = False
        self.risk_state = ""
        self._out: list = []                 # (topic, msg, ts) waiting for the journal sync
        self._dirty: set = set()             # products whose Position changed
        self._cancel_why: dict = {}          # coid -> (code, reason) of a requested cancel
        self._jitter = random.Random(c.paper_seed)
        self.c = dict.fromkeys(("submits", "accepted", "rejected", "risk_denied", "risk_unavailable",
                                "risk_timeouts", "fills", "cancelled", "duplicates", "invalid",
                                "venue_unknown_events", "foreign_updates", "late_fills"), 0)
        self.on(Tick, self._on_tick)
        self.on(Book, self._on_book)
        self.on(Trade, self._on_trade)
        self.on(KillSwitch, self._on_killswitch)
        self.on(RiskState, self._on_risk_state)
        self.serve(OrderIntent, self._on_submit)
        self.serve(CancelOrder, self._on_cancel)
        self.serve(CancelAll, self._on_cancel_all)
        self.queries.update(orders=self._q_orders, order=self._q_order, positions=self._q_positions,
                            pnl=self._q_pnl)
        self.every(c.pnl_interval_s, self._periodic)
        self._pub_interval_ns = max(1, int(c.pnl_interval_s * 1e9))
        self._next_market_pub = 0
        self._last_market_pub = 0.0

    def journal_path(self):
        return self.mesh.state_path(self.conf.journal or f"execution/{self.conf.venue}.journal")

    # --- lifecycle ------------------------------------------------------------------------------
    def setup(self):
        c = self.conf
        try:
            records = self.journal.open()
        except (JournalError, OSError) as e:
            raise NodeStartError(f"journal: {e}") from None
        rb = rebuild(records)
        self.orders = rb.orders
        for o in self.orders.values():
            if o.venue_order_id:
                self.by_venue_id[o.venue_order_id] = o.client_order_id
        if rb.book is not None:
            self.book.restore(rb.book)
        for f, ts in rb.fills:
            self.fill_ids.add(f.fill_id)
            self.book.apply_fill(f, ts)
        if rb.day is not None and rb.day[0] >= (self.book.day or ""):
            self.book.restore_day(*rb.day)
        self._roll(time.time_ns())
        if c.journal_compact_records and len(records) > c.journal_compact_records:
            self._compact(rb, len(records))
        working = [o for o in self.orders.values() if o.working]
        self.log.info("journal %s: %d records, %d orders (%d working), %d fills", self.journal.path,
                      len(records), len(self.orders), len(working), len(rb.fills))
        self.risk = RequestClient.for_node(self.mesh, "risk", timeout_ms=c.risk_timeout_ms,
                                           source=self.instance, context=self._ctx)
        if c.venue == "paper":
            # the venue's ids come from a seeded generator: after a restart, continue from a seed the
            # journal fixes, so no id (and no fill id) of an order already journaled is issued again
            seed = c.paper_seed if not records else f"{c.paper_seed}:{len(records)}:{records[-1].get('ts', 0)}"
            self.venue = PaperVenue(self.mesh.product_specs, seed=seed,
                                    slippage_bps=c.slippage_bps, maker_fee_bps=c.maker_fee_bps,
                                    taker_fee_bps=c.taker_fee_bps)
            interrupted = [o for o in working if o.status != O.NEW and not self.venue.restore(o)]
        else:
            interrupted = []
            from .coinbase import CoinbaseVenue
            self.venue = CoinbaseVenue(c, self.mesh, self.secrets, post=self.call_soon, log=self.log,
                                       on_events=self._on_venue_events, on_update=self._on_venue_update)
        now = time.time_ns()
        for o in working:
            if o.status != O.NEW:
                continue
            if not o.sent:
                self._reject(o, Code.RISK_UNAVAILABLE, "node restarted before risk answered; nothing was sent", now)
            elif c.venue == "paper":
                self._reject(o, Code.VENUE_UNAVAILABLE,
                             "node restarted before the paper venue acknowledged the order", now)
            # coinbase: sent but unacknowledged orders are looked up by client_order_id (reconcile)
        for o in interrupted:       # paper: died between two fills of an immediate order
            self._transition(o, O.CANCELLED, now, Code.VENUE_UNAVAILABLE,
                             "node restarted while the order was executing; remainder cancelled")
        self._commit()
        if c.venue == "coinbase":
            self.venue.start([o for o in self.orders.values() if o.working])

    def _compact(self, rb, n):
        """Rewrite the journal: a positions snapshot + the orders worth remembering."""
        now = time.time_ns()
        keep_since = now - self.conf.journal_keep_days * 86_400 * 1_000_000_000
        day = (self.book.day, self.book.day_start_equity) if self.book.day else rb.day
        recs = compacted(rb._replace(day=day), self.book.to_plain(), keep_since, now)
        self.journal.rewrite(recs)
        kept = {r["o"]["client_order_id"] for r in recs if r["k"] == "order"}
        self.orders = {k: o for k, o in self.orders.items() if k in kept}
        self.by_venue_id = {v: k for v, k in self.by_venue_id.items() if k in kept}
        self.log.info("journal compacted: %d records -> %d (%d orders kept)", n, len(recs), len(kept))

    def teardown(self):
        if self.venue is not None and hasattr(self.venue, "stop"):
            self.venue.stop()
        if self.risk is not None:
            self.risk.close()
        self.journal.close()

    def extra_counters(self) -> dict:
        out = {f"exec.{k}": v for k, v in self.c.items()}
        out["exec.working_orders"] = sum(1 for o in self.orders.values() if o.working)
        out["exec.journal_records"] = self.journal.records
        if self.venue is not None:
            out["exec.venue_submits"] = getattr(self.venue, "submitted", 0)
            for k, v in getattr(self.venue, "counters", {}).items():
                out[f"exec.venue.{k}"] = v
        return out

    # --- market data and risk events --------------------------------------------------------------
    def _on_tick(self, env):
        m = env.msg
        if m.bid > 0 and m.ask > 0:
            self._mark(m.product, mid(m.bid, m.ask), env.ts_recv)
        if self.conf.venue == "paper":
            self.venue.on_tick(m, env.ts_recv)
        self._market_clock(env.ts_event)

    def _on_book(self, env):
        m = env.msg
        if m.bids and m.asks:
            self._mark(m.product, mid(m.bids[0][0], m.asks[0][0]), env.ts_recv)
        if self.conf.venue == "paper":
            self.venue.on_book(m, env.ts_recv)
        self._market_clock(env.ts_event)

    def _market_clock(self, ts_event):
        """Positions and PnL every ``pnl_interval_s`` of *market* time (exchange timestamps): a
        replay then publishes the same marks at the same points whatever its speed. The wall-clock
        timer (``_periodic``) only covers a silent feed."""
        nxt = self._next_market_pub
        if ts_event < nxt:
            return
        iv = self._pub_interval_ns
        self._next_market_pub = ts_event - ts_event % iv + iv
        if nxt:
            self._last_market_pub = time.monotonic()
            self._publish_periodic(ts_event)

    def _on_trade(self, env):
        if self.conf.venue == "paper" and self.venue.resting:
            events = self.venue.on_trade(env.msg, env.ts_recv)
            if events:
                self._apply(events)
                self._commit()

    def _mark(self, product, mark, ts):
        self._roll(ts)
        self.book.set_mark(product, mark, ts)

    def _on_killswitch(self, env):
        m = env.msg
        was, self.killswitch = self.killswitch, m.engaged
        if m.engaged:
            working = [o for o in self.orders.values() if o.working]
            if working or not was:
                self.log.warning("kill switch engaged (%s: %s): cancelling %d working orders",
                                 m.source, m.reason, len(working))
            for o in working:
                self._request_cancel(o, Code.KILL_SWITCH, f"kill switch engaged: {m.reason}")
            self._commit()
        elif was:
            self.log.info("kill switch released")

    def _on_risk_state(self, env):
        m = env.msg
        if m.state != self.risk_state:
            self.log.info("risk state %s -> %s (%s)", self.risk_state or "?", m.state, m.reason)
            self.risk_state = m.state

    # --- requests -------------------------------------------------------------------------------
    def _on_submit(self, env):
        intent = env.msg
        now = time.time_ns()
        coid = intent.client_order_id or derive_client_order_id(intent)
        if coid != intent.client_order_id:
            intent = intent._replace(client_order_id=coid)
        o = self.orders.get(coid)
        if o is not None:
            self.c["duplicates"] += 1
            if not same_intent(o, intent):
                return Reply(False, Code.DUPLICATE,
                             f"client_order_id {coid} is already used by a different order", o.to_proto())
            return Reply(o.status != O.REJECTED, Code.DUPLICATE,
                         f"client_order_id {coid} already known ({o.status}): the existing order is "
                         f"returned and nothing was sent again", o.to_proto())
        self.c["submits"] += 1
        o = OrderState.from_intent(intent, self.conf.venue, now)
        self.orders[coid] = o
        self.journal.order(o, now)                       # the intent, before anything else
        self._emit(topics.ORDER_NEW, o.to_proto(), now)
        bad = validate_intent(intent, self.mesh.spec(intent.product)) or self._reduce_only_violation(intent)
        if bad is not None:
            self.c["invalid"] += 1
            self._reject(o, bad[0], bad[1], now)           # nothing asked, nothing sent
            self._commit()
            return self._reply(o)
        # order.new goes out now; its record is fsync'd with the "sent" one below (if power fails
        # before that, the order never left the node: nothing to remember)
        self._commit(sync=False)
        ok, code, reason = self._ask_risk(intent)
        now = time.time_ns()
        if not ok:
            self.c["risk_unavailable" if code == Code.RISK_UNAVAILABLE else "risk_denied"] += 1
            self._reject(o, code, reason, now)
            self._commit()
            return self._reply(o)
        o.sent = True
        o.updated_ns = now
        self.journal.order(o, now)
        self.journal.sync()                              # durable BEFORE it leaves the node
        self._to_venue(o, now)
        self._commit()
        return self._reply(o)

    def _reduce_only_violation(self, intent):
        """A reduce-only order must shrink the filled position, never grow or flip it."""
        if not intent.reduce_only:
            return None
        p = self.book.positions.get(intent.product)
        q = p.qty if p is not None else 0
        if not q:
            return Code.REDUCE_ONLY, f"reduce-only: no {intent.product} position to reduce"
        if (q > 0) == (intent.side == "BUY"):
            return Code.REDUCE_ONLY, f"reduce-only {intent.side} would grow the {q} {intent.product} position"
        if intent.size is not None and intent.size > abs(q):
            return Code.REDUCE_ONLY, f"reduce-only size {intent.size} exceeds the position {abs(q)}"
        return None

    def _ask_risk(self, intent):
        """(approved, code, reason). Anything but a clear answer from risk is RISK_UNAVAILABLE."""
        ms = self.conf.risk_timeout_ms
        try:
            r = self.risk.request(intent)
        except RequestTimeout:
            self.c["risk_timeouts"] += 1
            return False, Code.RISK_UNAVAILABLE, f"risk did not answer within {ms} ms"
        except Exception as e:  # noqa: BLE001 - zmq or encoding trouble: fail closed
            self.risk.close()
            return False, Code.RISK_UNAVAILABLE, f"risk request failed: {type(e).__name__}: {e}"
        decision = r.data if type(r.data) is RiskDecision else None
        if r.ok:
            if decision is not None and (not decision.approved
                                         or decision.client_order_id not in ("", intent.client_order_id)):
                return False, Code.RISK_UNAVAILABLE, "risk reply inconsistent with its decision; failing closed"
            return True, Code.OK, r.reason
        if r.code in _RISK_PLUMBING:
            return False, Code.RISK_UNAVAILABLE, f"risk could not decide ({r.code}: {r.reason})"
        return False, r.code, r.reason

    def _to_venue(self, o, now):
        if self.conf.venue != "paper":
            self.venue.submit(o)                         # asynchronous: events come back via call_soon
            return
        delay = self._latency()
        if delay:
            self.after(delay, lambda coid=o.client_order_id: self._paper_deliver(coid))
        else:
            self._apply(self.venue.submit(o, now))

    def _latency(self) -> float:
        c = self.conf
        ms = c.latency_ms + (self._jitter.uniform(0, c.latency_jitter_ms) if c.latency_jitter_ms else 0.0)
        return ms / 1000.0

    def _paper_deliver(self, coid):
        o = self.orders.get(coid)
        if o is None or o.status != O.NEW:
            return
        self._apply(self.venue.submit(o, time.time_ns()))
        self._commit()

    def _on_cancel(self, env):
        key = env.msg.client_order_id
        o = self.orders.get(key) or self.orders.get(self.by_venue_id.get(key, ""))
        if o is None:
            return Reply(False, Code.UNKNOWN_ORDER, f"no order {key!r}")
        if not o.working:
            return Reply(False, Code.NOT_CANCELLABLE, f"order {o.client_order_id} is {o.status}", o.to_proto())
        self._request_cancel(o, Code.OK, "cancelled by request")
        self._commit()
        return Reply(True, Code.OK, "cancelled" if o.status == O.CANCELLED else "cancel requested",
                     o.to_proto())

    def _on_cancel_all(self, env):
        product = env.msg.product
        hit = [o for o in self.orders.values() if o.working and (not product or o.product == product)]
        for o in hit:
            self._request_cancel(o, Code.OK, "cancel-all")
        self._commit()
        return Reply(True, Code.OK, f"cancel requested for {len(hit)} orders",
                     [o.client_order_id for o in hit])

    def _request_cancel(self, o, code, reason):
        self._cancel_why[o.client_order_id] = (code, reason)
        if o.status == O.NEW:        # not acknowledged yet: cancel as soon as the venue accepts it
            o.cancel_requested = True
            return
        if self.conf.venue != "paper":
            o.cancel_requested = True
            self.venue.cancel(o)
            return
        delay = self._latency()
        if delay:
            self.after(delay, lambda coid=o.client_order_id: self._paper_cancel(coid))
        else:
            self._apply(self.venue.cancel(o.client_order_id, time.time_ns(), code, reason))

    def _paper_cancel(self, coid):
        code, reason = self._cancel_why.get(coid, (Code.OK, "cancelled by request"))
        self._apply(self.venue.cancel(coid, time.time_ns(), code, reason))
        self._commit()

    # --- queries --------------------------------------------------------------------------------
    def _q_orders(self, arg):
        if arg == "all":
            return [o.to_proto() for o in list(self.orders.values())[-1000:]]
        return [o.to_proto() for o in self.orders.values() if o.working and (not arg or o.product == arg)]

    def _q_order(self, arg):
        o = self.orders.get(arg) or self.orders.get(self.by_venue_id.get(arg, ""))
        if o is None:
            return Reply(False, Code.UNKNOWN_ORDER, f"no order {arg!r}")
        return o.to_proto()

    def _q_positions(self, arg):
        if arg:
            return [self.book.position(arg)]
        return self.book.snapshot()

    def _q_pnl(self, arg):
        return self.book.pnl()

    # --- venue events -> state machine -> journal -> publish ---------------------------------------
    def _on_venue_events(self, events):
        """From the Coinbase worker threads (via call_soon)."""
        self._apply(events)
        self._commit()

    def _on_venue_update(self, update):
        """A Coinbase order snapshot (user channel or REST): turn it into venue events."""
        from .coinbase import update_events
        o = self.orders.get(update.coid) or self.orders.get(self.by_venue_id.get(update.venue_order_id, ""))
        if o is None:
            self.c["foreign_updates"] += 1
            if self.c["foreign_updates"] <= 5:
                self.log.warning("update for an order this node did not place: %s (%s)",
                                 update.venue_order_id, update.coid)
            return
        self._apply(update_events(o, update, self._cancel_why.get(o.client_order_id)))
        self._commit()

    def _apply(self, events):
        cancel_now = []          # accepted orders with a cancel waiting: cancelled after the batch
        for ev in events:
            o = self.orders.get(ev.coid)
            if o is None:
                self.c["venue_unknown_events"] += 1
                self.log.warning("venue event for unknown order %s: %s", ev.coid, type(ev).__name__)
                continue
            t = type(ev)
            if t is Filled:
                if self._fill(o, ev) and o.cancel_requested:
                    cancel_now.append(o)
            elif t is Accepted:
                if self._accept(o, ev.venue_order_id, ev.ts) and o.cancel_requested:
                    cancel_now.append(o)
            elif t is Rejected:
                if o.status == O.NEW:
                    self._reject(o, ev.code, ev.reason, ev.ts)
                else:
                    self.log.warning("venue rejected %s after it was %s: %s", o.client_order_id, o.status, ev.reason)
            elif t is Cancelled:
                self._accept(o, "", ev.ts)
                if o.working:
                    code, reason = ev.code, ev.reason
                    if o.cancel_requested and o.client_order_id in self._cancel_why:
                        code, reason = self._cancel_why[o.client_order_id]
                    self._transition(o, O.CANCELLED, ev.ts, code, reason)
                    self.c["cancelled"] += 1
            elif t is Completed:
                self._accept(o, "", ev.ts)
                if o.working:
                    if o.filled_size > 0:
                        self._transition(o, O.FILLED, ev.ts)
                    else:
                        self._transition(o, O.CANCELLED, ev.ts, Code.VENUE_REJECT,
                                         "venue completed the order with no fill")
        for o in cancel_now:
            if o.working:
                self._request_cancel(o, *self._cancel_why.get(o.client_order_id, (Code.OK, "cancelled by request")))

    def _accept(self, o, venue_order_id, ts) -> bool:
        """NEW -> ACCEPTED (True), or just learn the venue id of an accepted order (False)."""
        if venue_order_id and not o.venue_order_id:
            o.venue_order_id = venue_order_id
            self.by_venue_id[venue_order_id] = o.client_order_id
        if o.status != O.NEW:
            return False
        self.c["accepted"] += 1
        self._transition(o, O.ACCEPTED, ts or time.time_ns(), Code.OK, "")
        return True

    def _fill(self, o, ev) -> bool:
        """Book one execution; True when it also accepted a NEW order."""
        if ev.fill_id in self.fill_ids:
            return False
        accepted = self._accept(o, "", ev.ts)
        self.fill_ids.add(ev.fill_id)
        ts = ev.ts or time.time_ns()
        o.apply_fill(ev.price, ev.size, ev.fee)
        fill = Fill(ev.fill_id, o.client_order_id, o.product, o.side, ev.price, ev.size, ev.fee,
                    ev.liquidity, o.venue)
        if o.working:
            dst = O.FILLED if ev.done or (o.size is not None and o.filled_size >= o.size) else O.PARTIALLY_FILLED
            order = o.transition(dst, ts)
        else:   # the venue executed after we saw the order end: money is money, book it anyway
            self.c["late_fills"] += 1
            self.log.error("fill %s for %s order %s booked without a state change", ev.fill_id, o.status,
                           o.client_order_id)
            order = o.to_proto()
        self.c["fills"] += 1
        self._roll(ts)
        self.book.apply_fill(fill, ts)
        self.journal.fill(o, fill, ts)
        self._emit(topics.fill(o.product), fill, ts)
        self._emit(topics.ORDER_STATUS_TOPIC[order.status], order, ts)
        self._dirty.add(o.product)
        return accepted

    def _reject(self, o, code, reason, ts):
        self.c["rejected"] += 1
        self._transition(o, O.REJECTED, ts, code, reason)
        self.log.info("rejected %s %s %s: %s %s", o.client_order_id, o.side, o.product, code, reason)

    def _transition(self, o, dst, ts, code=None, reason=None):
        order = o.transition(dst, ts, code, reason)
        self.journal.order(o, ts)
        self._emit(topics.ORDER_STATUS_TOPIC[dst], order, ts)

    def _reply(self, o) -> Reply:
        rejected = o.status == O.REJECTED
        return Reply(not rejected, o.code if rejected else Code.OK, o.reason, o.to_proto())

    # --- publishing -----------------------------------------------------------------------------
    def _emit(self, topic, msg, ts):
        self._out.append((topic, msg, ts))

    def _commit(self, pnl: bool = False, sync: bool = True):
        """Journal first (fsync), then the world hears about it."""
        if sync:
            self.journal.sync()
        out, self._out = self._out, []
        for topic, msg, ts in out:
            self._publish_safe(topic, msg, ts)
        if self._dirty or pnl:
            for p in sorted(self._dirty):
                self._publish_safe(topics.position(p), self.book.position(p), 0)
            self._dirty.clear()
            self._publish_safe(topics.PNL, self.book.pnl(), 0)

    def _publish_safe(self, topic, msg, ts):
        try:
            self.publish(topic, msg, ts, ts)
        except zmq.ZMQError as e:   # HWM: subscribers see a gap; state is in the journal anyway
            self.log.warning("publish %s failed: %s", topic, e)

    def _roll(self, ts):
        if self.book.roll(ts):
            self.journal.day(self.book.day, self.book.day_start_equity, ts)

    def _periodic(self):
        if time.monotonic() - self._last_market_pub < self.conf.pnl_interval_s:
            return                      # the market clock published within the interval
        self._publish_periodic(time.time_ns())

    def _publish_periodic(self, now):
        self._roll(now)
        for p in self.book.traded():
            self._dirty.add(p.product)
        self._commit(pnl=True)
