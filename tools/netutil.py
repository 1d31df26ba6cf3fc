"""Small network helpers shared by tests and benchmarks: free loopback port ranges."""
import random
import socket

from nodes.config import NODES


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
    """A random base port with every node's two ports free (tests may run in parallel)."""
    n = 2 * len(NODES)
    for _ in range(200):
        base = random.randrange(20000, 60000 - n, 2)
        if ports_free(base, n, host):
            return base
    raise RuntimeError("no free port range")


def free_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p
