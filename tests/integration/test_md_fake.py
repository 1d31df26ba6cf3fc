"""The fake Coinbase itself, seen from a plain WebSocket client: the protocol rules it enforces, its
HTTP control commands and its command line."""
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import ROOT
from tools.fakecoinbase import FakeCoinbaseWS


@pytest.fixture
def fake():
    f = FakeCoinbaseWS(rate_hz=20, heartbeat_s=0.05, subscribe_timeout_s=0.3, ack_order="before").start()
    yield f
    f.stop()


def recv_json(ws, timeout=2.0):
    return json.loads(ws.recv(timeout=timeout))


def http(fake, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{fake.port}{path}", timeout=3) as r:
        return r.status, json.loads(r.read())


def test_subscribe_within_the_deadline_or_be_closed(fake):
    with connect(fake.url, open_timeout=3) as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=3)
        assert e.value.rcvd.code == 1008


def test_protocol_from_a_plain_client(fake):
    with connect(fake.url, open_timeout=3) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "heartbeat"}))      # wrong name
        assert recv_json(ws) == {"type": "error", "message": "authentication failure"}
        ws.send(json.dumps({"type": "subscribe", "channel": "user", "product_ids": []}))   # no JWT
        assert recv_json(ws)["message"] == "authentication failure"
        ws.send(json.dumps({"type": "subscribe", "product_ids": [], "channel": "heartbeats"}))
        ack = recv_json(ws)
        assert ack["channel"] == "subscriptions" and ack["sequence_num"] == 0 and ack["client_id"] == ""
        assert ack["events"] == [{"subscriptions": {"heartbeats": []}}]
        ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"}))
        seen, seqs = set(), []
        while len(seen) < 3 or len(seqs) < 6:
            f = recv_json(ws)
            seqs.append(f["sequence_num"])
            seen.add(f["channel"])
            if f["channel"] == "heartbeats":
                assert isinstance(f["events"][0]["heartbeat_counter"], int)
            if f["channel"] == "l2_data":
                assert {u["side"] for e in f["events"] for u in e["updates"]} <= {"bid", "offer"}
        assert seen == {"heartbeats", "subscriptions", "l2_data"}
        assert seqs == list(range(1, 1 + len(seqs)))          # one counter for every channel and ack
        # HTTP control on the same port: skip two numbers, then close with 1011
        assert http(fake, "/_fake/skip?n=2") == (200, {"connections": 1})
        nxt = recv_json(ws)["sequence_num"]
        while nxt == seqs[-1] + 1:            # frames numbered before the command was applied
            seqs.append(nxt)
            nxt = recv_json(ws)["sequence_num"]
        assert nxt == seqs[-1] + 3
        status, body = http(fake, "/_fake/state")
        assert status == 200 and body["connections"][-1]["subscriptions"] == {"heartbeats": [], "level2": ["BTC-USD"]}
        assert http(fake, "/_fake/close?code=1011") == (200, {"connections": 1})
        with pytest.raises(ConnectionClosed) as e:
            while True:
                ws.recv(timeout=3)
        assert e.value.rcvd.code == 1011
    assert fake.wait_for(lambda f: f.connections[0].closed) and fake.connections[0].close_code == 1011


def test_http_reject_and_unknown_command(fake):
    assert http(fake, "/_fake/reject?n=1") == (200, {"pending": 1})
    with pytest.raises(InvalidStatus) as e:
        connect(fake.url, open_timeout=3)
    assert e.value.response.status_code == 503 and fake.rejected == 1
    with connect(fake.url, open_timeout=3) as ws:           # the next one is served
        ws.send(json.dumps({"type": "subscribe", "channel": "heartbeats"}))
        assert recv_json(ws)["channel"] == "subscriptions"
    with pytest.raises(urllib.error.HTTPError) as e:
        http(fake, "/_fake/explode")
    assert e.value.code == 404 and "commands" in json.loads(e.value.read())


def _readline(proc, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"no line from the fake within {timeout} s (got {buf!r})")
        ch = os.read(proc.stdout.fileno(), 1)
        if not ch:
            raise AssertionError(f"fake exited: {proc.wait(1)} (got {buf!r})")
        buf += ch
    return buf.decode()


def test_command_line_serve_fault_and_sigterm():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tools.fakecoinbase", "--port", "0", "--rate-hz", "5",
                             "--log-level", "WARNING"], cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        line = _readline(proc, 15.0)
        assert line.startswith("fake Coinbase WebSocket on ws://127.0.0.1:")
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        with connect(f"ws://127.0.0.1:{port}", open_timeout=3) as ws:
            ws.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "ticker"}))
            recv_json(ws)
            out = subprocess.run([sys.executable, "-m", "tools.fakecoinbase", "fault", "state", "--port", str(port)],
                                 cwd=ROOT, env=env, capture_output=True, timeout=20, check=True)
            state = json.loads(out.stdout)
            assert state["connections"][0]["subscriptions"] == {"ticker": ["ETH-USD"]}
            subprocess.run([sys.executable, "-m", "tools.fakecoinbase", "fault", "drop", "--port", str(port)],
                           cwd=ROOT, env=env, capture_output=True, timeout=20, check=True)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
