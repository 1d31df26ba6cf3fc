"""Offline mode, the backtest engine: every node driven by one thread on the market clock.

Every node of the mesh runs in one process over ZeroMQ ``inproc``, driven by one thread on the
market clock (``nodes.engine``).

    python -m nodes.offline [--source synthetic|replay:PATH] [--market-hours H | --start T --end T]
                            [--seed N] [--speed max|1|N] [--duration S] [--summary-json PATH]
                            [--state-dir DIR] [--bridge tcp://127.0.0.1:PORT] [--cpus all|N[,N...]]

No network: market data comes from the seeded synthetic market (24 market hours of BTC-USD and
ETH-USD by default, a tick, trades and a level2 book every market second per product, regimes and a
flash crash) or from store files replayed through the market-data node's normal path. It runs as
fast as the mesh goes (``--speed 1``: real time); ``--duration`` caps the wall time. The same seed
and source give the same orders, fills, positions, PnL and store contents. A summary node (the
``offline`` slot) counts what crosses the bus; progress lines show market time and percent done;
the run ends with a summary and the run report (``tools.report``) in the state directory.
``--bridge`` re-publishes every inproc event on a tcp PUB socket for ``tickmesh tap --endpoint``.
"""
import argparse
import datetime as _dt
import json
import os
import signal
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import zmq

from proto import topics

from . import config as _config
from . import log as _log
from . import registry
from .engine import Engine, EngineError, MarketClock
from .runtime import Node, NodeStartError

HOUR_NS = 3600 * 1_000_000_000
STEP_NS = 1_000_000_000                      # one synthetic market step a second
SYNTHETIC_START = "2026-01-05T00:00:00Z"     # a synthetic run's default market start (a Monday)


def available_nodes():
    """(name, class) of every node offline mode runs, in the order it drives them."""
    return [(name, registry.load_class(name)) for name in registry.OFFLINE_ORDER]


class Summary(Node):
    """Counts the mesh's events for the offline summary (and optionally bridges them to tcp)."""

    name = "offline"
    # what the summary counts; market data is counted by the market-data node (its counters are
    # read at the end), so the summary does not decode every tick. A bridge takes everything.
    subscriptions = (topics.ORDER, topics.FILL, topics.POSITION, topics.PNL, topics.RISK_KILLSWITCH,
                     topics.RISK_STATE, topics.NODE_HEARTBEAT)
    bind_rep = False

    def __init__(self, *a, bridge: str = None, bridge_ctx=None, **kw):
        super().__init__(*a, **kw)
        if bridge:
            self.subscriptions = ("",)
        self.bridge_endpoint = bridge
        self._bridge_ctx = bridge_ctx
        self.bridge = None
        self.n = {"ticks": 0, "trades": 0, "books": 0, "orders": 0, "fills": 0, "rejects": 0,
                  "cancels": 0, "events": 0}
        self.reject_codes = {}
        self.killswitch_engaged = False
        self.killswitch_reason = ""
        self.pnl = None
        self.positions = {}
        self.heartbeats = {}
        self.trading_state = "ACTIVE"
        self.on_any(self._event)

    def setup(self):
        if self.bridge_endpoint:
            self.bridge = self._bridge_ctx.socket(zmq.PUB)
            self.bridge.setsockopt(zmq.LINGER, 200)
            self.bridge.setsockopt(zmq.SNDHWM, self.mesh.hwm)
            self.bridge.bind(self.bridge_endpoint)
            self.log.info("bridging the inproc bus to %s (tickmesh tap --endpoint %s)",
                          self.bridge_endpoint, self.bridge_endpoint)

    def teardown(self):
        if self.bridge is not None:
            self.bridge.close()

    def _event(self, env):
        n = self.n
        n["events"] += 1
        if self.bridge is not None:
            # re-encode keeps source, seq and times: the tap sees the original envelope
            self.bridge.send(_reencode(env), zmq.NOBLOCK)
        t = env.msg.TAG
        if t == "Tick":
            n["ticks"] += 1
        elif t == "Trade":
            n["trades"] += 1
        elif t == "Book":
            n["books"] += 1
        elif t == "Order":
            st = env.msg.status
            if st == "NEW":
                n["orders"] += 1
            elif st == "REJECTED":
                n["rejects"] += 1
                self.reject_codes[env.msg.code] = self.reject_codes.get(env.msg.code, 0) + 1
            elif st == "CANCELLED":
                n["cancels"] += 1
        elif t == "Fill":
            n["fills"] += 1
        elif t == "KillSwitch":
            self.killswitch_engaged = env.msg.engaged
            self.killswitch_reason = env.msg.reason
        elif t == "PnL":
            self.pnl = env.msg
        elif t == "Position":
            self.positions[env.msg.product] = env.msg
        elif t == "RiskState":
            self.trading_state = env.msg.state
        elif t == "Heartbeat":
            self.heartbeats[env.msg.node] = env.msg

    def counter(self, node: str, key: str, default=0):
        hb = self.heartbeats.get(node)
        return hb.counters.get(key, default) if hb else default


