"""Start-up: ``python -m tools.bench startup [--quick]``: seconds from ``supervisorctl start
tickmesh:*`` to the first heartbeat of every node, with the Numba cache warm and cold.

The repository's ``supervisord.conf`` is copied into a temp directory (so ``%(here)s`` puts its
socket, logs and pid file there) with ``autostart=false`` on the seven node programs, and
supervisord is started with a private ``TICKMESH_CONF`` (tcp on free ports, the synthetic
market-data source, the metrics endpoint on a free port, state in the temp directory). Once its
control socket answers, a subscriber connected to every node's PUB endpoint starts listening for
``node.heartbeat.*``; the clock (wall time) starts when ``supervisorctl start tickmesh:*`` is run
and stops at the last node's first heartbeat (a node publishes one as soon as it is ready: sockets
bound, ``setup()`` done, for risk its Numba kernels loaded and warmed). A heartbeat the subscriber
missed (slow joiner) is dated from a later one (see ``Heartbeats``).

* ``cold_s``: ``NUMBA_CACHE_DIR`` is a new empty directory: the risk node compiles its kernels.
* ``warm_s``: the same directory again, now holding what the cold start compiled.

Each figure is the median of the runs (full: 3 of each, interleaved cold, warm; quick: 1).
"""
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from . import common

PROGRAMS = ("marketdata", "risk", "execution", "store", "strategy", "metrics", "alerts")
KEYS = ("warm_s", "cold_s")
BIN = Path(sys.executable).parent


def _conf_copy(tmp: Path) -> Path:
    from nodes.config import ROOT
    text = (ROOT / "supervisord.conf").read_text()
    out, section = [], None
    for line in text.splitlines():
        m = re.match(r"^\[(.+)\]\s*$", line)
        if m:
            section = m.group(1)
        if section and section.startswith("program:") and section[8:] in PROGRAMS \
                and line.strip() == "autostart=true":
            line = "autostart=false"
        out.append(line)
    path = tmp / "supervisord.conf"
    path.write_text("\n".join(out) + "\n")
    (tmp / "var" / "log").mkdir(parents=True, exist_ok=True)
    return path


class Heartbeats:
    """When each node published its first heartbeat (wall-clock ns), from a SUB socket in a thread.

    A subscriber cannot be sure to catch a node's very first heartbeat (it is published as soon as
    the node is ready, possibly before our connection and subscription reach the new PUB socket).
    Heartbeats are timer-driven from that first one (``every(heartbeat_s, first=0)``, without drift)
    and numbered (``seq`` per topic from 1), so the first one's time is the envelope time of the
    first heartbeat seen minus ``(seq - 1) x heartbeat_s`` (a late timer only makes it later)."""

    def __init__(self, mesh):
        self.hb_ns = int(mesh.heartbeat_s * 1e9)
        self.first = {}
        self.ctx = zmq.Context()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._th = threading.Thread(target=self._run, args=(mesh,), daemon=True)
        self._th.start()
        self._ready.wait(5)

    def _run(self, mesh):
        import proto
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"node.heartbeat.")
        s.setsockopt(zmq.RECONNECT_IVL, 20)          # connect soon after each node binds
        for n in PROGRAMS:
            s.connect(mesh.endpoint(n, "pub"))
        self._ready.set()
        while not self._stop.is_set():
            if s.poll(50):
                try:
                    env = proto.decode(s.recv())
                except proto.DecodeError:
                    continue
                if env.msg.node not in self.first:
                    self.first[env.msg.node] = env.ts_event - (env.seq - 1) * self.hb_ns
        s.close()

    def close(self):
        self._stop.set()
        self._th.join(2)
        self.ctx.term()


def one_start(numba_dir: Path, tmp: Path) -> float:
    from tools.netutil import free_base_port
    conf = common.write_conf(tmp, {
        "mesh": {"transport": "tcp", "base_port": free_base_port(), "state_dir": str(tmp / "state"),
                 "heartbeat_s": 1.0, "log_level": "INFO"},
        "marketdata": {"source": "synthetic"},
        "metrics": {"port": 0},
    })
    mesh = common.load_conf(conf).mesh
    sconf = _conf_copy(tmp)
    env = common.clean_env(conf, TICKMESH_PYTHON=sys.executable, NUMBA_CACHE_DIR=numba_dir)
    ctl = [str(BIN / "supervisorctl"), "-c", str(sconf)]
    r = subprocess.run([str(BIN / "supervisord"), "-c", str(sconf)], env=env, capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"supervisord did not start: {r.stdout}{r.stderr}")
    pidfile = tmp / "var" / "supervisord.pid"
    hb = None
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(ctl + ["pid"], env=env, capture_output=True, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("supervisord's control socket never answered")
            time.sleep(0.05)            # polling a process we do not control
        hb = Heartbeats(mesh)
        t0 = time.time_ns()
        start = subprocess.Popen(ctl + ["start", "tickmesh:*"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while any(p not in hb.first for p in PROGRAMS):
            if time.monotonic() > deadline:
                missing = [p for p in PROGRAMS if p not in hb.first]
                out = start.communicate(timeout=30)[0] if start.poll() is not None else ""
                logs = ""
                for p in missing:               # what the silent node said, to tell why
                    for name in (f"{p}.log", f"{p}.err.log", "supervisord.log"):
                        try:
                            logs += f"\n--- {name} (tail) ---\n" + \
                                (tmp / "var" / "log" / name).read_text(errors="replace")[-3000:]
                        except OSError as e:
                            logs += f"\n--- {name}: {e} ---"
                raise RuntimeError(f"startup: no heartbeat from {missing} within 120 s {out}{logs}")
            hb._stop.wait(0.01)
        secs = (max(hb.first[p] for p in PROGRAMS) - t0) / 1e9
        order = sorted(PROGRAMS, key=lambda p: hb.first[p])
        print("startup: first heartbeats after (s): "
              + ", ".join(f"{p} {(hb.first[p] - t0) / 1e9:.2f}" for p in order), flush=True)
        start.communicate(timeout=60)
        return secs
    finally:
        if hb is not None:
            hb.close()
        pid = None
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pass
        subprocess.run(ctl + ["shutdown"], env=env, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while pid is not None and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)


def run(quick: bool = False) -> dict:
    rounds = common.size(quick, 3, 1, 1)
    colds, warms = [], []
    for i in range(rounds):
        tmp = common.tmpdir("tmu-")
        try:
            numba = tmp / "numba-cache"
            numba.mkdir()
            colds.append(one_start(numba, tmp / "cold"))
            warms.append(one_start(numba, tmp / "warm"))
            print(f"startup: round {i + 1}: cold {colds[-1]:.2f} s, warm {warms[-1]:.2f} s "
                  f"(Numba cache {sum(1 for _ in numba.rglob('*.nbc'))} compiled kernels)", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if rounds > 1:
        print(f"startup: spread over {rounds} rounds: cold {common.spread(colds)} s, warm {common.spread(warms)} s")
    return {"warm_s": round(sorted(warms)[len(warms) // 2], 2), "cold_s": round(sorted(colds)[len(colds) // 2], 2)}


def table(sec: dict) -> str:
    return (f"supervisorctl start -> every node's first heartbeat: warm Numba cache {sec['warm_s']:.2f} s, "
            f"cold {sec['cold_s']:.2f} s")


if __name__ == "__main__":     # pragma: no cover - convenience
    os.execv(sys.executable, [sys.executable, "-m", "tools.bench", "startup"] + sys.argv[1:])
