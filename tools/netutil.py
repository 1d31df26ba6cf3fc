"""Free loopback port ranges, for a second mesh on this machine (and for tests and benchmarks).

    tickmesh netutil free-base-port     a mesh.base_port whose 20 ports are free and below the
                                        kernel's ephemeral range (e.g. for TICKMESH_BASE_PORT)
    tickmesh netutil free-port          one free port outside it (e.g. for metrics.port)
"""
import argparse
import random
import socket
import sys

from nodes.config import NODES, ephemeral_clash, ephemeral_range


def ports_free(base: int, n: int, host: str = "127.0.0.1") -> bool:
    for p in range(base, base + n):
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, p))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_base_port(host: str = "127.0.0.1") -> int:
    """A random base port with every node's two ports free (tests may run in parallel), below the
    kernel's ephemeral port range: a port inside it can be taken at any moment as the source port
    of some outgoing connection (another node's SUB connecting, say), and the node that owns it
    then cannot bind (seen: 'cannot bind tcp://127.0.0.1:43662: Address already in use')."""
    n = 2 * len(NODES)
    top = max((ephemeral_range() or (32768, 60999))[0], 12000 + n)
    for _ in range(200):
        base = random.randrange(10000, top - n, 2)
        if ports_free(base, n, host) and not ephemeral_clash(base, base + n - 1):
            return base
    raise RuntimeError("no free port range below the ephemeral ports")


def free_port(host: str = "127.0.0.1") -> int:
    """One free port, below the ephemeral range (see free_base_port)."""
    base = free_base_port(host)
    return base + 2 * len(NODES) - 1       # the range is free; take its last port


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tickmesh netutil", description=__doc__.strip().splitlines()[0])
    p.add_argument("what", choices=("free-base-port", "free-port"),
                   help="free-base-port: a mesh.base_port; free-port: one port (metrics.port)")
    p.add_argument("--host", default="127.0.0.1", help="address to test (default 127.0.0.1)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        port = free_base_port(args.host) if args.what == "free-base-port" else free_port(args.host)
    except (RuntimeError, OSError) as e:
        print(f"tickmesh netutil: {e}", file=sys.stderr)
        return 1
    print(port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