def _reencode(env) -> bytes:
    import msgpack
    from proto.codec import MAJOR, MINOR
    return env.topic.encode("ascii") + topics.SEP + msgpack.packb(
        [MAJOR, MINOR, env.msg.TAG, env.msg_id, env.source, env.seq, env.ts_event, env.ts_recv,
         type(env.msg)._encode(env.msg)], use_bin_type=True)


def summarize(s: Summary, nodes: dict, elapsed: float, stored: int, span=None) -> dict:
    pnl = s.pnl
    out = {
        "market_start": _iso(span[0]) if span else None,
        "market_end": _iso(span[1]) if span else None,
        "market_hours": round((span[1] - span[0]) / HOUR_NS, 3) if span else None,
        "wall_s": round(elapsed, 3),
        "duration_s": round(elapsed, 3),
        "nodes": sorted(nodes),
        "ticks": _md_count(s, nodes, "ticks"), "trades": _md_count(s, nodes, "trades"),
        "books": _md_count(s, nodes, "books"),
        "orders": s.n["orders"], "fills": s.n["fills"], "rejects": s.n["rejects"],
        "cancels": s.n["cancels"], "reject_codes": dict(sorted(s.reject_codes.items())),
        "killswitch_engaged": s.killswitch_engaged, "killswitch_reason": s.killswitch_reason,
        "trading_state": s.trading_state,
        "realized_pnl": str(pnl.realized) if pnl else "0",
        "unrealized_pnl": str(pnl.unrealized) if pnl else "0",
        "fees": str(pnl.fees) if pnl else "0",
        "equity": str(pnl.equity) if pnl else None,
        "positions": {p: str(v.qty) for p, v in sorted(s.positions.items())},
        "events_stored": stored,
        "bus_events": s.n["events"],
        "bus_gaps": s.counters["gaps"],
        "malformed": s.counters["malformed"],
    }
    return out


def _md_count(s: Summary, nodes: dict, key: str) -> int:
    """Market events published: the market-data node's own count (the summary does not subscribe
    to market data unless it bridges, then it counts them itself)."""
    md = nodes.get("marketdata")
    return int(md.fc[key]) if md is not None and hasattr(md, "fc") else s.n[key]


