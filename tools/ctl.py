"""``tickmesh ctl``: operate a running mesh over its request/reply sockets.

    tickmesh ctl status [--json]                 every node up/down, trading state, kill switch, feeds
    tickmesh ctl killswitch engage --reason "manual halt"
    tickmesh ctl killswitch release|status|reduce|resume
    tickmesh ctl order buy BTC-USD 0.01 [--limit 65000] [--tif GTC|IOC|FOK] [--post-only]
                                        [--quote] [--reduce-only] [--id CLIENT_ORDER_ID]
    tickmesh ctl cancel CLIENT_ORDER_ID
    tickmesh ctl cancel-all [PRODUCT]
    tickmesh ctl orders | positions | pnl
    tickmesh ctl query NODE WHAT [ARG]           any Query (e.g. `query risk risk`)

``status`` listens to heartbeats for ~1.5 heartbeat intervals and asks every node ``Query("status")``
in parallel, then risk for the trading state and kill switch (``Query("risk")``) and marketdata for
feed health (``Query("feed")``). The others send one request to risk (killswitch) or execution.

Output for people: money to the product's increments (prices and average costs to
``mesh.product_specs.<P>.quote_increment``, sizes to its ``base_increment``, PnL and other cash to
the cent), times ISO-8601 UTC, tables that do not fit the terminal shown as one block per row.
``--json`` (before or after the command) gives the exact values instead.

Exit status: 0 done; 1 the node answered no (risk rejected the order, unknown order, ...) or, for
``status``, an expected node is down; 2 bad arguments (usage printed); 3 a node did not answer in
time (it is down or restarting: see ``supervisorctl status``); 4 (``status``) trading is halted:
the kill switch is engaged or risk's state is HALTED.
"""
import argparse
import json
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation

import zmq

import proto
from proto import CancelAll, CancelOrder, KillSwitchCmd, OrderIntent, Query, topics

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_HALTED = 0, 1, 2, 3, 4
# The nodes supervisord runs (supervisord.conf); `status` exits 1 when one of these is down.
EXPECTED = ("marketdata", "risk", "execution", "store", "strategy", "metrics", "alerts", "supervisor")


class UsageError(Exception):
    pass


# --- formatting --------------------------------------------------------------------------------------

def _plain(v):
    return proto.to_plain(v)


CENT = Decimal("0.01")


def iso(ns: int) -> str:
    """Epoch nanoseconds -> ISO-8601 UTC with milliseconds (``2026-12-04T19:57:46.017Z``)."""
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns // 1_000_000 % 1000:03d}Z"


def _is_epoch_ns(k, v) -> bool:
    return isinstance(k, str) and k.endswith("_ns") and type(v) is int and v > 10**17


def _times(v):
    """Epoch-nanosecond fields (``*_ns``) as ISO-8601 UTC, the ``_ns`` dropped from the key."""
    if isinstance(v, dict):
        return {(k[:-3] if _is_epoch_ns(k, x) else k): (iso(x) if _is_epoch_ns(k, x) else _times(x))
                for k, x in v.items()}
    if isinstance(v, list):
        return [_times(x) for x in v]
    return v


class Money:
    """Money and sizes to the product's increments, from the one source: ``mesh.product_specs``."""

    def __init__(self, mesh):
        self.mesh = mesh

    def _q(self, v, step):
        if v is None or step is None or not isinstance(v, Decimal) or not v.is_finite():
            return v
        return v.quantize(step)

    def price(self, product, v):
        spec = self.mesh.spec(product)
        return self._q(v, spec.quote_increment if spec else CENT)

    def size(self, product, v):
        spec = self.mesh.spec(product)
        q = self._q(v, spec.base_increment if spec else None)
        if isinstance(q, Decimal) and q.is_finite():
            t = format(q, "f")                 # to the increment, without trailing zeros
            return Decimal(t.rstrip("0").rstrip(".") if "." in t else t)
        return q

    def cash(self, v):
        return self._q(v, CENT)

    def record(self, r):
        """A Position, PnL or Order with its money fields to the increments (other data unchanged)."""
        if isinstance(r, proto.Position):
            p = r.product
            return r._replace(qty=self.size(p, r.qty), avg_cost=self.price(p, r.avg_cost), mark=self.price(p, r.mark),
                              realized_pnl=self.cash(r.realized_pnl), unrealized_pnl=self.cash(r.unrealized_pnl),
                              exposure=self.cash(r.exposure), fees=self.cash(r.fees))
        if isinstance(r, proto.PnL):
            return r._replace(realized=self.cash(r.realized), unrealized=self.cash(r.unrealized),
                              daily=self.cash(r.daily), equity=self.cash(r.equity), fees=self.cash(r.fees))
        if isinstance(r, proto.Order):
            p = r.product
            return r._replace(size=self.size(p, r.size), quote_size=self.cash(r.quote_size),
                              limit_price=self.price(p, r.limit_price), filled_size=self.size(p, r.filled_size),
                              avg_price=self.price(p, r.avg_price), fees=self.cash(r.fees),
                              last_fill_size=self.size(p, r.last_fill_size),
                              last_fill_price=self.price(p, r.last_fill_price))
        if isinstance(r, list):
            return [self.record(x) for x in r]
        return r


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def term_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def table(rows: list, columns: list = None, width: int = None) -> str:
    """Aligned columns from a list of dicts; one ``key: value`` block per row when the columns
    would not fit ``width`` (the terminal's)."""
    if not rows:
        return "(none)"
    width = width or term_width()
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    if sum(widths) + 2 * (len(widths) - 1) > width:
        kw = max(len(c) for c in cols)
        blocks = ["\n".join(f"{c:<{kw}}  {x}" for c, x in zip(cols, row)) for row in cells]
        return "\n\n".join(blocks)
    head = "  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))
    return "\n".join([head.rstrip()] + ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells])


