"""``python -m tools.fakecoinbase``: run the fake Coinbase exchange on 127.0.0.1, or send it a fault.

    python -m tools.fakecoinbase [--port 8765] [--seed 1] [--products BTC-USD,ETH-USD,SOL-USD]
                                 [--rate-hz 10] [--heartbeat-s 1] [--subscribe-timeout-s 5]
                                 [--ack-order random|before|after]
    python -m tools.fakecoinbase fault KIND [--port 8765] [--n N] [--code C] [--conn ID] [--text T]
        KIND: skip | silence | resume | close | drop | garbage | send | reject | state

Point the mesh at it with ``COINBASE_WS_URL=ws://127.0.0.1:8765`` (both clients accept ``ws://``).
Faults go over plain HTTP on the same port: ``curl 'http://127.0.0.1:8765/_fake/close?code=1011'``.
"""
import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_PORT = 8765
FAULTS = ("skip", "silence", "resume", "close", "drop", "garbage", "send", "reject", "state")


def _fault(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fakecoinbase fault",
                                description="send a fault command to a running fake Coinbase")
    p.add_argument("kind", choices=FAULTS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--n", type=int, help="skip: sequence numbers to skip; reject: handshakes to refuse")
    p.add_argument("--code", type=int, help="close: the close code (default 1011)")
    p.add_argument("--conn", type=int, help="only this connection id (default: all open ones)")
    p.add_argument("--text", help="send: the frame to send")
    a = p.parse_args(argv)
    q = {k: v for k, v in (("n", a.n), ("code", a.code), ("conn", a.conn), ("text", a.text)) if v is not None}
    url = f"http://{a.host}:{a.port}/_fake/{a.kind}" + (f"?{urllib.parse.urlencode(q)}" if q else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        print(f"fakecoinbase: {e.code}: {e.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fakecoinbase: cannot reach {url}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fault":
        return _fault(argv[1:])
    from nodes import log as _log
    from .ws import DEFAULT_PRODUCTS, FakeCoinbaseWS
    p = argparse.ArgumentParser(prog="python -m tools.fakecoinbase", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (keep it on loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="WebSocket port (0: any free port)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--products", default=",".join(DEFAULT_PRODUCTS),
                   help="products simulated from the start (any other subscribed product is added)")
    p.add_argument("--rate-hz", type=float, default=10.0, help="market steps per second")
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument("--subscribe-timeout-s", type=float, default=5.0, help="Coinbase's subscribe-within rule")
    p.add_argument("--ack-order", default="random", choices=("random", "before", "after"),
                   help="subscriptions ack before or after the snapshot")
    p.add_argument("--log-level", default="INFO")
    # --- REST + user channel (tools/fakecoinbase/rest.py, user.py; for the execution node) ---
    p.add_argument("--rest", action="store_true", help="also serve the HTTPS REST API and the user channel")
    p.add_argument("--rest-port", type=int, default=8443, help="with --rest: HTTPS port")
    p.add_argument("--user-port", type=int, default=8766, help="with --rest: user channel port")
    a = p.parse_args(argv)
    _log.setup(a.log_level)
    products = [x.strip() for x in a.products.split(",") if x.strip()]
    fake = FakeCoinbaseWS(a.host, a.port, seed=a.seed, products=products, rate_hz=a.rate_hz,
                          heartbeat_s=a.heartbeat_s, subscribe_timeout_s=a.subscribe_timeout_s,
                          ack_order=a.ack_order)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        fake.start()
    except (RuntimeError, OSError) as e:
        print(f"fakecoinbase: {e}", file=sys.stderr)
        return 1
    print(f"fake Coinbase WebSocket on {fake.url}  (COINBASE_WS_URL={fake.url}); "
          f"faults: http://{a.host}:{fake.port}/_fake/<skip|silence|resume|close|drop|garbage|send|reject|state>",
          flush=True)
    rest = None
    try:
        if a.rest:   # REST + user channel, following the WebSocket fake's market (tools.fakecoinbase.rest)
            from .rest import serve
            rest = serve(a.host, a.rest_port, a.user_port, products, seed=a.seed, market=fake.market)
            print(rest.describe(), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if rest is not None:
            rest.stop()
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
