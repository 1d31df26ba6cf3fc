"""``tickmesh ctl``: operate a running mesh over its request/reply sockets.

    tickmesh ctl status                          every node: up/down, pid, uptime, counters
    tickmesh ctl killswitch engage --reason "manual halt"
    tickmesh ctl killswitch release|status|reduce|resume
    tickmesh ctl order buy BTC-USD 0.01 [--limit 65000] [--tif GTC|IOC|FOK] [--post-only]
                                        [--quote] [--reduce-only] [--id CLIENT_ORDER_ID]
    tickmesh ctl cancel CLIENT_ORDER_ID
    tickmesh ctl cancel-all [PRODUCT]
    tickmesh ctl orders | positions | pnl
    tickmesh ctl query NODE WHAT [ARG]           any Query (e.g. `query risk risk`)

``status`` listens to heartbeats for ~1.5 heartbeat intervals and asks every node ``Query("status")``
in parallel. The others send one request to risk (killswitch) or execution (the rest).

Exit status: 0 done; 1 the node answered no (risk rejected the order, unknown order, ...) or, for
``status``, an expected node is down; 2 bad arguments (usage printed); 3 a node did not answer in
time (it is down or restarting: see ``supervisorctl status``).
"""
import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation

import zmq

import proto
from proto import CancelAll, CancelOrder, KillSwitchCmd, OrderIntent, Query, topics

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
# The nodes supervisord runs (supervisord.conf); `status` exits 1 when one of these is down.
EXPECTED = ("marketdata", "risk", "execution", "store", "strategy", "metrics", "alerts", "supervisor")


class UsageError(Exception):
    pass


# --- formatting --------------------------------------------------------------------------------------

def _plain(v):
    return proto.to_plain(v)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def table(rows: list, columns: list = None) -> str:
    """Aligned columns from a list of dicts."""
    if not rows:
        return "(none)"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))
    return "\n".join([head.rstrip()] + ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells])


def render(data) -> str:
    """Human view of a reply's data: records and dicts as key: value, lists as tables."""
    p = _plain(data)
    if isinstance(p, list):
        if all(isinstance(x, dict) for x in p):
            return table(p)
        return "\n".join(_cell(x) for x in p) or "(none)"
    if isinstance(p, dict):
        if p and all(isinstance(v, dict) for v in p.values()):
            key = "key"
            return table([{key: k, **v} for k, v in p.items()])
        w = max((len(k) for k in p), default=0)
        return "\n".join(f"{k:<{w}}  {_cell(v)}" for k, v in p.items()) or "(empty)"
    return _cell(p)


def describe_order(o) -> str:
    if not isinstance(o, proto.Order):
        return render(o)
    size = f"{o.size}" if o.size is not None else f"quote {o.quote_size}"
    price = f" limit {o.limit_price}" if o.limit_price is not None else ""
    fill = f", filled {o.filled_size} @ {o.avg_price}" if o.filled_size else ""
    why = f" ({o.code}: {o.reason})" if o.code not in ("OK", "") or o.reason else ""
    return (f"{o.client_order_id} {o.status} {o.side} {size} {o.product} {o.order_type}{price} "
            f"{o.tif}{fill}{why} [{o.venue}]")


# --- status ----------------------------------------------------------------------------------------------

def collect_status(mesh, nodes, *, context, listen_s: float, timeout_ms: int) -> dict:
    """Heartbeats for ``listen_s`` plus Query("status") to every node in parallel."""
    from nodes.client import RequestClient, RequestError
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topics.NODE_HEARTBEAT.encode())
    for n in nodes:
        sub.connect(mesh.endpoint(n, "pub"))

    def ask(node):
        c = RequestClient.for_node(mesh, node, source="ctl", context=context, timeout_ms=timeout_ms)
        try:
            return node, c.call(Query("status")), None
        except RequestError as e:
            return node, None, e
        finally:
            c.close()

    beats = {}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(ask, n) for n in nodes]
        deadline = time.monotonic() + listen_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if sub.poll(max(1, int(left * 1000))):
                try:
                    env = proto.decode(sub.recv())
                except proto.DecodeError:
                    continue
                if isinstance(env.msg, proto.Heartbeat):
                    beats[env.msg.node] = (time.time_ns(), env.msg)
        answers = [f.result() for f in futures]
    sub.close(linger=0)
    out = {}
    for node, status, err in answers:
        seen = beats.get(node)
        hb = seen[1] if seen else None
        row = {"node": node, "up": False, "state": None, "pid": None, "uptime_s": None, "host": None,
               "counters": {}, "heard": []}
        if hb is not None:
            row.update(state=hb.state, pid=hb.pid, uptime_s=hb.uptime_s, host=hb.host, counters=dict(hb.counters))
            row["heard"].append("heartbeat")
        if status is not None and isinstance(status, dict):
            row["state"] = status.get("state", row["state"])
            row["pid"] = status.get("pid", row["pid"])
            row["uptime_s"] = status.get("uptime_s", row["uptime_s"])
            c = dict(status.get("counters") or {})
            for src, n in (status.get("bus_gaps") or {}).items():
                c[f"bus_gaps.{src}"] = n
            row["counters"] = {**row["counters"], **c}
            row["heard"].append("query")
        elif err is not None and err.code != proto.Code.TIMEOUT:
            row["heard"].append(f"query error {err.code}")
        row["up"] = row["state"] == "RUNNING"
        out[node] = row
    return out


