"""The execution node: the one owner of positions, working orders and in-flight orders; every
order passes the pre-trade checks here, in-process, then goes to the paper venue or to Coinbase.

Request API (its ROUTER socket): ``OrderIntent`` (submit), ``CancelOrder``, ``CancelAll``,
``Query("orders"|"order"|"positions"|"pnl"|"pretrade")``; every answer is ``Reply(ok, code, reason, data)``.

A submit, in order: idempotency by ``client_order_id`` (given, or derived from the intent) ->
journal the intent (NEW) and publish ``order.new`` -> the pre-trade checks (``pretrade.PreTrade``:
the risk node's check functions over this node's exact book and the latest ``risk.snapshot``; no
state, a stale one, or risk known down => REJECTED ``RISK_UNAVAILABLE`` naming why, nothing sent:
fail closed) -> ``risk.decision`` -> journal "sent" and fsync -> the venue. Nothing here waits on
another node. Venue events (accepted, fills, cancels) go through the state machine in
``orders.py``; each change is journaled, then published (``Fill`` on ``fill.P``, the whole ``Order``
on ``order.<status>``, ``Position`` on ``position.P``, ``PnL`` on ``pnl``, ``RiskExposure`` on
``risk.exposure``; positions and PnL also every ``pnl_interval_s``). An engaged kill switch cancels
every working order; with ``risk.flatten_on_halt`` a HALTED state sends reduce-only market exits
for every position (again every ``FLATTEN_RETRY_S`` until flat). On start the journal rebuilds
orders and positions (paper: resting orders go back on the paper book; Coinbase: the venue
reconciles open orders and fills).
"""
import collections
import random
from decimal import ROUND_DOWN, Decimal

import zmq

from nodes.runtime import Node, NodeStartError
from proto import (Book, CancelAll, CancelOrder, Code, Fill, Heartbeat, KillSwitch, OrderIntent,
                   ProcessEvent, Query, Reply, RiskBand, RiskExposure, RiskSnapshot, RiskState, Tick, Trade,
                   topics)

from . import orders as O
from .config import ExecutionConfig, check_live
from .journal import Journal, JournalError, compacted, rebuild
from .orders import (Accepted, Cancelled, Completed, Filled, OrderState, Rejected,
                     derive_client_order_id, same_intent, validate_intent)
from .paper import PaperVenue
from .positions import PositionBook, mid
from .pretrade import BadSnapshot, PreTrade
from .recent import DigestSet, Finished, digest

__all__ = ["ExecutionNode", "ExecutionConfig"]

FLATTEN_RETRY_S = 5.0
ZERO_D = Decimal(0)


