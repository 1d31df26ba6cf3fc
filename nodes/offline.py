"""Offline mode: every node that exists, as threads of one process over ZeroMQ ``inproc``.

    python -m nodes.offline [--duration S] [--seed N] [--source synthetic|replay:FILE]
                            [--summary-json PATH] [--state-dir DIR] [--bridge tcp://127.0.0.1:PORT]

No network: market data comes from the seeded synthetic generator or a store file replayed through
the market-data node's normal publishing path. A summary node (the ``offline`` slot) counts what
crosses the bus, prints progress every second and a summary at the end. ``--bridge`` re-publishes
every inproc event on a tcp PUB socket so ``tickmesh tap --endpoint`` can watch an offline run.
"""
import argparse
import importlib
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
from .runtime import Node, NodeStartError

# start order: consumers first (inproc connect-before-bind works either way), the source last
NODE_CLASSES = (
    ("store", "nodes.store", "StoreNode"),
    ("risk", "nodes.risk", "RiskNode"),
    ("execution", "nodes.execution", "ExecutionNode"),
    ("strategy", "nodes.strategy", "StrategyNode"),
    ("metrics", "nodes.metrics", "MetricsNode"),
    ("alerts", "nodes.alerts", "AlertsNode"),
    ("marketdata", "nodes.marketdata", "MarketDataNode"),
)


def available_nodes():
    """(name, class) for every node package that is present."""
    out = []
    for name, mod, cls in NODE_CLASSES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and (e.name == mod or mod.startswith(e.name + ".") or e.name.startswith(mod)):
                continue
            raise
        if hasattr(m, cls):
            out.append((name, getattr(m, cls)))
    return out


class Summary(Node):
    """Counts the mesh's events for the offline summary (and optionally bridges them to tcp)."""

    name = "offline"
    subscriptions = ("",)
    bind_rep = False

    def __init__(self, *a, bridge: str = None, bridge_ctx=None, **kw):
        super().__init__(*a, **kw)
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


def summarize(s: Summary, nodes: dict, elapsed: float, stored: int) -> dict:
    pnl = s.pnl
    out = {
        "duration_s": round(elapsed, 3),
        "nodes": sorted(nodes),
        "ticks": s.n["ticks"], "trades": s.n["trades"], "books": s.n["books"],
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


def build_config(args):
    cfg = _config.load(args.conf)
    state_dir = args.state_dir or str(_config.ROOT / "var" / "offline" / time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime()))
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace("mesh", transport="inproc", state_dir=state_dir)
    src = args.source
    md = {"seed": args.seed}
    if src == "synthetic":
        md.update(source="synthetic", synthetic_rate_hz=args.rate)
    elif src.startswith("replay:"):
        path = Path(src[len("replay:"):])
        if not path.exists():
            raise _config.ConfigError(f"--source: replay file not found: {path}")
        md.update(source="replay", replay_file=str(path.resolve()), replay_speed=args.speed)
        # trade what the file holds: a configured product with no data would stay unhealthy and
        # trip risk's stale-feed kill switch after a few seconds of a long replay
        products = replay_products(path)
        if products:
            cfg = cfg.replace("mesh", products=products)
    else:
        raise _config.ConfigError(f"--source: expected synthetic or replay:FILE, got {src!r}")
    try:
        cfg = cfg.replace("marketdata", **md)
    except (TypeError, ImportError, ModuleNotFoundError):
        pass    # no market-data node in this checkout
    try:   # lockstep waits for exactly the nodes this run starts (no probing on a busy machine)
        names = tuple(n for n, _ in available_nodes() if n != "marketdata")
        cfg = cfg.replace("marketdata", lockstep_nodes=names)
        if args.lockstep is not None:
            cfg = cfg.replace("marketdata", lockstep=args.lockstep)
    except (TypeError, ImportError, ModuleNotFoundError):
        pass
    if src.startswith("replay:"):
        try:   # throttle by the recording's clock: the same orders pass at any replay speed
            cfg = cfg.replace("risk", rate_clock="market")
        except (TypeError, ImportError, ModuleNotFoundError):
            pass
    try:
        cfg = cfg.replace("strategy", seed=args.seed)
    except (TypeError, ImportError, ModuleNotFoundError):
        pass
    try:
        cfg = cfg.replace("execution", venue="paper", live_trading=False)
    except (TypeError, ImportError, ModuleNotFoundError):
        pass
    try:
        cfg = cfg.replace("metrics", port=0)
    except (TypeError, ImportError, ModuleNotFoundError):
        pass
    return cfg


def default_cpus() -> set:
    """One cpu (the highest this process may use). Every node of an offline run is a thread of
    one process, so only one of them runs Python at a time (the GIL); handing the GIL between
    threads on different cpus costs a cross-cpu wake-up each time, on one cpu a plain switch.
    Measured on 2 vCPUs (docs/performance.md): a replay through the whole mesh 2.4x faster."""
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
    return default_cpus(), "default: one cpu for one GIL, --cpus all to lift"