def status_table(rows: dict) -> str:
    view = []
    for node, r in rows.items():
        c = r["counters"]
        gaps = sum(v for k, v in c.items() if k.startswith("bus_gaps.")) if c else None
        view.append({"node": node, "up": "up" if r["up"] else "DOWN", "state": r["state"], "pid": r["pid"],
                     "uptime": f"{r['uptime_s']:.1f}s" if r["uptime_s"] is not None else None,
                     "published": c.get("published"), "received": c.get("received"),
                     "bus_gaps": gaps, "malformed": c.get("malformed"), "errors": c.get("handler_errors"),
                     "heard": "+".join(r["heard"]) or "nothing"})
    return table(view)


# --- commands --------------------------------------------------------------------------------------------

def _dec(text: str, what: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"{what} must be a decimal number, got {text!r}") from None
    if not d.is_finite() or d <= 0:
        raise UsageError(f"{what} must be a positive finite number, got {text!r}")
    return d


def build_intent(args) -> OrderIntent:
    size = _dec(args.size, "SIZE")
    limit = _dec(args.limit, "--limit") if args.limit is not None else None
    if args.quote and limit is not None:
        raise UsageError("--quote (a quote-currency size) is for market orders only")
    if args.post_only and limit is None:
        raise UsageError("--post-only needs --limit")
    if "-" not in args.product:
        raise UsageError(f"PRODUCT looks like BASE-QUOTE (e.g. BTC-USD), got {args.product!r}")
    cid = args.id or f"ctl-{uuid.uuid4().hex[:20]}"
    return OrderIntent(product=args.product.upper(), side=args.side.upper(),
                       order_type="LIMIT" if limit is not None else "MARKET",
                       size=None if args.quote else size, quote_size=size if args.quote else None,
                       limit_price=limit, tif=args.tif, post_only=args.post_only,
                       reduce_only=args.reduce_only, client_order_id=cid, strategy="ctl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickmesh ctl", description="Operate a running tickmesh.",
                                epilog="exit status: 0 ok, 1 refused / node down, 2 usage, 3 no answer")
    p.add_argument("--conf", help="config file (default: $TICKMESH_CONF or conf/mesh.toml)")
    p.add_argument("--timeout", type=int, default=None, metavar="MS",
                   help="request deadline in ms (default: mesh.request_timeout_ms)")
    p.add_argument("--json", action="store_true", help="print replies as JSON")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("status", help="every node's heartbeat and status")
    s.add_argument("--node", action="append", default=[], help="only these nodes (repeatable)")
    s.add_argument("--expect", default=",".join(EXPECTED),
                   help="comma-separated nodes that must be up for exit status 0")
    s.add_argument("-v", "--verbose", action="store_true", help="all counters of every node")
    k = sub.add_parser("killswitch", help="engage, release or show the kill switch (risk)")
    k.add_argument("action", choices=("engage", "release", "status", "reduce", "resume"),
                   help="reduce/resume: only position-shrinking orders / back to normal")
    k.add_argument("--reason", default="", help="why (recorded and alerted)")
    o = sub.add_parser("order", help="submit an order to execution (risk-checked)")
    o.add_argument("side", choices=("buy", "sell", "BUY", "SELL"))
    o.add_argument("product")
    o.add_argument("size", help="base size (quote size with --quote)")
    o.add_argument("--limit", metavar="PRICE", help="limit price (default: market order)")
    o.add_argument("--tif", choices=("GTC", "IOC", "FOK"), default="GTC")
    o.add_argument("--post-only", action="store_true")
    o.add_argument("--quote", action="store_true", help="SIZE is in quote currency (market orders)")
    o.add_argument("--reduce-only", action="store_true")
    o.add_argument("--id", help="client order id (default: generated ctl-...)")
    c = sub.add_parser("cancel", help="cancel one order by client order id")
    c.add_argument("id")
    ca = sub.add_parser("cancel-all", help="cancel every working order (of one product)")
    ca.add_argument("product", nargs="?", default="")
    sub.add_parser("orders", help="orders known to execution")
    sub.add_parser("positions", help="positions")
    sub.add_parser("pnl", help="realised / unrealised / daily PnL and equity")
    q = sub.add_parser("query", help="send any Query to any node")
    q.add_argument("node")
    q.add_argument("what")
    q.add_argument("arg", nargs="?", default="")
    return p