def render(data) -> str:
    """Human view of a reply's data: records and dicts as key: value, lists as tables."""
    p = _times(_plain(data))
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
            f"{o.tif}{fill}{why} [{o.venue}] {iso(o.updated_ns or o.created_ns)}")


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


def uptime(s) -> str:
    if s is None:
        return None
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def status_table(rows: dict, width: int = None) -> str:
    """One line per node (78 columns at most for the mesh's nodes): all counters with -v."""
    view = []
    for node, r in rows.items():
        c = r["counters"]
        gaps = sum(v for k, v in c.items() if k.startswith("bus_gaps.")) if c else None
        view.append({"node": node, "up": "up" if r["up"] else "DOWN", "state": r["state"], "pid": r["pid"],
                     "uptime": uptime(r["uptime_s"]), "published": c.get("published"),
                     "gaps": gaps, "errors": c.get("handler_errors"),
                     "heard": "+".join("hb" if h == "heartbeat" else h for h in r["heard"]) or "nothing"})
    return table(view, width=width)


def collect_trading(mesh, *, context, timeout_ms: int) -> dict:
    """Risk's trading state and kill switch (Query("risk")) and marketdata's feed health
    (Query("feed")), asked in parallel; a node that does not answer leaves its part None."""
    from nodes.client import RequestClient, RequestError

    def ask(node, what):
        c = RequestClient.for_node(mesh, node, source="ctl", context=context, timeout_ms=timeout_ms)
        try:
            return c.call(Query(what))
        except RequestError:
            return None
        finally:
            c.close()
    with ThreadPoolExecutor(max_workers=2) as pool:
        risk_f, feed_f = pool.submit(ask, "risk", "risk"), pool.submit(ask, "marketdata", "feed")
        risk, feed = risk_f.result(), feed_f.result()
    out = {"state": None, "state_reason": None, "killswitch": None, "feeds": {}}
    if isinstance(risk, dict):
        ks = risk.get("killswitch")
        ks = proto.to_plain(ks) if ks is not None else None
        out.update(state=risk.get("state"), state_reason=risk.get("state_reason"), killswitch=ks)
        for p, f in (risk.get("feeds") or {}).items():
            out["feeds"].setdefault(p, {})["risk"] = f.get("verdict")
            out["feeds"][p]["risk_reason"] = f.get("verdict_reason")
    if isinstance(feed, dict):
        for p, f in (feed.get("products") or {}).items():
            d = out["feeds"].setdefault(p, {})
            d.update(marketdata=f.get("state"), healthy=f.get("healthy"), reason=f.get("reason"), age_s=f.get("age_s"))
    out["halted"] = bool((out["killswitch"] or {}).get("engaged")) or out["state"] == "HALTED"
    return out


def trading_lines(t: dict) -> list:
    """The trading state, kill switch and feed health, one short line each."""
    if t["state"] is None:
        lines = ["trading      unknown (risk did not answer)"]
    else:
        lines = [f"trading      {t['state']}" + (f" ({t['state_reason']})" if t["state_reason"] else "")]
    ks = t["killswitch"]
    if ks is None:
        lines.append("kill switch  unknown")
    elif ks.get("engaged"):
        lines.append(f"kill switch  ENGAGED since {iso(ks.get('since_ns') or 0)} by {ks.get('source') or '?'}: "
                     f"{ks.get('reason') or ''}".rstrip(": "))
    else:
        lines.append("kill switch  off")
    for p, f in sorted(t["feeds"].items()):
        md = f.get("marketdata")
        if md is None:
            head = "unknown (marketdata did not answer)"
        else:
            head = "ok" if f.get("healthy") else md
            age = f.get("age_s")
            if not f.get("healthy"):
                head += f": {f.get('reason') or ''}".rstrip(": ")
            head += f", last message {age:.1f} s ago" if age is not None else ", no message yet"
        verdict = f.get("risk")
        if verdict not in (None, "OK"):
            head += f"; risk refuses: {verdict}"
        lines.append(f"feed {p:<8} {head}")
    return lines


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
    # --json is accepted after the command too (`ctl status --json`), as docs/operations.md shows
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print replies as JSON")
    _add = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add(*a, parents=[json_opt], **kw)
    s = sub.add_parser("status", help="every node up/down, trading state, kill switch, feed health")
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
    try:
        return _main(argv, out=out, err=err, context=context)
    except BrokenPipeError:              # `tickmesh ctl orders | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


def _main(argv=None, *, out=None, err=None, context=None) -> int:
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
            trading = collect_trading(mesh, context=ctx, timeout_ms=timeout_ms) if not args.node else None
            if args.json:
                print(json.dumps({"nodes": _plain(rows), "trading": trading}, indent=1), file=out)
            else:
                print(status_table(rows), file=out)
                if trading is not None:
                    print("\n" + "\n".join(trading_lines(trading)), file=out)
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
            if trading is not None and trading["halted"]:
                print(f"trading halted: {'kill switch engaged' if (trading['killswitch'] or {}).get('engaged') else 'state HALTED'}",
                      file=err)
                return EXIT_HALTED
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
            print(describe_order(Money(mesh).record(reply.data)), file=out)
        elif isinstance(reply.data, list) and reply.data and all(isinstance(o, proto.Order) for o in reply.data):
            for o in Money(mesh).record(reply.data):
                print(describe_order(o), file=out)
        else:
            reply = reply._replace(data=Money(mesh).record(reply.data))
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