def replay_products(path) -> tuple:
    """The products of the market-data events in a store file (one pass over its bytes)."""
    import re
    pat = re.compile(rb'"topic":"md\.(?:tick|trade|book)\.([A-Za-z0-9-]+)"')
    found = set()
    with open(path, "rb") as f:
        for line in f:
            m = pat.search(line, 0, 80)
            if m:
                found.add(m.group(1).decode())
    return tuple(sorted(found))


def replay_finished(nodes) -> bool:
    md = nodes.get("marketdata")
    if md is None:
        return False
    return bool(md.extra_counters().get("replay_done", 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodes.offline", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds to run (a replay stops earlier when its file is done)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--source", default="synthetic", help="synthetic | replay:FILE")
    p.add_argument("--speed", default="max", help="replay pace: 1, 10, max, or a number")
    p.add_argument("--rate", type=float, default=50.0,
                   help="synthetic market steps per second (0: as fast as the mesh goes)")
    p.add_argument("--summary-json", metavar="PATH")
    p.add_argument("--state-dir", help="journals, kill switch and store files (default var/offline/run-<time>)")
    p.add_argument("--conf")
    p.add_argument("--bridge", metavar="ENDPOINT", help="also publish every event on this tcp endpoint")
    p.add_argument("--lockstep", dest="lockstep", action="store_true", default=None,
                   help="deterministic: the source waits for the mesh after each event (default for replay)")
    p.add_argument("--no-lockstep", dest="lockstep", action="store_false")
    p.add_argument("--cpus", metavar="all|N[,N...]",
                   help="cpus of the offline process (default: mesh.cpu_affinity.offline, else one cpu)")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    p.add_argument("--log-level", default=None)
    p.add_argument("--alerts", choices=("log", "local", "live"), default="log",
                   help="alerts.mode of this run: log (default) keeps alerts in the log, live pages the "
                        "Slack/Teams channels of the secrets, local only channels on this machine")
    args = p.parse_args(argv)
    try:
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


def _run(args, cfg, cpus, why) -> int:
    _log.setup(args.log_level or "WARNING")   # progress lines say what it does; --log-level INFO for more
    log = _log.get("offline")
    ctx = zmq.Context()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = {}
    summary = Summary(cfg.mesh, context=ctx, bridge=args.bridge, bridge_ctx=ctx)
    t0 = time.monotonic()
    rc = 0
    try:
        summary.start()
        for name, cls in available_nodes():
            node = cls.from_config(cfg, context=ctx)
            node.start()
            started[name] = node
        print(f"offline: running {', '.join(started) or 'no nodes'} over inproc for up to "
              f"{args.duration:g} s, source {args.source}, seed {args.seed}, state in {cfg.mesh.state_dir}, "
              f"cpus {'any' if cpus is None else ','.join(map(str, sorted(cpus)))} ({why})", flush=True)
        next_print = time.monotonic() + 1
        deadline = t0 + args.duration
        while not stop.is_set() and time.monotonic() < deadline:
            stop.wait(0.05)
            if args.source.startswith("replay:") and replay_finished(started):
                log.info("replay finished")
                break
            dead = [n for n, node in started.items() if not node.alive]
            if dead:
                print(f"offline: node(s) died: {', '.join(dead)}", file=sys.stderr)
                rc = 1
                break
            if not args.quiet and time.monotonic() >= next_print:
                next_print += 1
                s = summary.n
                pnl = summary.pnl.realized if summary.pnl else Decimal(0)
                print(f"  t={time.monotonic() - t0:5.1f}s ticks={s['ticks']} orders={s['orders']} "
                      f"fills={s['fills']} rejects={s['rejects']} realized_pnl={pnl} "
                      f"killswitch={'ON' if summary.killswitch_engaged else 'off'}", flush=True)
    except NodeStartError as e:
        print(f"offline: {e}", file=sys.stderr)
        rc = 1
    finally:
        # stop the source first, let the rest drain, then the consumers (reverse start order)
        for name in reversed(list(started)):
            started[name].stop()
        stored = 0
        if "store" in started:
            stored = int(started["store"].extra_counters().get("events_stored", 0))
        summary.stop()
        ctx.term()
    elapsed = time.monotonic() - t0
    out = summarize(summary, started, elapsed, stored)
    print("offline summary:")
    for k in ("ticks", "trades", "orders", "fills", "rejects", "cancels", "realized_pnl", "unrealized_pnl",
              "fees", "killswitch_engaged", "trading_state", "events_stored", "bus_gaps", "malformed"):
        print(f"  {k:<20} {out[k]}")
    if out["reject_codes"]:
        print(f"  {'reject_codes':<20} {out['reject_codes']}")
    if out["positions"]:
        print(f"  {'positions':<20} {out['positions']}")
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