def _request(mesh, node, msg, timeout_ms, context):
    from nodes.client import RequestClient
    c = RequestClient.for_node(mesh, node, source="ctl", context=context, timeout_ms=timeout_ms)
    try:
        return c.request(msg)
    finally:
        c.close()


def main(argv=None, *, out=None, err=None, context=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    p = build_parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:       # argparse printed usage/help
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    from nodes import config
    from nodes.client import RequestTimeout
    try:
        cfg = config.load(args.conf)
    except config.ConfigError as e:
        print(f"tickmesh ctl: config error: {e}", file=err)
        return EXIT_USAGE
    mesh = cfg.mesh
    if mesh.transport == "inproc":
        print("tickmesh ctl: mesh.transport is inproc (one process): nothing to talk to from here", file=err)
        return EXIT_USAGE
    timeout_ms = args.timeout if args.timeout is not None else mesh.request_timeout_ms
    ctx = context or zmq.Context()
    try:
        if args.cmd == "status":
            nodes = args.node or [n for n in config.NODES]
            bad = [n for n in nodes if n not in config.NODES]
            if bad:
                raise UsageError(f"unknown node {bad[0]!r} (known: {', '.join(config.NODES)})")
            rows = collect_status(mesh, nodes, context=ctx, listen_s=1.5 * mesh.heartbeat_s,
                                  timeout_ms=min(timeout_ms, int(1500 * mesh.heartbeat_s)))
            if not args.node:      # replay/offline are not mesh processes: shown only when heard
                rows = {n: r for n, r in rows.items() if n in EXPECTED or r["heard"]}
            if args.json:
                print(json.dumps(_plain(rows), indent=1), file=out)
            else:
                print(status_table(rows), file=out)
                if args.verbose:
                    for node, r in rows.items():
                        if r["counters"]:
                            print(f"\n{node}:", file=out)
                            print(render(r["counters"]), file=out)
            expect = [n for n in args.expect.split(",") if n and n in rows]
            down = [n for n in expect if not rows[n]["up"]]
            if down:
                print(f"down: {', '.join(down)}", file=err)
                return EXIT_REFUSED
            return EXIT_OK
        if args.cmd == "killswitch":
            reason = args.reason or ("manual (tickmesh ctl)" if args.action != "status" else "")
            node, msg = "risk", KillSwitchCmd(args.action, reason)
        elif args.cmd == "order":
            node, msg = "execution", build_intent(args)
        elif args.cmd == "cancel":
            node, msg = "execution", CancelOrder(args.id)
        elif args.cmd == "cancel-all":
            node, msg = "execution", CancelAll(args.product.upper())
        elif args.cmd in ("orders", "positions", "pnl"):
            node, msg = "execution", Query(args.cmd)
        else:  # query
            if args.node not in config.NODES:
                raise UsageError(f"unknown node {args.node!r} (known: {', '.join(config.NODES)})")
            node, msg = args.node, Query(args.what, args.arg)
        try:
            reply = _request(mesh, node, msg, timeout_ms, ctx)
        except RequestTimeout as e:
            print(f"tickmesh ctl: {node} did not answer within {timeout_ms} ms ({e.endpoint}); "
                  f"is it running? (make status / tickmesh ctl status)", file=err)
            return EXIT_TIMEOUT
        if args.json:
            print(json.dumps({"ok": reply.ok, "code": reply.code, "reason": reply.reason,
                              "data": _plain(reply.data)}, indent=1), file=out)
        elif isinstance(reply.data, proto.Order):
            print(describe_order(reply.data), file=out)
        else:
            if reply.ok and reply.reason:
                print(reply.reason, file=out)
            if reply.data is not None:
                print(render(reply.data), file=out)
        if not reply.ok:
            print(f"{node} refused: {reply.code}: {reply.reason}", file=err)
            return EXIT_REFUSED
        if args.cmd == "order" and isinstance(reply.data, proto.Order) and reply.data.status == "REJECTED":
            return EXIT_REFUSED
        return EXIT_OK
    except UsageError as e:
        p.print_usage(err)
        print(f"tickmesh ctl: {e}", file=err)
        return EXIT_USAGE
    except config.ConfigError as e:          # e.g. mesh.curve on and no key pair for ctl on this host
        print(f"tickmesh ctl: config error: {e}", file=err)
        return EXIT_USAGE
    finally:
        if context is None:
            ctx.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(main())
