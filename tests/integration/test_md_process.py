"""The SDK's credential faults, and the node as a process (SIGTERM) against the fake Coinbase."""
import os
import re
import signal
import subprocess
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nodes.config import Secret
from nodes.marketdata import MarketDataConfig, MarketDataNode
from tests.conftest import ROOT, free_base_port, make_mesh
from tools.fakecoinbase import FakeCoinbaseWS

KEY_NAME = "organizations/org-1/apiKeys/key-1"


def test_sdk_takes_credentials_from_secrets_and_signs_every_subscribe(ctx, short_tmp, collector):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    with FakeCoinbaseWS(rate_hz=20, heartbeat_s=0.1) as fake:
        mesh = make_mesh("inproc", short_tmp, products=("BTC-USD",))
        col = collector(mesh, ["marketdata"], ["md.status."])
        node = MarketDataNode(mesh, MarketDataConfig(ws_url=fake.url, use_official_sdk=True, stale_timeout_s=2.0),
                              context=ctx, secrets={"COINBASE_API_KEY": Secret(KEY_NAME),
                                                    "COINBASE_API_SECRET": Secret(pem)})
        node.start()
        try:
            col.wait_for(lambda e: e.msg.healthy)
            conn = fake.wait_for(lambda f: f.connections[-1] if len(f.connections[-1].channels()) == 4 else None)
            for msg in conn.received:
                claims = jwt.decode(msg["jwt"], key.public_key(), algorithms=["ES256"])
                assert claims["sub"] == KEY_NAME and claims["iss"] == "cdp" and "uri" not in claims
                assert claims["exp"] - claims["nbf"] == 120
                assert jwt.get_unverified_header(msg["jwt"])["kid"] == KEY_NAME
            assert node._q_feed("")["source"]["authenticated"] is True
        finally:
            node.stop()


def test_node_process_with_only_an_api_key_in_the_environment_then_sigterm(short_tmp):
    """Import-time env defaults would make every WSClient() raise "Only api_key provided"; the
    node passes explicit credentials (none here: public data) and runs. SIGTERM stops it."""
    with FakeCoinbaseWS(rate_hz=20, heartbeat_s=0.2) as fake:
        conf = short_tmp / "mesh.toml"
        conf.write_text(f'[mesh]\nbase_port = {free_base_port()}\nstate_dir = "{short_tmp}/state"\n'
                        f'products = ["BTC-USD", "ETH-USD"]\n[marketdata]\nstale_timeout_s = 2.0\n')
        env = dict(os.environ, PYTHONPATH=str(ROOT), COINBASE_WS_URL=fake.url, USE_OFFICIAL_SDK="true",
                   COINBASE_API_KEY=KEY_NAME, TICKMESH_CONF=str(conf))
        env.pop("COINBASE_API_SECRET", None)
        proc = subprocess.Popen([sys.executable, "-m", "nodes.marketdata", "--log-level", "INFO"], cwd=short_tmp,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            fake.wait_for(lambda f: f.connections and len(f.connections[-1].channels()) == 4, 20.0,
                          what="the node process subscribed")
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=10)[0].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == 0, out
        assert "only one of COINBASE_API_KEY / COINBASE_API_SECRET is set" in out
        assert KEY_NAME not in out                       # the key is never logged
        took = float(re.search(r"stop took ([0-9.]+) s", out).group(1))
        assert took < 1.0, out
