"""The market-data node: Coinbase Advanced Trade (raw websockets or the official SDK), a seeded
synthetic market, or a store-file replay -> normalised ``md.*`` events on the bus.

    source thread (asyncio / generator / file reader)          node loop thread
    frames -> Normalizer -> events ----- call_soon(batch) ----> books, feed health, publish

Every source ends in the same ``_on_batch``: live, synthetic and replayed data take one path.

Publishes ``md.tick.P`` (Tick), ``md.trade.P`` (Trade, taker side), ``md.book.P`` (top
``book_depth`` levels, at most ``book_publish_hz`` per product), ``md.status.P`` (FeedStatus: on
every change and every ``status_interval_s``; healthy only when connected and the product's book
is in sync), ``md.gap`` (FeedGap), ``md.stale`` (FeedStale), and ``raw.coinbase`` (RawFrame) with
``store_raw``. Answers ``Query("feed")`` and ``Query("replay")``.
"""
import threading
import time
from pathlib import Path

from proto import Book, FeedGap, FeedStale, FeedStatus, RawFrame, Tick, Trade, topics

from nodes.config import ConfigError
from nodes.runtime import Node

from .book import L2Book
from .config import MarketDataConfig
from .feed import Connected, Disconnected, RawEv, ReplayDone, Stale
from .normalize import (Ack, ErrorFrame, Frame, Gap, HeartbeatEv, L2Ev, OutOfOrder, ParseError, TickEv,
                        TradeEv)

__all__ = ["MarketDataNode", "MarketDataConfig"]

OK, STALE, GAP, DISCONNECTED, CROSSED = "OK", "STALE", "GAP", "DISCONNECTED", "CROSSED"
KNOWN_CHANNELS = frozenset(("ticker", "ticker_batch", "market_trades", "l2_data", "heartbeats", "subscriptions",
                            "status", "candles", "error"))
RAW_TOPIC = topics.RAW + "coinbase"
RESNAP_MIN_INTERVAL_S = 0.5
INFLIGHT_BATCHES = 8


class _Health:
    __slots__ = ("state", "reason", "synced", "last_msg", "book_pub_event", "book_pub_wall")

    def __init__(self):
        self.state = DISCONNECTED
        self.reason = "starting"
        self.synced = False
        self.last_msg = 0.0            # monotonic time of the last message for the product
        self.book_pub_event = 0        # ts_event of the last published Book
        self.book_pub_wall = 0.0