def _iso(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, opt: str) -> int:
    """``2026-11-01``, ``2026-11-01T06:00``, ``...Z`` or ``+00:00`` -> ns since the epoch (UTC)."""
    t = text.strip()
    try:
        d = _dt.datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith("Z") else t)
    except ValueError:
        raise _config.ConfigError(f"{opt}: expected a UTC date or time such as 2026-11-01 or "
                                  f"2026-11-01T06:00Z, got {text!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return int(d.timestamp()) * 1_000_000_000 + d.microsecond * 1000


# The housekeeping cadence of a market-time run: heartbeats, feed statuses, risk snapshots and
# periodic positions/PnL are timed by the market clock, so at real-time cadence a 24-hour backtest
# would spend most of its work on them. Trading decisions do not depend on these intervals; the
# books' cadence does (a paper market order walks the last published book), so a ``--conf`` file
# that sets one of OWN_BOOK_CADENCE keeps its value (the other keys go together: risk's state
# interval and its maximum age, say, and stay as here).
OFFLINE_CADENCE = {
    "mesh": {"heartbeat_s": 30.0},
    "marketdata": {"status_interval_s": 10.0, "book_publish_hz": 1.0, "book_depth": 5},
    "risk": {"publish_interval_s": 10.0, "state_max_age_ms": 40_000, "feed_status_timeout_s": 30.0,
             "band_publish_min_interval_s": 10.0, "execution_heartbeat_timeout_s": 90.0},
    "execution": {"pnl_interval_s": 10.0, "journal_fsync": False},    # a backtest needs no power-loss safety
    "alerts": {"node_timeout_s": 95.0},
    "metrics": {"node_timeout_s": 95.0},
}
OWN_BOOK_CADENCE = ("book_publish_hz", "book_depth")


def offline_cadence(conf_path) -> dict:
    """``OFFLINE_CADENCE`` without the book keys (``OWN_BOOK_CADENCE``) that the file named by
    ``--conf`` sets in ``[marketdata]``: a replay of a 10 Hz recording with ``book_publish_hz = 10``
    publishes every recorded book. The default file holds the live cadence, so without ``--conf``
    every key applies."""
    if not conf_path:
        return OFFLINE_CADENCE
    import tomllib
    try:
        md = tomllib.loads(Path(conf_path).read_text()).get("marketdata")
    except (OSError, tomllib.TOMLDecodeError):
        return OFFLINE_CADENCE              # _config.load has reported it already
    own = [k for k in OWN_BOOK_CADENCE if isinstance(md, dict) and k in md]
    out = dict(OFFLINE_CADENCE)
    out["marketdata"] = {k: v for k, v in OFFLINE_CADENCE["marketdata"].items() if k not in own}
    return out


def build_config(args):
    cfg = _config.load(args.conf)
    state_dir = args.state_dir or str(_config.ROOT / "var" / "offline" / time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime()))
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace("mesh", transport="inproc", state_dir=state_dir)
    for section, keys in offline_cadence(args.conf).items():
        cfg = cfg.replace(section, **keys)
    src = args.source
    md = {"seed": args.seed}
    if src == "synthetic":
        md.update(source="synthetic", synthetic_trade_scale=args.trade_scale, synthetic_depth=10,
                  synthetic_crash_at_h=args.crash_at_h)
    elif src.startswith("replay:"):
        from .marketdata import replay
        paths = replay.resolve(src[len("replay:"):])
        md.update(source="replay", replay_file=",".join(str(p.resolve()) for p in paths), replay_speed="max")
        # trade what the files hold: a configured product with no data would stay unhealthy
        products = replay.replay_products(paths)
        if products:
            cfg = cfg.replace("mesh", products=products)
    else:
        raise _config.ConfigError(f"--source: expected synthetic or replay:PATH, got {src!r}")
    cfg = cfg.replace("marketdata", **md)
    cfg = cfg.replace("strategy", seed=args.seed)
    cfg = cfg.replace("execution", venue="paper", live_trading=False)
    cfg = cfg.replace("metrics", port=0)
    return cfg


def default_cpus() -> set:
    """One cpu (the highest this process may use): the engine is one thread (and the store's
    writer); keeping them on one cpu avoids cross-cpu wake-ups."""
    return {max(os.sched_getaffinity(0))}


def offline_cpus(cfg, arg: str = None):
    """(cpus, why): where the offline process runs; cpus None = wherever the kernel likes.
    ``--cpus`` (``all``, or numbers like ``1`` or ``0,1``) beats ``mesh.cpu_affinity.offline``,
    which beats the default of one cpu."""
    if arg is not None:
        if arg.strip() == "all":
            return None, "--cpus all"
        try:
            cpus = {int(x) for x in arg.split(",") if x.strip()}
        except ValueError:
            cpus = set()
        if not cpus or min(cpus) < 0:
            raise _config.ConfigError(f"--cpus: expected all or cpu numbers such as 1 or 0,1, got {arg!r}")
        return cpus, "--cpus"
    conf = cfg.mesh.cpu_affinity.get("offline")
    if conf:
        return set(conf), "mesh.cpu_affinity.offline"
    return default_cpus(), "default: one cpu, --cpus all to lift"


