"""Helpers shared by the mesh benchmarks (tick_to_trade, replay, store, startup): sizes, a private
config file per run, node processes, statistics.

``TICKMESH_BENCH_TINY=1`` shrinks every size of these sections below ``--quick`` (the test suite's
smoke run: it checks that the benchmarks run and report every key, never their figures).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodes.config import ROOT

TINY_ENV = "TICKMESH_BENCH_TINY"


def tiny() -> bool:
    return os.environ.get(TINY_ENV, "") not in ("", "0")


def size(quick: bool, full, quick_value, tiny_value):
    """The size for this run: full, ``--quick``, or tiny (the test suite's smoke run)."""
    if tiny():
        return tiny_value
    return quick_value if quick else full


def quiet_logs():
    """Nodes running in this process log errors only (to stdout), unless the caller set logging up."""
    import logging
    if not logging.getLogger().handlers:
        from nodes import log
        log.setup("ERROR")


def tmpdir(prefix: str) -> Path:
    """A short private directory (ipc paths must stay under ~100 characters)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def rmtree(p):
    shutil.rmtree(p, ignore_errors=True)


# --- config files ---------------------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))       # Decimal and friends: their exact string


def toml(sections: dict) -> str:
    """``{"mesh": {...}, "strategy.params.x": {...}}`` -> TOML text (flat tables only)."""
    out = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        for k, v in table.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


def write_conf(directory: Path, sections: dict) -> Path:
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "mesh.toml"
    path.write_text(toml(sections))
    return path


def clean_env(conf: Path = None, **extra) -> dict:
    """The environment of a node process: no TICKMESH_/COINBASE_/SLACK_/TEAMS_ overrides leaking in
    from the caller, TICKMESH_CONF pointing at the run's private config."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TICKMESH_", "COINBASE_", "SLACK_", "TEAMS_", "USE_OFFICIAL_SDK"))}
    if conf is not None:
        env["TICKMESH_CONF"] = str(conf)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def load_conf(path: Path):
    from nodes import config
    return config.load(path, env={}, read_dotenv=False)


# --- node processes -------------------------------------------------------------------------------

class Procs:
    """Node processes (``python -m nodes.NAME``) with their logs in ``log_dir``."""

    def __init__(self, env: dict, log_dir: Path):
        self.env = env
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs = {}

    def start(self, name: str, log_level: str = "WARNING", command: list = None):
        """``python -m nodes.NAME``, or ``python -m`` + ``command`` (a module and its arguments)."""
        log = open(self.log_dir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *(command or [f"nodes.{name}"]), "--log-level", log_level], env=self.env,
            cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.procs[name]

    def dead(self) -> list:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, order=None, timeout: float = 5.0) -> dict:
        """SIGTERM in ``order`` (default: reverse start order), wait, SIGKILL what is left.
        Returns name -> exit status."""
        names = list(order or reversed(list(self.procs)))
        for n in names:
            p = self.procs[n]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        out = {}
        deadline = time.monotonic() + timeout
        for n in names:
            p = self.procs[n]
            try:
                out[n] = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out[n] = p.wait(5)
        return out

    def tail(self, name: str, n: int = 2000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --- statistics -----------------------------------------------------------------------------------

def pct(sorted_xs, p: float):
    """The p-quantile (0..1) of an ascending list (nearest rank, like tools.bench.bus)."""
    if not sorted_xs:
        return float("nan")
    return sorted_xs[min(len(sorted_xs) - 1, int(len(sorted_xs) * p))]


def spread(xs) -> str:
    xs = sorted(xs)
    if not xs:
        return "-"
    return f"{xs[0]:.3g}..{xs[-1]:.3g}" if len(xs) > 1 else f"{xs[0]:.3g}"


class confined:
    """``with confined(cpus):`` the calling thread, and every thread it starts inside, runs on
    ``cpus`` (None: unchanged); its own affinity is restored on exit. The offline-mode sections
    measure the mesh and their raw baseline inside the same one, as ``python -m nodes.offline``
    runs (``nodes.offline.default_cpus``)."""

    def __init__(self, cpus):
        self.cpus = cpus
        self._old = None

    def __enter__(self):
        if self.cpus:
            from nodes.config import pin_cpus
            self._old = pin_cpus(self.cpus, "bench cpus")
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            os.sched_setaffinity(0, self._old)
        return False