class MarketDataNode(Node):
    """Market data: the Coinbase feed (or synthetic / replayed data) -> md.* events."""

    name = "marketdata"
    subscriptions = ()

    def __init__(self, mesh, conf=None, *, context=None, secrets=None, instance=None):
        super().__init__(mesh, conf if conf is not None else MarketDataConfig(), context=context,
                         secrets=secrets, instance=instance)
        c = self.conf
        self.products = tuple(mesh.products)
        self._known = frozenset(self.products)
        self.books = {p: L2Book(p) for p in self.products}
        self.health = {p: _Health() for p in self.products}
        self.source = None
        self.conn = ""
        self.connected = False
        self.require_snapshot = True
        self.msgs: dict = {}
        self.fc = {"feed_gaps": 0, "feed_reconnects": 0, "feed_connections": 0, "feed_parse_errors": 0,
                   "feed_error_frames": 0, "feed_stale": 0, "feed_crossed": 0, "feed_out_of_order": 0,
                   "feed_unknown_channels": 0, "feed_other_products": 0, "feed_resnapshots": 0,
                   "l2_unsynced_dropped": 0, "ticks_without_bbo": 0, "ticks": 0, "trades": 0,
                   "books": 0, "status_published": 0, "raw_frames": 0, "replay_done": 0}
        self.replay: dict = {}
        # per product, in the heartbeat: the metrics node exports these instead of counting every
        # tick and trade on the bus itself
        self.per_product = {f"{k}.{p}": 0 for p in self.products for k in ("ticks", "trades")}
        # per product: its md.tick/md.trade/md.book topics and its two per_product keys
        self._topics = {p: (topics.MD_TICK + p, topics.MD_TRADE + p, topics.MD_BOOK + p, f"ticks.{p}",
                            f"trades.{p}") for p in self.products}
        self.last_error_frame = ""
        self._book_period = 1.0 / c.book_publish_hz if c.book_publish_hz > 0 else 0.0
        self._book_period_ns = int(self._book_period * 1e9)
        self._resnap_pending: set = set()
        self._resnap_last = 0.0
        self._resnap_timer = False
        self._closing = threading.Event()
        self._inflight = threading.BoundedSemaphore(INFLIGHT_BATCHES)
        self.driven_source = False      # the offline engine pulls the source (``batches()``) itself
        self._ev = {Frame: self._on_frame, TickEv: self._on_tick, TradeEv: self._on_trade, L2Ev: self._on_l2,
                    Gap: self._on_gap, HeartbeatEv: _ignore, Ack: self._on_ack, ErrorFrame: self._on_error_frame,
                    ParseError: self._on_parse_error, OutOfOrder: self._on_out_of_order,
                    Connected: self._on_connected, Disconnected: self._on_disconnected, Stale: self._on_stale,
                    RawEv: self._on_raw, ReplayDone: self._on_replay_done}
        self.every(c.status_interval_s, self._status_all)
        if self._book_period > 0:
            self.every(self._book_period, self._flush_books)
        self.queries["feed"] = self._q_feed
        self.queries["replay"] = self._q_replay

    # --- lifecycle ---------------------------------------------------------------------------------
    def setup(self):
        if self.source is None:             # the offline engine makes it first, to pull from it
            self.source = self._make_source()
        for p in self.products:
            self._publish_status(p)
        self.log.info("source %s for %s", self.source.kind, ", ".join(self.products))
        if not self.driven_source:
            self.source.start()

    def teardown(self):
        self._closing.set()
        if self.source is not None:
            t0 = time.monotonic()
            self.source.stop(0.8)
            self.log.info("%s source stopped in %.3f s", self.source.kind, time.monotonic() - t0)

    def _make_source(self):
        c = self.conf
        store_raw = c.store_raw
        if c.source == "synthetic":
            from .synthetic import SyntheticSource
            return SyntheticSource(c, self.products, self._emit, self.log, specs=self.mesh.product_specs,
                                   raw=store_raw)
        if c.source == "replay":
            from .replay import ReplaySource
            return ReplaySource(c, self.products, self._emit, self.log, self._replay_paths())
        if c.use_official_sdk:
            from .sdk_client import SdkFeed
            return SdkFeed(c, self.products, self._emit, self.log, secrets=self.secrets, raw=store_raw)
        from .raw_client import RawFeed
        return RawFeed(c, self.products, self._emit, self.log, secrets=self.secrets, raw=store_raw)

    def _replay_paths(self) -> list:
        """The files ``replay_file`` names: a file, a store directory, a glob or a comma-separated
        list (relative: the current directory, then mesh.state_dir)."""
        from .replay import resolve
        try:
            return resolve(self.conf.replay_file, bases=[Path.cwd(), self.mesh.state_path()])
        except ConfigError as e:
            raise ConfigError(f"marketdata.replay_file: {e}") from None

    # --- the sink: any thread -> loop thread --------------------------------------------------------------
    def _emit(self, batch, wait: bool = False) -> bool:
        """Hand a list of events to the loop thread. ``wait``: block (with a bounded number of
        batches in flight) so a replay or max-speed synthetic source cannot outrun the node.
        Returns False once the node is stopping."""
        if self._closing.is_set():
            return False
        if wait:
            while not self._inflight.acquire(timeout=0.1):
                if self._closing.is_set() or self._stopping:
                    return False
            self.call_soon(self._on_batch, batch, True)
        else:
            self.call_soon(self._on_batch, batch, False)
        return True

    def _on_batch(self, batch, release: bool):
        try:
            ev_handlers = self._ev
            for ev in batch:
                try:
                    ev_handlers[type(ev)](ev)
                except Exception:  # noqa: BLE001 - one bad event never stops the others
                    self.counters["handler_errors"] += 1
                    n = self.counters["handler_errors"]
                    if n <= 20 or n % 1000 == 0:
                        self.log.exception("market-data event %s failed (%d so far)", type(ev).__name__, n)
        finally:
            if release:
                self._inflight.release()

    # --- events ------------------------------------------------------------------------------------------------
    def _on_frame(self, ev):
        ch = ev.channel if ev.channel in KNOWN_CHANNELS else "other"
        self.msgs[ch] = self.msgs.get(ch, 0) + 1
        if ch == "other":
            self.fc["feed_unknown_channels"] += 1
            if self.fc["feed_unknown_channels"] <= 5:
                self.log.info("ignoring unknown channel %r on %s", ev.channel[:40], ev.conn)

    def _arrived(self, p) -> bool:
        """A message for product ``p``: False (counted) if not one of ours, else its health is
        touched (the time of its last message; synced once no snapshot is required)."""
        h = self.health.get(p)
        if h is None:
            self.fc["feed_other_products"] += 1
            return False
        h.last_msg = self.clock()
        if not h.synced and not self.require_snapshot and self.connected:
            self._synced(p)
        return True

    def _on_tick(self, ev):
        p = ev.product
        if not self._arrived(p):
            return
        bid, bid_size, ask, ask_size = ev.bid, ev.bid_size, ev.ask, ev.ask_size
        if bid is None:
            b = self.books[p]
            bb, ba = (b.best_bid(), b.best_ask()) if b.valid else (None, None)
            if bb is None or ba is None:
                self.fc["ticks_without_bbo"] += 1
                return
            (bid, bid_size), (ask, ask_size) = bb, ba
        t = self._topics[p]
        self.publish(t[0], Tick(p, ev.price, bid, bid_size, ask, ask_size, ev.volume_24h), ev.ts_event, ev.ts_recv)
        self.fc["ticks"] += 1
        self.per_product[t[3]] += 1

    def _on_trade(self, ev):
        p = ev.product
        if not self._arrived(p):
            return
        t = self._topics[p]
        self.publish(t[1], Trade(p, ev.trade_id, ev.price, ev.size, ev.side), ev.ts_event, ev.ts_recv)
        self.fc["trades"] += 1
        self.per_product[t[4]] += 1

    def _on_l2(self, ev):
        p = ev.product
        if not self._arrived(p):
            return
        book = self.books[p]
        if ev.snapshot:
            book.snapshot(ev.bids, ev.asks, ev.ts_event, ev.ts_recv)
        elif not book.update(ev.bids, ev.asks, ev.ts_event, ev.ts_recv):
            self.fc["l2_unsynced_dropped"] += 1
            return
        if book.crossed():
            self.fc["feed_crossed"] += 1
            bb, ba = book.best_bid(), book.best_ask()
            reason = f"crossed book: bid {bb[0]} >= ask {ba[0]}; resnapshot requested"
            if self.fc["feed_crossed"] <= 20:
                self.log.warning("%s %s", p, reason)
            book.invalidate()
            self.health[p].synced = False
            self._set(p, CROSSED, reason)
            self._resnapshot([p], "crossed book")
            return
        if ev.snapshot:
            self._synced(p)
        h = self.health[p]
        since = book.ts_event - h.book_pub_event       # exchange time: replays keep the recorded cadence
        if self._book_period_ns == 0 or since >= self._book_period_ns or since < 0:
            self._publish_book(p)

    def _synced(self, p):
        h = self.health[p]
        h.synced = True
        if self.connected:
            self._set(p, OK, "")

    def _on_gap(self, ev):
        self.fc["feed_gaps"] += 1
        n = self.fc["feed_gaps"]
        if n <= 20 or n % 100 == 0:
            self.log.warning("sequence gap on %s: expected %d, got %d (%d missing); resnapshot",
                             ev.conn, ev.expected, ev.got, ev.got - ev.expected)
        self.publish(topics.MD_GAP, FeedGap(ev.conn, ev.expected, ev.got, list(self.products)))
        reason = f"sequence gap on {ev.conn}: expected {ev.expected}, got {ev.got}; resnapshot requested"
        for p in self.products:
            self._invalidate(p, GAP, reason)
        self._resnapshot(self.products, "sequence gap")

    def _invalidate(self, p, state, reason):
        self.books[p].invalidate()
        h = self.health[p]
        h.synced = False
        if h.state in (OK, GAP, CROSSED) or state == STALE:
            self._set(p, state, reason)

    def _on_out_of_order(self, ev):
        self.fc["feed_out_of_order"] += 1
        if self.fc["feed_out_of_order"] <= 20:
            self.log.warning("out-of-order frame on %s: seq %d after %d (dropped)", ev.conn, ev.got, ev.last)

    def _on_ack(self, ev):
        self.log.debug("subscriptions on %s: %s", ev.conn, ev.subscriptions)

    def _on_error_frame(self, ev):
        self.fc["feed_error_frames"] += 1
        self.last_error_frame = ev.message
        if self.fc["feed_error_frames"] <= 20:
            self.log.warning("error frame on %s: %s", ev.conn, ev.message)

    def _on_parse_error(self, ev):
        self.fc["feed_parse_errors"] += 1
        n = self.fc["feed_parse_errors"]
        if n <= 20 or n % 1000 == 0:
            self.log.warning("dropped malformed frame on %s (%d so far): %s", ev.conn, n, ev.reason)
        if ev.product in self._known:
            # a level2 event we could not read: the book may be wrong from here on
            self._invalidate(ev.product, GAP, f"unreadable level2 event on {ev.conn}; resnapshot requested")
            self._resnapshot([ev.product], "unreadable level2 event")

    def _on_connected(self, ev):
        self.fc["feed_connections"] += 1
        if self.fc["feed_connections"] > 1:
            self.fc["feed_reconnects"] += 1
        self.conn = ev.conn
        self.connected = True
        self.require_snapshot = ev.require_snapshot
        self._resnap_pending.clear()        # the new connection sends fresh snapshots anyway
        for p in self.products:
            self.books[p].invalidate()
            h = self.health[p]
            h.synced = False
            state = h.state if h.state in (STALE, DISCONNECTED) else DISCONNECTED
            self._set(p, state, f"connected ({ev.conn}), waiting for data")

    def _on_disconnected(self, ev):
        self.connected = False
        for p in self.products:
            self.books[p].invalidate()
            h = self.health[p]
            h.synced = False
            if h.state == STALE:
                self._set(p, STALE, f"{h.reason.split(';')[0]}; {ev.reason}")
            else:
                self._set(p, DISCONNECTED, ev.reason)

    def _on_stale(self, ev):
        self.fc["feed_stale"] += 1
        self.log.warning("%s silent for %.1f s: stale, reconnecting", ev.conn, ev.silent_s)
        self.publish(topics.MD_STALE, FeedStale(ev.conn, float(ev.silent_s), list(self.products)))
        for p in self.products:
            self._invalidate(p, STALE, f"no frame for {ev.silent_s:g} s on {ev.conn}")

    def _on_raw(self, ev):
        self.publish(RAW_TOPIC, RawFrame(ev.conn, ev.data))
        self.fc["raw_frames"] += 1

    def _on_replay_done(self, ev):
        self._flush_books(force=True)
        self.fc["replay_done"] = 1
        self.replay = {"records": ev.records, "used": ev.used, "skipped": ev.skipped, "error": ev.error}
        self.log.info("replay finished: %d records, %d replayed, %d skipped%s", ev.records, ev.used, ev.skipped,
                      f", error: {ev.error}" if ev.error else "")
        self.connected = False
        reason = "replay finished" + (f" ({ev.error})" if ev.error else "")
        for p in self.products:
            self.books[p].invalidate()
            h = self.health[p]
            h.synced = False
            h.state, h.reason = DISCONNECTED, reason
            self._publish_status(p)         # the final word, after replay_done is set

    # --- resnapshots (rate-limited) ------------------------------------------------------------------------------
    def _resnapshot(self, products, reason):
        self._resnap_pending.update(products)
        if self._resnap_timer:
            return
        wait = self._resnap_last + RESNAP_MIN_INTERVAL_S - self.clock()
        if wait <= 0:
            self._send_resnapshot(reason)
        else:
            self._resnap_timer = True
            self.after(wait, lambda: self._send_resnapshot(reason))

    def _send_resnapshot(self, reason):
        self._resnap_timer = False
        ps = [p for p in self.products if p in self._resnap_pending and not self.health[p].synced]
        self._resnap_pending.clear()
        if not ps or self.source is None:
            return
        self._resnap_last = self.clock()
        self.fc["feed_resnapshots"] += 1
        self.source.resnapshot(ps, reason)

    # --- publishing ---------------------------------------------------------------------------------------------------
    def _set(self, p, state, reason):
        h = self.health[p]
        if h.state != state or h.reason != reason:
            if (h.state == OK) != (state == OK):
                self.log.info("%s feed %s -> %s %s", p, h.state, state, reason)
            h.state, h.reason = state, reason
            self._publish_status(p)

    def _publish_status(self, p):
        h = self.health[p]
        age = self.clock() - h.last_msg if h.last_msg else -1.0
        self.publish(topics.MD_STATUS + p, FeedStatus(p, h.state == OK, h.state, h.reason, round(age, 6)))
        self.fc["status_published"] += 1

    def _status_all(self):
        for p in self.products:
            self._publish_status(p)

    def _publish_book(self, p):
        book = self.books[p]
        bids, asks = book.top(self.conf.book_depth)
        self.publish(self._topics[p][2], Book(p, bids, asks), book.ts_event, book.ts_recv)
        book.dirty = False
        h = self.health[p]
        h.book_pub_event = book.ts_event
        h.book_pub_wall = self.clock()
        self.fc["books"] += 1

    def _flush_books(self, force: bool = False):
        now = self.clock()
        for p, book in self.books.items():
            if book.dirty and book.valid and (force or now - self.health[p].book_pub_wall >= self._book_period):
                self._publish_book(p)

    # --- counters and queries ------------------------------------------------------------------------------------
    def extra_counters(self) -> dict:
        out = dict(self.fc)
        out.update(self.per_product)
        for ch, n in dict(self.msgs).items():
            out["msgs." + ch] = n
        now = self.clock()
        for p, h in self.health.items():
            out["age_ms." + p] = int((now - h.last_msg) * 1000) if h.last_msg else -1
            out["healthy." + p] = 1 if h.state == OK else 0
        return out

    def _q_feed(self, arg):
        now = self.clock()
        prods = {}
        for p in self.products:
            h, b = self.health[p], self.books[p]
            bb, ba = b.best_bid(), b.best_ask()
            prods[p] = {"state": h.state, "healthy": h.state == OK, "reason": h.reason,
                        "age_s": round(now - h.last_msg, 3) if h.last_msg else None,
                        "book_levels": list(b.depth()), "best_bid": bb[0] if bb else None,
                        "best_ask": ba[0] if ba else None}
        return {"source": self.source.info() if self.source else {"source": self.conf.source},
                "conn": self.conn, "connected": self.connected, "products": prods,
                "msgs": dict(self.msgs), "counters": dict(self.fc), "last_error_frame": self.last_error_frame}

    def _q_replay(self, arg):
        src = self.source
        if self.conf.source != "replay" or src is None:
            return {"replaying": False, "source": self.conf.source, "done": False}
        d = src.info()
        d.update(replaying=True, done=bool(self.fc["replay_done"]), **self.replay)
        return d


def _ignore(ev):
    pass