def parse_speed(text: str) -> float:
    if text == "max":
        return 0.0
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise _config.ConfigError(f"--speed: expected max or a positive number, got {text!r}")
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodes.offline", description=__doc__.splitlines()[0])
    p.add_argument("--source", default="synthetic",
                   help="synthetic, or replay:PATH (a store file, a store directory, a glob or a comma list)")
    p.add_argument("--market-hours", type=float, default=None,
                   help="how much market to cover (synthetic default 24; a replay: from its start)")
    p.add_argument("--start", help="market start, UTC (replay: skip what is before; synthetic: its clock)")
    p.add_argument("--end", help="market end, UTC (replay: stop there)")
    p.add_argument("--seed", type=int, default=7,
                   help="the synthetic market's, the strategies' and the paper venue's seed (default 7)")
    p.add_argument("--speed", default="max", help="max (as fast as the mesh goes, default), 1 (real time), or N")
    p.add_argument("--duration", type=float, default=None, help="wall-clock cap in seconds (default: none)")
    p.add_argument("--trade-scale", type=float, default=0.1,
                   help="synthetic: the model's trade rates times this (default 0.1: about a trade a second "
                        "per product, more in turbulent regimes)")
    p.add_argument("--crash-at-h", type=float, default=16.0,
                   help="synthetic: a flash crash this many market hours in (default 16; < 0: none)")
    p.add_argument("--summary-json", metavar="PATH")
    p.add_argument("--state-dir", help="journals, kill switch and store files (default var/offline/run-<time>)")
    p.add_argument("--conf")
    p.add_argument("--bridge", metavar="ENDPOINT", help="also publish every event on this tcp endpoint")
    p.add_argument("--cpus", metavar="all|N[,N...]",
                   help="cpus of the offline process (default: mesh.cpu_affinity.offline, else one cpu)")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    p.add_argument("--no-report", action="store_true", help="do not write the run report")
    p.add_argument("--log-level", default=None)
    p.add_argument("--alerts", choices=("log", "local", "live"), default="log",
                   help="alerts.mode of this run: log (default) keeps alerts in the log, live pages the "
                        "Slack/Teams channels of the secrets, local only channels on this machine")
    args = p.parse_args(argv)
    try:
        args.speed_x = parse_speed(args.speed)
        if args.duration is not None and not args.duration > 0:
            raise _config.ConfigError(f"--duration: must be > 0 seconds, got {args.duration:g}")
        if args.market_hours is not None and not args.market_hours > 0:
            raise _config.ConfigError(f"--market-hours: must be > 0, got {args.market_hours:g}")
        if not args.trade_scale > 0:
            raise _config.ConfigError(f"--trade-scale: must be > 0, got {args.trade_scale:g}")
        args.start_ns = parse_time(args.start, "--start") if args.start else None
        args.end_ns = parse_time(args.end, "--end") if args.end else None
        if args.end_ns is not None and args.market_hours is not None:
            raise _config.ConfigError("--end and --market-hours: give one of them")
        if args.start_ns is not None and args.end_ns is not None and args.end_ns <= args.start_ns:
            raise _config.ConfigError(f"--end: {args.end} is not after --start {args.start}")
        cfg = build_config(args)
        cfg = cfg.replace("alerts", mode=args.alerts)   # a replay must not page production channels
        _config.check(cfg)      # every node's own checks, before anything starts: one line, exit 2
        cpus, why = offline_cpus(cfg, args.cpus)
        old_cpus = _config.pin_cpus(cpus, "--cpus" if args.cpus else "mesh.cpu_affinity.offline") if cpus else None
    except _config.ConfigError as e:
        print(f"offline: config error: {e}", file=sys.stderr)
        return 2
    print(f"offline: alerts.mode = {args.alerts}: " + ("paging the configured Slack/Teams channels" if args.alerts ==
          "live" else "alerts go to the log, no channel is paged (--alerts live to page)"), flush=True)
    try:
        return _run(args, cfg, cpus, why)
    finally:
        if old_cpus is not None:
            os.sched_setaffinity(0, old_cpus)


def _synthetic_window(args):
    start = args.start_ns if args.start_ns is not None else parse_time(SYNTHETIC_START, "start")
    if args.end_ns is not None:
        return start, args.end_ns
    return start, start + int((args.market_hours if args.market_hours is not None else 24.0) * HOUR_NS)


def _window(args, cfg, md, prefetch=None):
    """(start_ns, end_ns or None, the source's batches)."""
    if cfg.section("marketdata").source == "synthetic":
        start, end = _synthetic_window(args)
        return start, end, md.source.batches(start, STEP_NS, 1.0, frames=prefetch)
    first = _first_ts(md.source)
    start = args.start_ns if args.start_ns is not None else first
    end = args.end_ns
    if end is None and args.market_hours is not None:
        end = start + int(args.market_hours * HOUR_NS)
    gen = md.source.batches(stamp=lambda ts: ts, prefetch=prefetch)
    if args.start_ns is not None:
        gen = ((ts, b) for ts, b in gen if ts == 0 or ts >= start or type(b[-1]).__name__ == "ReplayDone")
    return start, end, gen


def _first_ts(source) -> int:
    from .marketdata.replay import read_events
    for env in read_events(source.paths):
        if env.ts_event:
            return env.ts_event
    return 0


