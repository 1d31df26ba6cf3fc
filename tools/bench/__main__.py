"""``python -m tools.bench SECTION|all [--quick] [--json PATH]``: run benchmarks, print a table,
write one JSON report (sections merged into an existing file's other sections)."""
import argparse
import importlib
import json
import os
import platform
import sys
import time

SECTIONS = ("bus", "risk", "tick_to_trade", "replay", "store", "startup", "memory")


def machine() -> dict:
    try:
        import zmq
        zv = f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}"
    except ImportError:
        zv = "?"
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "cpu": cpu, "zmq": zv, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def available():
    out = []
    for s in SECTIONS:
        try:
            importlib.import_module(f"tools.bench.{s}")
            out.append(s)
        except ImportError:
            pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    p.add_argument("section", choices=SECTIONS + ("all",))
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke; < 2 minutes for all)")
    p.add_argument("--json", metavar="PATH", help="write/merge the JSON report here")
    args = p.parse_args(argv)
    sections = available() if args.section == "all" else [args.section]
    report = {}
    if args.json and os.path.exists(args.json):
        try:
            report = json.load(open(args.json))
        except ValueError:
            report = {}
    report["machine"] = machine()
    failed = []
    for s in sections:
        mod = importlib.import_module(f"tools.bench.{s}")
        t0 = time.monotonic()
        print(f"== {s} ==", flush=True)
        try:
            report[s] = mod.run(quick=args.quick)
        except Exception as e:  # noqa: BLE001 - report which section failed, keep the others
            failed.append(s)
            print(f"{s}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if hasattr(mod, "table"):
            print(mod.table(report[s]))
        else:
            print(json.dumps(report[s], indent=2))
        print(f"({s}: {time.monotonic() - t0:.1f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