class ExecutionNode(Node):
    """Execution: the risk-gated, journaled order router (paper or Coinbase venue)."""

    name = "execution"
    subscriptions = (topics.MD_TICK, topics.MD_BOOK, topics.MD_TRADE, topics.RISK_SNAPSHOT,
                     topics.RISK_BAND, topics.RISK_KILLSWITCH, topics.RISK_STATE,
                     topics.heartbeat("risk"), topics.NODE_PROCESS)

    def __init__(self, mesh, conf=None, *, context=None, secrets=None, instance=None):
        super().__init__(mesh, conf if conf is not None else ExecutionConfig(), context=context,
                         secrets=secrets, instance=instance)
        c = self.conf
        check_live(c, self.secrets)          # raises LiveTradingRefused (a ConfigError) saying why
        self.journal = Journal(self.journal_path(), fsync=c.journal_fsync)
        self.orders: dict = {}               # coid -> OrderState: working + the latest finished ones
        self.by_venue_id: dict = {}          # venue order id -> coid (orders held in memory)
        self.fill_ids: set = set()           # the fills booked for the orders held in memory
        self._fills_of: dict = {}            # coid -> its fill ids (leave memory with the order)
        self.known = DigestSet()             # every client order id ever placed here (8 bytes each)
        self.finished = Finished(c.orders_in_memory)
        self.book = PositionBook(c.starting_equity)
        self.working: dict = {}              # coid -> OrderState, working orders only
        self.strategy_pos: dict = {}         # strategy -> {product: signed qty}, from fills
        self.recent_fills = collections.deque(maxlen=512)   # fill ids, for a strategy's restore
        self.pretrade = PreTrade(mesh, self.book, self.working, clock=lambda: self.clock(),
                                 heartbeat_timeout_s=3 * mesh.heartbeat_s)
        self.venue = None
        self.killswitch = False
        self.risk_state = ""
        self._ready_why = None               # last readiness verdict ("" = ready)
        self._flatten_n = 0
        self._flatten_sent = {}              # product -> clock time of the last exit sent
        self._exposure_key = None
        self._out: list = []                 # (topic, msg, ts) waiting for the journal sync
        self._dirty: set = set()             # products whose Position changed
        self._cancel_why: dict = {}          # coid -> (code, reason) of a requested cancel
        self._jitter = random.Random(c.paper_seed)
        self.c = dict.fromkeys(("submits", "accepted", "rejected", "risk_denied", "risk_unavailable",
                                "risk_snapshots", "risk_snapshots_bad", "flatten_orders", "journal_lookups",
                                "fills", "cancelled", "duplicates", "invalid",
                                "venue_unknown_events", "foreign_updates", "late_fills"), 0)
        self.on(Tick, self._on_tick)
        self.on(Book, self._on_book)
        self.on(Trade, self._on_trade)
        self.on(KillSwitch, self._on_killswitch)
        self.on(RiskState, self._on_risk_state)
        self.on(RiskSnapshot, self._on_snapshot)
        self.on(RiskBand, lambda env: self.pretrade.view.apply_band(env.msg))
        self.on(Heartbeat, self._on_risk_heartbeat)
        self.on(ProcessEvent, self._on_process)
        self.serve(OrderIntent, self._on_submit)
        self.serve(CancelOrder, self._on_cancel)
        self.serve(CancelAll, self._on_cancel_all)
        self.queries.update(orders=self._q_orders, order=self._q_order, positions=self._q_positions,
                            pnl=self._q_pnl, pretrade=self._q_pretrade)
        self.every(c.pnl_interval_s, self._periodic)
        self.every(max(0.25, mesh.heartbeat_s / 4), self._watch_risk)
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
            self.known.add(o.client_order_id)
            if o.venue_order_id:
                self.by_venue_id[o.venue_order_id] = o.client_order_id
            if o.working:
                self.working[o.client_order_id] = o
        if rb.book is not None:
            self.book.restore(rb.book)
        for f, ts in rb.fills:
            self._book_fill_id(f.client_order_id, f.fill_id)
            self.book.apply_fill(f, ts)
            o = self.orders.get(f.client_order_id)
            if o is not None:
                self._strategy_fill(o.strategy, f)
        if rb.day is not None and rb.day[0] >= (self.book.day or ""):
            self.book.restore_day(*rb.day)
        self._roll(self.now_ns())
        if c.journal_compact_records and len(records) > c.journal_compact_records:
            self._compact(rb, len(records))
        working = [o for o in self.orders.values() if o.working]
        self.log.info("journal %s: %d records, %d orders (%d working), %d fills", self.journal.path,
                      len(records), len(self.orders), len(working), len(rb.fills))
        for o in list(self.orders.values()):    # finished ones beyond the limit leave memory
            if not o.working:
                self._forget(self.finished.add(o.client_order_id))
        # ask risk for its state at once instead of waiting for the next periodic snapshot; the
        # reply arrives in this loop like any event (nothing waits for it)
        self.request("risk", Query("snapshot"), self._on_snapshot_reply, lambda why: None)
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
        now = self.now_ns()
        for o in working:
            if o.status != O.NEW:
                continue
            if not o.sent:
                self._reject(o, Code.RISK_UNAVAILABLE, "node restarted before the order was checked; nothing was sent", now)
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
        now = self.now_ns()
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
        self.journal.close()

    def extra_counters(self) -> dict:
        out = {f"exec.{k}": v for k, v in self.c.items()}
        out["exec.working_orders"] = len(self.working)
        out["exec.orders_in_memory"] = len(self.orders)
        out["exec.known_orders"] = len(self.known)
        out["exec.ready"] = int(not self.pretrade.ready())         # every product
        why, ready = self.pretrade.ready_products()
        out["exec.risk_ok"] = int(not why)
        for p in self.mesh.products:
            out[f"exec.ready.{p}"] = int(p in ready)
        age = self.pretrade.view.age_ms(self.clock())
        if age is not None:
            out["risk_state_age_ms"] = age
        for k, v in self.pretrade.counters.items():
            out[f"exec.pretrade.{k}"] = v
        out["exec.journal_records"] = self.journal.records
        if self.venue is not None:
            out["exec.venue_submits"] = getattr(self.venue, "submitted", 0)
            for k, v in getattr(self.venue, "counters", {}).items():
                out[f"exec.venue.{k}"] = v
        return out

    # --- market data and risk events --------------------------------------------------------------
    def _on_tick(self, env):
        m = env.msg
        q = self.pretrade.quotes.get(m.product)
        if q is not None:
            q.on_tick(m)
        if m.bid > 0 and m.ask > 0:
            self._mark(m.product, mid(m.bid, m.ask), env.ts_recv)
        if self.conf.venue == "paper":
            self.venue.on_tick(m, env.ts_recv)
        self._market_clock(env.ts_event)

    def _on_book(self, env):
        m = env.msg
        q = self.pretrade.quotes.get(m.product)
        if q is not None:
            q.on_book(m)
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
            self._last_market_pub = self.clock()
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
        self._killswitch(m.engaged, m.source, m.reason)

    def _killswitch(self, engaged, source, reason):
        was, self.killswitch = self.killswitch, engaged
        if engaged:
            working = list(self.working.values())
            if working or not was:
                self.log.warning("kill switch engaged (%s: %s): cancelling %d working orders",
                                 source, reason, len(working))
            for o in working:
                if o.strategy != "risk.flatten":
                    self._request_cancel(o, Code.KILL_SWITCH, f"kill switch engaged: {reason}")
            self._commit()
        elif was:
            self.log.info("kill switch released")

    def _on_risk_state(self, env):
        m = env.msg
        if m.state != self.risk_state:
            self.log.info("risk state %s -> %s (%s)", self.risk_state or "?", m.state, m.reason)
            self.risk_state = m.state

    def _on_snapshot(self, env):
        self._take_snapshot(env.msg)

    def _on_snapshot_reply(self, reply):
        if reply.ok and type(reply.data) is RiskSnapshot:
            self._take_snapshot(reply.data)

    def _take_snapshot(self, snap):
        v = self.pretrade.view
        try:
            if not v.apply(snap, self.clock()):
                return
        except BadSnapshot as e:
            self.c["risk_snapshots_bad"] += 1
            self.log.error("risk snapshot v%d dropped: %s", snap.version, e)
            return
        self.c["risk_snapshots"] += 1
        if snap.killswitch != self.killswitch:
            self._killswitch(snap.killswitch, snap.ks_source, snap.ks_reason)
        if snap.state != self.risk_state:
            self.log.info("risk state %s -> %s (%s)", self.risk_state or "?", snap.state, snap.state_reason)
            self.risk_state = snap.state
        if snap.state == "HALTED" and snap.flatten_on_halt:
            self._flatten()
        self._publish_exposure()
        self._check_ready()

    def _on_risk_heartbeat(self, env):
        if env.msg.node == "risk":
            self.pretrade.view.on_heartbeat(env.msg, self.clock())
            self._check_ready()

    def _on_process(self, env):
        ev = env.msg
        if ev.program == "risk" and ev.state in ("EXITED", "FATAL", "STOPPED", "BACKOFF"):
            self.pretrade.view.mark_down(f"supervisord reports {ev.group}:{ev.program} {ev.state} (pid {ev.pid})")
            self._check_ready()

    def _watch_risk(self):
        """Every 0.25 s (a quarter heartbeat when heartbeats are slower): readiness (risk state age) and, while HALTED with flatten_on_halt, exits
        for positions still open."""
        self._check_ready()
        v = self.pretrade.view
        if v.snap is not None and v.snap.state == "HALTED" and v.snap.flatten_on_halt:
            self._flatten(retry=True)

    def _check_ready(self):
        why, ready = self.pretrade.ready_products()
        if (why, ready) != self._ready_why:
            if why:
                (self.log.warning if self._ready_why and not self._ready_why[0] else self.log.info)(
                    "not ready: %s", why)
            else:
                missing = self.pretrade.not_ready_products()
                self.log.info("ready for %s: risk state v%d%s", ", ".join(ready) or "no product",
                              self.pretrade.view.snap.version,
                              "".join(f"; {missing[p]}" for p in sorted(missing)))
            self._ready_why = (why, ready)
            if self.pub is not None:
                self._heartbeat()           # strategies wait for exec.ready.<P>: tell them now

    def _flatten(self, retry: bool = False):
        """Reduce-only market exits for open positions not covered by working exits: on entering
        HALTED every position; on the timer (``retry``) those whose last exit is older than
        FLATTEN_RETRY_S. Each passes the same checks (an exit is allowed while halted)."""
        now = self.clock()
        for p, pos in sorted(self.book.positions.items()):
            q = pos.qty
            spec = self.mesh.spec(p)
            if not q or spec is None:
                continue
            side = "SELL" if q > 0 else "BUY"
            covering = sum((o.remaining or 0) for o in self.working.values()
                           if o.product == p and o.side == side and o.reduce_only)
            if covering >= abs(q):
                continue
            last = self._flatten_sent.get(p)
            if last is not None and now - last < (FLATTEN_RETRY_S if retry else 0.5):
                continue
            size = (abs(q) - covering).quantize(spec.base_increment, rounding=ROUND_DOWN)
            if size < spec.base_min_size:
                continue
            self._flatten_sent[p] = now
            self._flatten_n += 1
            self.c["flatten_orders"] += 1
            intent = OrderIntent(p, side, "MARKET", size=size, tif="IOC", reduce_only=True,
                                 client_order_id=f"flatten-{p}-{self.pretrade.view.snap.epoch_ns}-{self._flatten_n}",
                                 strategy="risk.flatten")
            self.log.warning("flatten on halt: %s %s %s", side, size, p)
            r = self._submit(intent)
            if not r.ok:
                self.log.error("flatten %s %s %s refused: %s %s", side, size, p, r.code, r.reason)

    # --- requests -------------------------------------------------------------------------------
    def _on_submit(self, env):
        return self._submit(env.msg)

    def _submit(self, intent) -> Reply:
        now = self.now_ns()
        coid = intent.client_order_id or derive_client_order_id(intent)
        if coid != intent.client_order_id:
            intent = intent._replace(client_order_id=coid)
        o = self.orders.get(coid)
        known = None
        if o is None:
            d = digest(coid)                    # once: the membership test and the add below
            if d in self.known:
                o = self._from_journal(coid)    # an old, finished order that left memory
            else:
                known = d
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
        if known is not None:
            self.known.add(known, new=True)
        else:
            self.known.add(coid)
        self.journal.order(o, now)                       # the intent, before anything else
        self._emit(topics.ORDER_NEW, o.to_proto(), now)
        bad = validate_intent(intent, self.mesh.spec(intent.product)) or self._reduce_only_violation(intent)
        if bad is not None:
            self.c["invalid"] += 1
            self._reject(o, bad[0], bad[1], now)           # nothing checked, nothing sent
            self._commit()
            return self._reply(o)
        dec, size = self.pretrade.decide(intent)
        self._emit(topics.RISK_DECISION, dec, now)
        if not dec.approved:
            self.c["risk_unavailable" if dec.code == Code.RISK_UNAVAILABLE else "risk_denied"] += 1
            self._reject(o, dec.code, dec.reason, now)
            self._commit()
            return self._reply(o)
        if intent.size is None:
            o.est_size = size
        o.sent = True
        o.updated_ns = now
        self.working[coid] = o                           # counted from now on, by the next check
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

    def _to_venue(self, o, now):
        if self.conf.venue != "paper":
            self.venue.submit(o)                         # asynchronous: events come back via call_soon
            return
        delay = self._latency()
        if delay:
            self.after(delay, lambda coid=o.client_order_id: self._paper_deliver(coid))
        else:
            # stamped when the venue takes it (after the checks and the journal), so the fill's
            # time is the time it executed; on the market clock (offline) the same as ``now``
            self._apply(self.venue.submit(o, self.now_ns()))

    def _latency(self) -> float:
        c = self.conf
        ms = c.latency_ms + (self._jitter.uniform(0, c.latency_jitter_ms) if c.latency_jitter_ms else 0.0)
        return ms / 1000.0

    def _paper_deliver(self, coid):
        o = self.orders.get(coid)
        if o is None or o.status != O.NEW:
            return
        self._apply(self.venue.submit(o, self.now_ns()))
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
            self._apply(self.venue.cancel(o.client_order_id, self.now_ns(), code, reason))

    def _paper_cancel(self, coid):
        code, reason = self._cancel_why.get(coid, (Code.OK, "cancelled by request"))
        self._apply(self.venue.cancel(coid, self.now_ns(), code, reason))
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

    def _finish(self, o):
        """A terminal order: out of the working book; the oldest finished orders beyond
        ``orders_in_memory`` leave memory (journaled already; ``known`` still has their ids)."""
        self.working.pop(o.client_order_id, None)
        self._forget(self.finished.add(o.client_order_id))

    def _book_fill_id(self, coid, fill_id):
        self.fill_ids.add(fill_id)
        self._fills_of.setdefault(coid, []).append(fill_id)

    def _forget(self, coids):
        """Finished orders leave memory with their fill ids: a venue event for one of them later is
        an event for an unknown order (counted, logged), never a second booking."""
        for coid in coids:
            o = self.orders.pop(coid, None)
            if o is not None and o.venue_order_id:
                self.by_venue_id.pop(o.venue_order_id, None)
            self._cancel_why.pop(coid, None)
            for fid in self._fills_of.pop(coid, ()):
                self.fill_ids.discard(fid)

    def _from_journal(self, coid):
        """The journal's last record of ``coid`` (a finished order no longer in memory), or None."""
        from .journal import read_records
        self.journal.sync()
        last = None
        for rec in read_records(self.journal.path):
            o = rec.get("o")
            if rec.get("k") in ("order", "fill") and o and o.get("client_order_id") == coid:
                last = o
        self.c["journal_lookups"] += 1
        return OrderState.from_plain(last) if last is not None else None

    def _strategy_fill(self, strategy, f):
        pos = self.strategy_pos.setdefault(strategy or "", {})
        pos[f.product] = pos.get(f.product, ZERO_D) + (f.size if f.side == "BUY" else -f.size)

    def _q_positions(self, arg):
        if arg == "strategies":
            # each strategy's share of the positions (its orders' fills), and the latest fill ids:
            # a restarting strategy starts from this and applies only fills not in it
            return {"strategies": {k: dict(v) for k, v in self.strategy_pos.items()},
                    "recent_fills": list(self.recent_fills)}
        if arg:
            return [self.book.position(arg)]
        return self.book.snapshot()

    def _q_pnl(self, arg):
        return self.book.pnl()

    def _q_pretrade(self, arg):
        """The pre-trade gate's inputs as this node sees them: risk state version and age,
        readiness, and the counters of its decisions."""
        v, now = self.pretrade.view, self.clock()
        why = self.pretrade.ready([arg] if arg else None)      # arg: one product's readiness
        ready = self.pretrade.ready_products()[1]
        return {"ready": not why, "why_not": why, "products": {p: p in ready for p in self.mesh.products},
                "risk_state_version": None if v.snap is None else v.snap.version,
                "risk_state_age_ms": v.age_ms(now), "risk_state": None if v.snap is None else v.snap.state,
                "killswitch": None if v.snap is None else v.snap.killswitch, "risk_down": v.down,
                "working_orders": len(self.working), "counters": {"decisions": 0, **self.pretrade.counters}}

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
        self._transition(o, O.ACCEPTED, ts or self.now_ns(), Code.OK, "")
        return True

    def _fill(self, o, ev) -> bool:
        """Book one execution; True when it also accepted a NEW order."""
        if ev.fill_id in self.fill_ids:
            return False
        accepted = self._accept(o, "", ev.ts)
        self._book_fill_id(o.client_order_id, ev.fill_id)
        ts = ev.ts or self.now_ns()
        o.apply_fill(ev.price, ev.size, ev.fee)
        fill = Fill(ev.fill_id, o.client_order_id, o.product, o.side, ev.price, ev.size, ev.fee,
                    ev.liquidity, o.venue)
        if o.working:
            dst = O.FILLED if ev.done or (o.size is not None and o.filled_size >= o.size) else O.PARTIALLY_FILLED
            order = o.transition(dst, ts)
            if dst == O.FILLED:
                self._finish(o)
        else:   # the venue executed after we saw the order end: money is money, book it anyway
            self.c["late_fills"] += 1
            self.log.error("fill %s for %s order %s booked without a state change", ev.fill_id, o.status,
                           o.client_order_id)
            order = o.to_proto()
        self.c["fills"] += 1
        self._roll(ts)
        self.book.apply_fill(fill, ts)
        self._strategy_fill(o.strategy, fill)
        self.recent_fills.append(fill.fill_id)
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
        if dst in O.TERMINAL:
            self._finish(o)
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
        self._publish_exposure(force=pnl)

    def _publish_exposure(self, force: bool = False):
        """``risk.exposure``: positions and the worst case of working orders, valued at mid; on
        change (and with every periodic PnL)."""
        b = self.pretrade.book
        view = self.pretrade.view
        state = view.snap.state if view.snap is not None else ""
        positions, exposures = {}, {}
        gross = net = ZERO_D
        for p in sorted(b.products() | set(self.mesh.products)):
            q = b.qty(p)
            positions[p] = q
            mk = self.pretrade.mark(p)
            e = b.worst_abs(p) * mk if mk is not None else ZERO_D
            exposures[p] = e
            gross += e
            if mk is not None:
                net += q * mk
        key = (tuple(positions.items()), tuple(exposures.items()), state, self.killswitch)
        if not force and key == self._exposure_key:
            return
        self._exposure_key = key
        self._publish_safe(topics.RISK_EXPOSURE, RiskExposure(gross, net, positions, exposures, state,
                                                              self.killswitch), 0)

    def _publish_safe(self, topic, msg, ts):
        try:
            self.publish(topic, msg, ts, ts)
        except zmq.ZMQError as e:   # HWM: subscribers see a gap; state is in the journal anyway
            self.log.warning("publish %s failed: %s", topic, e)

    def _roll(self, ts):
        if self.book.roll(ts):
            self.journal.day(self.book.day, self.book.day_start_equity, ts)

    def _periodic(self):
        if self.clock() - self._last_market_pub < self.conf.pnl_interval_s:
            return                      # the market clock published within the interval
        self._publish_periodic(self.now_ns())

    def _publish_periodic(self, now):
        self._roll(now)
        for p in self.book.traded():
            self._dirty.add(p.product)
        self._commit(pnl=True)
