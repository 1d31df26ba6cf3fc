"""Micro-benchmarks behind the profile findings in docs/performance.md (not a section of ``all``):

    python -m tools.bench.micro

* the Coinbase-frame normaliser on the synthetic market's frames (as dicts, as the synthetic source
  feeds it, and as JSON text, as a live connection does): frames/s and us per frame by channel;
* the synthetic market itself (``Market.step`` + ``Session.on_step``): steps/s;
* store lines: ``proto.jsonl.dumps`` against the store's formatter ``nodes.store.lines.dumps`` (the
  same text), per message type;
* ``proto.decode`` of one frame per market-data type (what every subscriber pays per event).

Each figure is the best of 3 timings of the same input (the machine is shared).
"""
import json
import random
import sys
import time


def _best(fn, data, rounds=3):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for x in data:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return best / len(data)


def synthetic_frames(steps: int):
    from nodes.marketdata.synthetic import Market, Session
    m = Market(["BTC-USD", "ETH-USD"], seed=1)
    s = Session(m, random.Random(1), ack_order="before")
    frames = []
    now = 1_700_000_000_000_000_000
    for ch in ("heartbeats", "ticker", "market_trades", "level2"):
        msg = {"type": "subscribe", "channel": ch}
        if ch != "heartbeats":
            msg["product_ids"] = ["BTC-USD", "ETH-USD"]
        frames += s.handle(msg, now)
    t0 = time.perf_counter()
    for _ in range(steps):
        now += 100_000_000
        frames += s.on_step(m.step(0.1, now))
    return frames, (time.perf_counter() - t0) / steps


def parser(steps: int = 10_000):
    from nodes.marketdata.normalize import Normalizer
    frames, step_s = synthetic_frames(steps)
    print(f"synthetic market: {1 / step_s:,.0f} steps/s ({step_s * 1e6:.0f} us per step, 2 products)")
    texts = [json.dumps(f, separators=(",", ":")) for f in frames]
    for label, data in (("dicts (synthetic source)", frames), ("JSON text (live)", texts)):
        best = float("inf")
        for _ in range(3):
            n = Normalizer("bench")
            t0 = time.perf_counter()
            for f in data:
                n.feed(f, 1)
            best = min(best, time.perf_counter() - t0)
        print(f"normaliser, {label}: {len(data) / best:,.0f} frames/s ({best / len(data) * 1e6:.1f} us/frame)")
    for ch in ("ticker", "market_trades", "l2_data"):
        sub = [f for f in frames if f["channel"] == ch]
        n = Normalizer("bench")

        def feed(f):
            n.last_seq = f["sequence_num"] - 1
            n.feed(f, 1)
        print(f"  {ch}: {_best(feed, sub) * 1e6:.1f} us/frame")


def _recorded_envelopes(events: int = 20_000):
    """Market events the way the store receives them: the synthetic market through the parser and
    the market-data node, over inproc, recorded by the store node (tools.bench.replay.record)."""
    from pathlib import Path
    from proto import jsonl
    from . import common, replay
    common.quiet_logs()
    tmp = common.tmpdir("tmm-")
    try:
        path = replay.record(Path(tmp), events)
        return list(jsonl.read(path))
    finally:
        common.rmtree(tmp)


def lines_and_decode(envs):
    import collections
    import proto
    from proto import jsonl
    try:
        from nodes.store.lines import dumps as fast
    except ImportError:
        fast = None
    by = collections.defaultdict(list)
    for e in envs:
        by[e.msg.TAG].append(e)
    enc = proto.Encoder("marketdata")
    for tag, es in sorted(by.items()):
        es = es[:5000]
        ref = _best(jsonl.dumps, es)
        frames = [enc.encode(e.topic, e.msg, e.ts_event, e.ts_recv) for e in es]
        dec = _best(proto.decode, frames)
        line = f"{tag:<11} decode {dec * 1e6:5.1f} us | store line: proto.jsonl.dumps {ref * 1e6:5.1f} us"
        if fast is not None:
            f = _best(fast, es)
            line += f", nodes.store.lines.dumps {f * 1e6:5.1f} us (x{ref / f:.1f})"
        print(line)


def main(argv=None) -> int:
    parser()
    lines_and_decode(_recorded_envelopes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
