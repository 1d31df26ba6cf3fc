"""The event listener as a real process speaking supervisord's protocol on its stdin/stdout, publishing
ProcessEvent on the bus."""
import select
import signal
import subprocess
import sys
import time

import proto
from proto import topics
from tests.conftest import ROOT, make_mesh


def read_exact(p, n, timeout=5.0):
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            raise AssertionError(f"listener wrote {buf!r}, expected {n} bytes")
        chunk = p.stdout.read1(n - len(buf))
        if not chunk:
            raise AssertionError(f"listener closed stdout after {buf!r}")
        buf += chunk
    return buf


def event(name, payload):
    body = payload.encode()
    return f"ver:3.0 server:supervisor serial:1 pool:supervisor poolserial:1 eventname:{name} len:{len(body)}\n".encode() + body


def start(short_tmp):
    mesh = make_mesh("tcp", short_tmp)
    conf = short_tmp / "mesh.toml"
    conf.write_text(f'[mesh]\ntransport = "tcp"\nbase_port = {mesh.base_port}\nstate_dir = "{mesh.state_dir}"\n'
                    f'heartbeat_s = 0.2\n')
    p = subprocess.Popen([sys.executable, "-m", "nodes.supervisor", "--conf", str(conf)], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return mesh, p


def test_listener_publishes_process_events(short_tmp, collector):
    mesh, p = start(short_tmp)
    try:
        bus = collector(mesh, ["supervisor"], [topics.NODE])
        bus.wait_for(lambda e: e.topic == topics.heartbeat("supervisor"))     # subscribed
        assert read_exact(p, 6) == b"READY\n"
        p.stdin.write(event("PROCESS_STATE_EXITED",
                            "processname:execution groupname:tickmesh from_state:RUNNING expected:0 pid:777"))
        p.stdin.flush()
        assert read_exact(p, 17) == b"RESULT 2\nOKREADY\n"
        ev = bus.wait_for(lambda e: e.topic == topics.NODE_PROCESS)
        assert ev.source == "supervisor"
        assert ev.msg == proto.ProcessEvent("execution", "tickmesh", "EXITED", 777, False,
                                            "from RUNNING, unexpected exit")
        p.stdin.write(event("PROCESS_STATE_RUNNING", "processname:execution groupname:tickmesh from_state:STARTING pid:778"))
        p.stdin.flush()
        assert read_exact(p, 17) == b"RESULT 2\nOKREADY\n"
        ev = bus.wait_for(lambda e: e.topic == topics.NODE_PROCESS)
        assert ev.msg.state == "RUNNING" and ev.msg.pid == 778
        # supervisord going away (EOF) stops the listener cleanly
        p.stdin.close()
        assert p.wait(3) == 0
        err = p.stderr.read().decode()
        assert "process tickmesh:execution EXITED pid=777" in err           # its log is on stderr
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_listener_stops_on_sigterm(short_tmp):
    _, p = start(short_tmp)
    try:
        assert read_exact(p, 6) == b"READY\n"
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(3) == 0
        assert time.monotonic() - t0 < 1.5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
