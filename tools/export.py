"""``python -m tools.export FILE [FILE ...] --csv OUT [--fields F ...] [--topics PREFIX ...]``
``python -m tools.export FILE [FILE ...] --digest``

Flattens store events (``proto.jsonl``) into one CSV row per event, for spreadsheets and pandas.

Columns: the envelope (``topic, type, source, seq, msg_id, ts_event, ts_recv``), then the body's
fields by name (a body field whose name is an envelope column is called ``body.<name>``). Nested
values are flattened with dotted paths: a Book's ``bids`` become ``bids.0.0`` (best bid price),
``bids.0.1`` (its size), ...; a map such as ``RiskExposure.positions`` becomes
``positions.BTC-USD``. Money stays the exact decimal string it was on the bus (never a float), so
``65000.10`` stays ``65000.10``. Without ``--fields`` the columns are every column any selected
event has, in order of first appearance; with ``--fields`` exactly those (missing: empty).
Bookkeeping lines (``_open``, ``_gap``, ``_lag``, ``_close``) are skipped; ``--meta`` lists them
on stderr. ``--csv -`` writes to stdout.

``--digest`` prints instead a sha256 over the order, fill, position and PnL events with wall-clock
fields, random venue ids and the run's UTC day removed and client order ids numbered by first
appearance (see ``digest``): two replays of one file with one seed must print the same digest.
"""
import argparse
import csv
import sys

import proto
from proto import jsonl

ENVELOPE = ("topic", "type", "source", "seq", "msg_id", "ts_event", "ts_recv")


def _flatten(prefix, value, out):
    if type(value) is dict:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif type(value) is list:
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = value


def flatten(env) -> dict:
    """One event as a flat ``{column: value}`` dict (money as exact strings)."""
    plain = proto.envelope_to_plain(env)
    row = {k: plain[k] for k in ENVELOPE}
    for k, v in plain["body"].items():
        name = f"body.{k}" if k in ENVELOPE else k
        if type(v) in (dict, list):
            if not v:
                row[name] = ""
            _flatten(name, v, row)
        else:
            row[name] = v
    return row


def _cell(v):
    if v is None:
        return ""
    if v is True or v is False:
        return "true" if v else "false"
    return v      # str (money included: already exact), int, float (statistics only)


def _events(files, prefixes, meta_out=None):
    pre = tuple(prefixes)
    for f in files:
        for item in jsonl.read(f, with_meta=meta_out is not None):
            if type(item) is dict:
                meta_out.append((f, item))
            elif not pre or item.topic.startswith(pre):
                yield item


def export(files, out, fields=None, prefixes=(), meta_out=None) -> int:
    """Write the CSV to the text stream ``out``; returns the number of rows."""
    files = [files] if isinstance(files, str) else list(files)
    if not fields:      # first pass: every column, in order of first appearance
        cols = {}
        for env in _events(files, prefixes):
            for k in flatten(env):
                cols.setdefault(k, None)
        fields = list(cols) or list(ENVELOPE)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(fields)
    n = 0
    for env in _events(files, prefixes, meta_out):
        row = flatten(env)
        w.writerow([_cell(row.get(f)) for f in fields])
        n += 1
    return n


# --- digest: what must be identical between two replays of the same file with the same seed ------
DIGEST_TOPICS = ("order.", "fill.", "position.", "pnl")
# wall-clock times, ids a venue draws at random, and the UTC day of the run are not the replay's to fix
VOLATILE = frozenset({"created_ns", "updated_ns", "origin_ns", "since_ns", "compute_ns", "venue_order_id",
                      "fill_id", "day"})


def digest(files, prefixes=DIGEST_TOPICS) -> tuple:
    """``(sha256 hex, number of events)`` of the events on ``prefixes``, normalised: per topic in
    file order; envelope kept: topic, type, source; body kept without ``VOLATILE`` fields; client
    order ids replaced by their order of first appearance (``#1``, ``#2``, ...); a repeat of the
    previous event of the same topic (a periodic republish of an unchanged state, timed by the wall
    clock) is counted once."""
    import hashlib
    import json
    files = [files] if isinstance(files, str) else list(files)
    coids, per_topic, n = {}, {}, 0
    for env in _events(files, prefixes):
        body = proto.to_plain(env.msg)
        for k in VOLATILE:
            body.pop(k, None)
        if "client_order_id" in body:
            body["client_order_id"] = coids.setdefault(body["client_order_id"], f"#{len(coids) + 1}")
        line = json.dumps([env.topic, env.msg.TAG, env.source, body], sort_keys=True, separators=(",", ":"))
        lines = per_topic.setdefault(env.topic, [])
        if lines and lines[-1] == line:
            continue     # a periodic republish of an unchanged state (position/pnl every second)
        lines.append(line)
        n += 1
    h = hashlib.sha256()
    for topic in sorted(per_topic):
        for line in per_topic[topic]:
            h.update(line.encode())
            h.update(b"\n")
    return h.hexdigest(), n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.strip().splitlines()[0])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--csv", metavar="OUT", help="output CSV file ('-' for stdout)")
    p.add_argument("--digest", action="store_true",
                   help="print the sha256 of the normalised order/fill/position/pnl events instead")
    p.add_argument("--fields", nargs="+", default=None, metavar="F", help="columns to write")
    p.add_argument("--topics", nargs="+", default=[], metavar="PREFIX", help="only these topic prefixes")
    p.add_argument("--meta", action="store_true", help="list bookkeeping lines (_gap, _lag, ...) on stderr")
    a = p.parse_args(argv)
    if a.digest:
        try:
            h, n = digest(a.files, tuple(a.topics) or DIGEST_TOPICS)
        except (OSError, proto.DecodeError) as e:
            print(f"export: {e}", file=sys.stderr)
            return 1
        print(f"{h}  {n} events")
        return 0
    if not a.csv:
        p.error("--csv OUT (or --digest) is required")
    meta = [] if a.meta else None
    try:
        if a.csv == "-":
            n = export(a.files, sys.stdout, a.fields, a.topics, meta)
        else:
            with open(a.csv, "w", newline="", encoding="utf-8") as out:
                n = export(a.files, out, a.fields, a.topics, meta)
    except (OSError, proto.DecodeError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    for f, m in meta or ():
        print(f"{f}: {m}", file=sys.stderr)
    print(f"export: {n} events -> {a.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
