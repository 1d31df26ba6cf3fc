"""CurveZMQ for tcp sockets (``[mesh] curve = true``).

Key layout under ``mesh.keys_dir`` (made by ``tickmesh keys generate``)::

    public/<name>.key            public keys: nodes (marketdata, risk, ...) and tools (ctl, tap, ...)
    private/<name>.key_secret    key pairs, mode 0600, directory 0700

Server sockets (every PUB and ROUTER) use their node's key pair and a ZAP authenticator that admits
only the client public keys found in ``public/``: a client with any other key can neither
subscribe nor send requests. Client sockets (SUB, DEALER) use their own pair and the public key of
the node they connect to, set before each connect.
"""
import os
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .config import ROOT, ConfigError

TOOLS = ("ctl", "tap", "bench", "tests")

_auth_lock = threading.Lock()
_auths: dict = {}        # context -> [authenticator, refcount]


def keys_dir(mesh) -> Path:
    p = Path(mesh.keys_dir)
    return p if p.is_absolute() else ROOT / p


def _load_pair(mesh, name):
    d = keys_dir(mesh)
    path = d / "private" / f"{name}.key_secret"
    if not path.exists():
        raise ConfigError(f"mesh.curve: no key pair for {name!r} at {path} (run: tickmesh keys generate)")
    return zmq.auth.load_certificate(str(path))


def _load_public(mesh, name):
    path = keys_dir(mesh) / "public" / f"{name}.key"
    if not path.exists():
        raise ConfigError(f"mesh.curve: no public key for {name!r} at {path} (run: tickmesh keys generate)")
    return zmq.auth.load_certificate(str(path))[0]


def _start_auth(ctx, mesh):
    with _auth_lock:
        entry = _auths.get(ctx)
        if entry is None:
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=str(keys_dir(mesh) / "public"))
            entry = _auths[ctx] = [auth, 0]
        entry[1] += 1


def release(ctx):
    """Drop one server socket's hold on the context's authenticator (stopped at zero)."""
    with _auth_lock:
        entry = _auths.get(ctx)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].stop()
            del _auths[ctx]


def apply(sock, mesh, name: str, server: bool, context=None, server_node: str = None):
    """Configure CURVE on ``sock``: as a server for node ``name``, or as client ``name`` of
    ``server_node`` (set again before every connect to a different server)."""
    pub, secret = _load_pair(mesh, name)
    sock.curve_publickey = pub
    sock.curve_secretkey = secret
    if server:
        _start_auth(context or zmq.Context.instance(), mesh)
        sock.curve_server = True
    elif server_node is not None:
        sock.curve_serverkey = _load_public(mesh, server_node)


def generate(directory: Path, names) -> list:
    """Create key pairs for ``names`` (existing ones are kept). Returns the names created."""
    pub_dir, priv_dir = directory / "public", directory / "private"
    pub_dir.mkdir(parents=True, exist_ok=True)
    priv_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(priv_dir, 0o700)
    made = []
    for n in names:
        if (priv_dir / f"{n}.key_secret").exists():
            continue
        public, secret = zmq.auth.create_certificates(str(priv_dir), n)
        os.replace(public, pub_dir / f"{n}.key")
        os.chmod(secret, 0o600)
        made.append(n)
    return made