def _run(args, cfg, cpus, why) -> int:
    _log.setup(args.log_level or "WARNING")   # progress lines say what it does; --log-level INFO for more
    log = _log.get("offline")
    prefetch = src = None
    mdc = cfg.section("marketdata")
    if mdc.source == "synthetic":
        # the market is simulated by a helper process on the other cpu, a chunk ahead (it forks:
        # before any thread or socket of this process exists)
        from .marketdata.synthetic import Prefetch, SyntheticSource
        src = SyntheticSource(mdc, cfg.mesh.products, None, _log.get("marketdata"),
                              specs=cfg.mesh.product_specs, raw=mdc.store_raw)
        prefetch = Prefetch(src, _synthetic_window(args)[0], STEP_NS, 1.0)
    elif mdc.source == "replay":
        # the recording is read and parsed by a helper process on the other cpu, a chunk ahead
        from .marketdata import replay
        src = replay.ReplaySource(mdc, cfg.mesh.products, None, _log.get("marketdata"),
                                  replay.resolve(mdc.replay_file))
        prefetch = replay.Prefetch(src)
    ctx = zmq.Context()
    stop_ev = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_ev.set())
    nodes = {}
    for name, cls in available_nodes():
        nodes[name] = cls.from_config(cfg, context=ctx)
    md = nodes["marketdata"]
    md.driven_source = True
    summary = Summary(cfg.mesh, context=ctx, bridge=args.bridge, bridge_ctx=ctx)
    clock = MarketClock(0)
    engine = Engine(list(nodes.values()) + [summary], clock, speed=args.speed_x)
    t0 = time.monotonic()
    rc = 0
    span = None
    reason = "not started"
    try:
        md.source = src or md._make_source()    # the source, pulled by the engine (no thread)
        start, end, batches = _window(args, cfg, md, prefetch)
        clock.ns = start
        engine.start()
        span = [start, start]
        total = (end - start) if end else None
        print(f"offline: {', '.join(nodes)} driven by one thread over inproc, source {args.source}, seed {args.seed}, "
              f"market {_iso(start)} -> {_iso(end) if end else 'end of the recording'}, speed {args.speed}, "
              f"state in {cfg.mesh.state_dir}, cpus {'any' if cpus is None else ','.join(map(str, sorted(cpus)))} "
              f"({why})", flush=True)

        def progress():
            if args.quiet:
                return
            s = summary.n
            pnl = summary.pnl.realized if summary.pnl else Decimal(0)
            done = f" {100.0 * (clock.ns - start) / total:5.1f}%" if total else ""
            print(f"  market {_iso(clock.ns)}{done} wall {time.monotonic() - t0:5.1f}s ticks={md.fc['ticks']} "
                  f"orders={s['orders']} fills={s['fills']} rejects={s['rejects']} realized_pnl={pnl} "
                  f"killswitch={'ON' if summary.killswitch_engaged else 'off'}", flush=True)
        deadline = t0 + args.duration if args.duration else None
        reason = engine.run(md, batches, end_ns=end, stop=lambda t: stop_ev.wait(t) if t else stop_ev.is_set(),
                            wall_deadline=deadline, on_wall_second=progress)
        span[1] = clock.ns
        log.info("engine stopped: %s", reason)
    except NodeStartError as e:
        print(f"offline: {e}", file=sys.stderr)
        rc = 1
    except EngineError as e:
        print(f"offline: {e}", file=sys.stderr)
        rc = 1
    finally:
        engine.stop()
        if prefetch is not None:
            prefetch.close()
        stored = 0
        if "store" in nodes and nodes["store"].writer is not None:
            stored = int(nodes["store"].writer.stored)
        ctx.term()
    elapsed = time.monotonic() - t0
    out = summarize(summary, nodes, elapsed, stored, span)
    out["ended_by"] = reason
    out["engine_unrouted"] = engine.unrouted_running    # frames no hook followed (see nodes/engine.py)
    if span:
        print(f"offline: {out['market_hours']:g} market hours ({out['market_start']} -> {out['market_end']}) "
              f"in {elapsed:.1f} s of wall time ({reason})")
    print("offline summary:")
    for k in ("ticks", "trades", "books", "orders", "fills", "rejects", "cancels", "realized_pnl",
              "unrealized_pnl", "fees", "killswitch_engaged", "trading_state", "events_stored", "bus_gaps",
              "malformed"):
        print(f"  {k:<20} {out[k]}")
    if out["reject_codes"]:
        print(f"  {'reject_codes':<20} {out['reject_codes']}")
    if out["positions"]:
        print(f"  {'positions':<20} {out['positions']}")
    if not args.no_report and rc == 0:
        from tools.report import write_run_report    # the run report: report.html in the state dir + headline figures
        report, headline = write_run_report(cfg.mesh.state_dir)
        out.update({k: v for k, v in headline.items() if k not in out})
        for k, v in headline.items():
            print(f"  {k:<20} {v}")
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(out, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
