"""Execution's memory under a long stream of orders: ``python -m tools.bench memory [--quick]``.

The real ``ExecutionNode`` (paper venue, journal on disk without fsync, the pre-trade checks
in-process against a real ``RiskEngine``'s snapshot) is driven in this process (``start_driven``,
inproc, no loop thread) and fed ``ORDERS`` market orders, alternating buys and sells of 0.001
BTC-USD against a standing book, each through the node's full submit path (idempotency,
journal, checks, venue, fills, events). Every order fills and finishes, so without a bound the
node's memory grows with every order.

Reported: the process's resident memory (RSS, /proc/self/statm) after the first tenth of the
orders (``rss_mb_at_10pct``) and at the end (``rss_mb_end``), ``rss_growth`` = end / tenth - 1
(target < 0.10), the garbage collector's pauses (``gc.callbacks``: every collection timed,
``gc_pause_p99_ms``, target < 5 ms; ``gc_pause_max_ms``), orders per second, and what execution
holds at the end (orders in memory, ids known).
"""
import gc
import os
import time
from decimal import Decimal

from . import common

KEYS = ("orders", "rss_mb_at_10pct", "rss_mb_end", "rss_growth", "gc_pause_p99_ms", "gc_pause_max_ms",
        "orders_per_s")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(quick: bool = False) -> dict:
    import zmq
    from nodes.config import MeshConfig
    from nodes.engine import MarketClock
    from nodes.execution import ExecutionConfig, ExecutionNode
    from nodes.risk.config import RiskConfig
    from nodes.risk.engine import RiskEngine
    from proto import Book, Envelope, FeedStatus, OrderIntent, Tick
    common.quiet_logs()
    n = common.size(quick, 1_000_000, 200_000, 20_000)
    D = Decimal
    tmp = common.tmpdir("tmm-")
    mesh = MeshConfig(transport="inproc", state_dir=str(tmp), products=("BTC-USD",))
    clock = MarketClock(1_767_571_200 * 10**9)
    ctx = zmq.Context()
    node = ExecutionNode(mesh, ExecutionConfig(journal_fsync=False, journal_compact_records=0), context=ctx)
    risk = RiskEngine(RiskConfig(max_orders_per_s=10**9, max_position=D("1000")), mesh,
                      clock=clock.mono, wall_ns=clock.wall)
    pauses, started = [], [0.0]

    def on_gc(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - started[0]) * 1e3)
    try:
        node.start_driven(clock.mono, clock.wall)

        def env(m):
            return Envelope("md", 0, "marketdata", 1, clock.ns, clock.ns, m)
        tick = Tick("BTC-USD", D("65000.00"), D("64999.99"), D("5"), D("65000.01"), D("5"), D(1000))
        book = Book("BTC-USD", [[D("64999.99") - k, D("50")] for k in range(10)],
                    [[D("65000.01") + k, D("50")] for k in range(10)])
        risk.restore()
        for _ in range(60):
            risk.on_tick(env(tick))
        risk.on_status(env(FeedStatus("BTC-USD", True, "OK", "", 0.1)))
        node.dispatch(env(tick))
        node.dispatch(env(book))
        print(f"memory: {n:,} paper market orders through ExecutionNode's submit path, journal in {tmp}",
              flush=True)
        gc.collect()
        gc.freeze()                     # as a node does once started (nodes.runtime.run_main)
        gc.callbacks.append(on_gc)
        rss10 = None
        t0 = time.perf_counter()
        for i in range(n):
            if i % 1000 == 0:
                clock.ns += 10**9                    # a second of market time per 1000 orders
                risk.on_status(env(FeedStatus("BTC-USD", True, "OK", "", 0.1)))
                node.pretrade.view.apply(risk.snapshot(), clock.mono())
                node.dispatch(env(book))
                node.pretrade.approvals.clear()
            r = node._submit(OrderIntent("BTC-USD", "BUY" if i % 2 == 0 else "SELL", "MARKET",
                                         size=D("0.001"), client_order_id=f"mem-{i}"))
            if not r.ok:
                raise RuntimeError(f"memory: order {i} refused: {r.code} {r.reason}")
            if i + 1 == n // 10:
                rss10 = _rss_mb()
        secs = time.perf_counter() - t0
        rss_end = _rss_mb()
        held, known = len(node.orders), len(node.known)
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        node.stop_driven()
        gc.unfreeze()
        ctx.term()
        common.rmtree(tmp)
    pauses.sort()
    p99 = pauses[int(len(pauses) * 0.99)] if pauses else 0.0
    print(f"memory: {n:,} orders in {secs:.1f} s ({n / secs:,.0f}/s); RSS {rss10:.1f} MB after {n // 10:,}, "
          f"{rss_end:.1f} MB after {n:,}; {len(pauses)} gc collections, p99 {p99:.2f} ms, max "
          f"{pauses[-1] if pauses else 0:.2f} ms; execution holds {held:,} orders, knows {known:,} ids", flush=True)
    return {"orders": n, "rss_mb_at_10pct": round(rss10, 1), "rss_mb_end": round(rss_end, 1),
            "rss_growth": round(rss_end / rss10 - 1, 4), "gc_pause_p99_ms": round(p99, 3),
            "gc_pause_max_ms": round(pauses[-1] if pauses else 0.0, 3), "orders_per_s": round(n / secs),
            "orders_in_memory": held, "ids_known": known}


def table(sec: dict) -> str:
    ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
    return (f"{sec['orders']:,} paper orders: RSS {sec['rss_mb_at_10pct']} MB at 10% -> {sec['rss_mb_end']} MB at the end: "
            f"growth {100 * sec['rss_growth']:.1f}% (target < 10%: {ok(sec['rss_growth'] < 0.10)})\n"
            f"gc pauses p99 {sec['gc_pause_p99_ms']} ms, max {sec['gc_pause_max_ms']} ms (target p99 < 5 ms: "
            f"{ok(sec['gc_pause_p99_ms'] < 5)}); {sec['orders_per_s']:,} orders/s; execution holds "
            f"{sec['orders_in_memory']:,} orders and knows {sec['ids_known']:,} ids")
