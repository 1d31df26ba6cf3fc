"""Configuration: one frozen, keyword-only object per section, loaded once from TOML.

* ``conf/mesh.toml`` (or the file named by ``--conf`` / ``TICKMESH_CONF``) holds every non-secret key.
* ``.env`` in the checkout (optional; ``TICKMESH_DOTENV`` names another file, ``TICKMESH_DOTENV=``
  none) and the process environment override documented keys (see ``ENV_KEYS`` and the generic
  ``TICKMESH_<SECTION>__<KEY>`` form, e.g. ``TICKMESH_RISK__MAX_ORDER_NOTIONAL=5000``); the real
  environment wins over ``.env``.
* Secrets come from ``secrets.env`` beside the config file (``conf/secrets.env`` for the default
  config; ``TICKMESH_SECRETS`` names another file, ``TICKMESH_SECRETS=`` none) and from the
  environment, which wins. They are wrapped in ``Secret`` so they never show in a log line or a repr.
  ``Config.describe()`` says which files were read (``tickmesh config check`` prints it).

Unknown sections or keys and wrong types stop the node at start with a ``ConfigError`` naming the
key (``risk.max_order_notional: expected a decimal, got list``); ``check()`` validates everything a
node would at build time, for ``tickmesh config check``.
"""
import dataclasses
import difflib
import importlib
import os
import tomllib
import typing
from decimal import Decimal, InvalidOperation
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF = ROOT / "conf" / "mesh.toml"


class ConfigError(Exception):
    """A bad configuration: the message names the key."""


class Secret:
    """A secret string that never shows in logs or reprs. ``.reveal()`` gives the value."""

    __slots__ = ("_v",)

    def __init__(self, value: str):
        self._v = value

    def reveal(self) -> str:
        return self._v

    def __bool__(self):
        return bool(self._v)

    def __repr__(self):
        return "Secret('***')" if self._v else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Secret) and other._v == self._v

    def __hash__(self):
        return hash(self._v)


# Node slots: each node's PUB port is base_port + 2*slot, its REP port base_port + 2*slot + 1, in
# the one registry of the mesh's parts (nodes/registry.py).
from .registry import NODES, SECTIONS as _NODE_SECTIONS  # noqa: E402
TRANSPORTS = ("tcp", "ipc", "inproc")



@dataclasses.dataclass(frozen=True, kw_only=True)
class ProductSpec:
    """``[mesh.product_specs.<PRODUCT>]``: what the venue accepts (Coinbase product fields)."""
    base_min_size: Decimal = Decimal("0.00000001")
    base_max_size: Decimal = Decimal("10000")
    base_increment: Decimal = Decimal("0.00000001")
    quote_increment: Decimal = Decimal("0.01")      # price tick
    min_notional: Decimal = Decimal("1")            # quote_min_size / min_market_funds


DEFAULT_SPECS = {
    "BTC-USD": ProductSpec(),
    "ETH-USD": ProductSpec(),
    "SOL-USD": ProductSpec(base_increment=Decimal("0.001"), base_min_size=Decimal("0.001")),
}


def _ranges(text: str) -> set:
    out = set()
    for part in text.replace(",", " ").split():
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def ephemeral_range():
    """(low, high) of the kernel's ephemeral port range (Linux:
    /proc/sys/net/ipv4/ip_local_port_range), or None when the kernel does not say."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return lo, hi


def ephemeral_clash(first: int, last: int):
    """(low, high, [ports]) when ports first..last lie in the kernel's ephemeral port range and
    are not reserved (ip_local_reserved_ports); None when they do not, or when the kernel does
    not say."""
    rng = ephemeral_range()
    if rng is None:
        return None
    lo, hi = rng
    try:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            reserved = _ranges(f.read())
    except (OSError, ValueError):
        reserved = set()
    ports = [p for p in range(first, last + 1) if lo <= p <= hi and p not in reserved]
    return (lo, hi, ports) if ports else None


def pin_cpus(cpus, key: str) -> set:
    """Confine the calling thread, and every thread it starts afterwards, to ``cpus``; returns
    the set it had, for ``os.sched_setaffinity(0, old)`` to undo it. A cpu this machine does not
    offer is a ConfigError naming ``key``."""
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot pin to cpus {sorted(cpus)}: {getattr(e, 'strerror', None) or e} "
                          f"(this process may use cpus {sorted(old)})") from None
    return old


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """``[mesh]``: the bus shared by every node."""
    transport: str = "tcp"               # tcp | ipc | inproc
    host: str = "127.0.0.1"              # tcp bind/connect address (loopback by default)
    hosts: dict[str, str] = dataclasses.field(default_factory=dict)   # per-node host override
    base_port: int = 7100
    ipc_dir: str = "/tmp/tickmesh"
    heartbeat_s: float = 1.0
    hwm: int = 100_000                   # send/receive high-water marks (messages)
    pub_linger_ms: int = 500             # how long a stopping PUB may flush its tail
    request_timeout_ms: int = 1000       # default deadline of request clients
    products: tuple[str, ...] = ("BTC-USD", "ETH-USD")
    state_dir: str = "var"               # journals, kill-switch state, store files (relative: to the checkout)
    log_level: str = "INFO"
    curve: bool = False                  # CurveZMQ on tcp (nodes/security.py; keys in keys_dir)
    keys_dir: str = "conf/keys"          # public/secret keys when curve = true
    cpu_affinity: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # node -> cpus
    product_specs: dict[str, ProductSpec] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPECS))

    def spec(self, product: str) -> ProductSpec:
        """The product's spec; a product with none configured is refused by risk and execution."""
        return self.product_specs.get(product)

    def __post_init__(self):
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"mesh.transport: must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if not (1024 <= self.base_port <= 65535 - 2 * len(NODES)):
            raise ConfigError(f"mesh.base_port: out of range: {self.base_port}")
        if self.transport == "tcp":
            first, last = self.tcp_ports()[0], self.tcp_ports()[-1]
            clash = ephemeral_clash(first, last)
            if clash:
                lo, hi, ports = clash
                raise ConfigError(
                    f"mesh.base_port: ports {first}-{last} overlap the "
                    f"kernel's ephemeral range {lo}-{hi} (net.ipv4.ip_local_port_range), so any outgoing "
                    f"connection may take one of them first and the node that owns it cannot bind "
                    f"(e.g. port {ports[0]}); choose a base_port outside it, or reserve the mesh ports with "
                    f"net.ipv4.ip_local_reserved_ports")
        for n in self.hosts:
            if n not in NODES:
                raise ConfigError(f"mesh.hosts.{n}: unknown node (known: {', '.join(NODES)})")
        if self.heartbeat_s <= 0:
            raise ConfigError("mesh.heartbeat_s: must be > 0")
        for n, cpus in self.cpu_affinity.items():
            if n not in NODES:
                raise ConfigError(f"mesh.cpu_affinity.{n}: unknown node (known: {', '.join(NODES)})")
            if not cpus or any(type(c) is not int or c < 0 for c in cpus):
                raise ConfigError(f"mesh.cpu_affinity.{n}: expected a non-empty list of cpu numbers, got {cpus!r}")

    # --- endpoints: derived here, never hard-coded in nodes -----------------------------------
    def tcp_ports(self) -> range:
        """The ports the mesh binds over tcp: two per node slot from ``base_port``."""
        return range(self.base_port, self.base_port + 2 * len(NODES))

    def endpoint(self, node: str, kind: str, bind: bool = False) -> str:
        if node not in NODES:
            raise ConfigError(f"unknown node {node!r}")
        if kind not in ("pub", "rep"):
            raise ValueError(kind)
        if self.transport == "inproc":
            return f"inproc://tickmesh.{node}.{kind}"
        if self.transport == "ipc":
            return f"ipc://{self.ipc_path()}/{node}.{kind}"
        port = self.base_port + 2 * NODES.index(node) + (1 if kind == "rep" else 0)
        host = self.hosts.get(node, self.host)
        return f"tcp://{host}:{port}"

    def ipc_path(self) -> str:
        p = Path(self.ipc_dir)
        return str(p if p.is_absolute() else ROOT / p)

    def state_path(self, *parts) -> Path:
        p = Path(self.state_dir)
        return (p if p.is_absolute() else ROOT / p).joinpath(*parts)


# --- sections -------------------------------------------------------------------------------------
# Each node's section class lives in its own package (``nodes/<name>/config.py``), named here so the
# loader can reject unknown sections without importing every node.
SECTIONS = {"mesh": "nodes.config:MeshConfig", **_NODE_SECTIONS}
# ([security] allow_any_known_key was accepted and never read: CurveZMQ is mesh.curve and
# mesh.keys_dir, and the authenticator always admits exactly the public keys in keys_dir/public.)


# Documented environment names -> (section, key)
ENV_KEYS = {
    "COINBASE_WS_URL": ("marketdata", "ws_url"),
    "USE_OFFICIAL_SDK": ("marketdata", "use_official_sdk"),
    "TICKMESH_TRANSPORT": ("mesh", "transport"),
    "TICKMESH_BASE_PORT": ("mesh", "base_port"),
    "TICKMESH_IPC_DIR": ("mesh", "ipc_dir"),
    "TICKMESH_STATE_DIR": ("mesh", "state_dir"),
    "TICKMESH_LOG_LEVEL": ("mesh", "log_level"),
    "TICKMESH_LIVE_TRADING": ("execution", "live_trading"),
}
SECRET_NAMES = ("COINBASE_API_KEY", "COINBASE_API_SECRET", "SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN",
                "SLACK_CHANNEL", "TEAMS_WEBHOOK_URL", "TICKMESH_LIVE")
# Environment names that steer the loader itself (not keys of a section).
LOADER_ENV = ("TICKMESH_CONF", "TICKMESH_DOTENV", "TICKMESH_SECRETS", "TICKMESH_PYTHON")


_LIGHT: dict = {}


def section_class(name: str, light: bool = False):
    """The section's config class. ``light``: loaded from its file alone, without importing the
    node's package (numba, numpy, HTTP clients: seconds on a busy machine), for a check that must
    finish before anything slow; every section's config module imports only ``nodes.config``."""
    spec = SECTIONS.get(name)
    if spec is None:
        raise ConfigError(f"{name}: unknown section{_did_you_mean(name, SECTIONS)}")
    mod, _, attr = spec.partition(":")
    if light and mod != __name__:
        m = _LIGHT.get(mod)
        if m is None:
            from importlib import util as _util
            path = ROOT.joinpath(*mod.split(".")).with_suffix(".py")
            spec_ = _util.spec_from_file_location(f"_tickmesh_light.{mod}", path)
            m = _util.module_from_spec(spec_)
            spec_.loader.exec_module(m)
            _LIGHT[mod] = m
        return getattr(m, attr)
    return getattr(importlib.import_module(mod), attr)


def _did_you_mean(name: str, known) -> str:
    """`` (did you mean x?)`` for a near miss, else `` (known: a, b, ...)``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(sorted(known))})"


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
            Decimal: "a decimal"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert(tp, value, key: str):
    """Check/convert one TOML value against a type annotation. Raises ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        tp = [a for a in args if a is not type(None)][0]
        return convert(tp, value, key)
    if tp is bool:
        if type(value) is bool:
            return value
    elif tp is int:
        if type(value) is int:
            return value
    elif tp is float:
        if type(value) in (int, float):
            return float(value)
    elif tp is str:
        if type(value) is str:
            return value
    elif tp is Decimal:
        if type(value) in (int, float, str):
            try:
                d = Decimal(str(value))
            except InvalidOperation:
                raise ConfigError(f"{key}: not a decimal: {value!r}") from None
            if not d.is_finite():
                raise ConfigError(f"{key}: must be finite, got {value!r}")
            return d
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else typing.Any
            vals = [convert(inner, v, f"{key}[{i}]") if inner is not typing.Any else v
                    for i, v in enumerate(value)]
            return tuple(vals) if origin is tuple else vals
    elif origin is dict:
        if isinstance(value, dict):
            kt, vt = args
            return {str(k): convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build(tp, value, key)
    elif tp is typing.Any:
        return value
    else:
        raise ConfigError(f"{key}: unsupported type {tp!r}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.60}")


def _parse_env(tp, s: str, key: str):
    """An environment string -> the value TOML would have given (``build`` then converts it, once:
    a Decimal key gets the string, as from TOML)."""
    import json
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if s == "" and type(None) in typing.get_args(tp):
            return None
        return _parse_env([a for a in typing.get_args(tp) if a is not type(None)][0], s, key)
    if tp is bool:
        low = s.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {s!r}")
    if tp is int:
        try:
            return int(s)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {s!r}") from None
    if tp is float:
        try:
            return float(s)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {s!r}") from None
    if origin in (tuple, list, dict):
        s = s.strip()
        if s.startswith(("[", "{")):
            try:
                return json.loads(s)
            except ValueError:
                raise ConfigError(f"{key}: not valid JSON: {s!r}") from None
        if origin is dict:
            raise ConfigError(f"{key}: expected a JSON object")
        return [p.strip() for p in s.split(",") if p.strip()]
    return s


def build(cls, data: dict, prefix: str):
    """Build a frozen config dataclass from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key{_did_you_mean(unknown[0], names)}")
    kwargs = {k: convert(hints[k], v, f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # a nested section's own checks may name the key without its table path: add it
        msg = str(e)
        if "." in prefix and not msg.startswith(prefix):
            raise ConfigError(f"{prefix}.{msg}") from None
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}: {e}") from None


def read_env_file(path: Path) -> dict:
    """``KEY=value`` lines; ``#`` comments; optional quotes. Missing file: empty."""
    out = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:]
        k, sep, v = line.partition("=")
        if not sep or not k.strip().isidentifier():
            raise ConfigError(f"{path.name}:{n}: expected KEY=value")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


class Config:
    """The whole loaded configuration: ``.mesh``, ``.section(name)``, ``.secrets``; ``.sources``
    says which files and environment names it came from."""

    def __init__(self, sections: dict, secrets: dict, path: Path, sources: dict = None, light: bool = False):
        self._light = light
        self._sections = sections
        self.secrets = secrets
        self.path = path
        self.sources = sources or {"config": str(path), "dotenv": None, "secrets_file": None,
                                   "secrets_found": False, "env_overrides": {}}

    @property
    def mesh(self) -> MeshConfig:
        return self._sections["mesh"]

    def section(self, name: str):
        """The section's frozen config (defaults when absent); None for a slot with no section."""
        if name not in SECTIONS:
            return None
        if name not in self._sections:
            self._sections[name] = build(section_class(name, self._light), {}, name)
        return self._sections[name]

    def secret(self, name: str) -> Secret:
        return self.secrets.get(name, Secret(""))

    def replace(self, name: str, **changes) -> "Config":
        """A copy with one section's keys changed (tests, offline mode)."""
        secs = dict(self._sections)
        secs[name] = dataclasses.replace(self.section(name), **changes)
        return Config(secs, self.secrets, self.path, self.sources, self._light)

    def describe(self) -> str:
        """One line for a start-up log: the files read and the names of the secrets set (never
        their values)."""
        s = self.sources
        sec = s["secrets_file"]
        if sec is None:
            sec_text = "no secrets file (TICKMESH_SECRETS is empty)"
        else:
            sec_text = f"secrets {sec}" + ("" if s["secrets_found"] else " (not found)")
        names = sorted(k for k, v in self.secrets.items() if v)
        env = s["env_overrides"]
        return (f"config {s['config']}; .env {s['dotenv'] or 'not read'}; {sec_text}; "
                f"secrets set: {', '.join(names) or 'none'}; "
                f"environment overrides: {', '.join(f'{k} ({v})' for k, v in env.items()) or 'none'}")

    def __repr__(self):
        return f"Config(path={str(self.path)!r}, sections={sorted(self._sections)})"


def dotenv_path(env) -> Path:
    """The ``.env`` file to read: ``TICKMESH_DOTENV`` (from ``env``, else the process environment,
    so a test run can switch it off for every load), default ``<checkout>/.env``; None when empty."""
    v = env.get("TICKMESH_DOTENV", os.environ.get("TICKMESH_DOTENV"))
    if v is None:
        return ROOT / ".env"
    return Path(v) if v.strip() else None


def secrets_path(conf_path: Path, env) -> Path:
    """The secrets file: ``TICKMESH_SECRETS`` if set (empty: none, None returned), else
    ``secrets.env`` in the config file's directory (``conf/secrets.env`` for ``conf/mesh.toml``)."""
    v = env.get("TICKMESH_SECRETS")
    if v is None:
        return Path(conf_path).parent / "secrets.env"
    return Path(v) if v.strip() else None


def load_secrets(conf_path: Path, env) -> tuple:
    """(name -> Secret, the file looked at or None, whether it existed). The environment wins."""
    path = secrets_path(conf_path, env)
    secrets = {}
    found = path is not None and path.exists()
    if found:
        for k, v in read_env_file(path).items():
            secrets[k] = Secret(v)
    for k in SECRET_NAMES:
        if env.get(k):
            secrets[k] = Secret(env[k])
    return secrets, path, found


def resolve_env(env=None, read_dotenv: bool = True) -> tuple:
    """(the environment the loader sees: the process's or ``env``, plus ``.env`` entries it lacks;
    the .env file read or None)."""
    env = dict(os.environ if env is None else env)
    dot = dotenv_path(env) if read_dotenv else None
    if dot is not None and dot.exists():
        for k, v in read_env_file(dot).items():
            env.setdefault(k, v)
    else:
        dot = None
    return env, dot


def load(path=None, env=None, *, read_dotenv: bool = True, light: bool = False) -> Config:
    """Load and validate. ``path`` defaults to ``TICKMESH_CONF`` or ``conf/mesh.toml``.
    ``light``: the section classes are loaded without their node packages (``section_class``):
    the same checks in a fraction of the time, for a check before a node's imports; the Config
    it returns is for that check only (its section objects are not the nodes' classes)."""
    env, dot = resolve_env(env, read_dotenv)
    path = Path(path or env.get("TICKMESH_CONF") or DEFAULT_CONF)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name}: not valid TOML: {e}") from None
    # environment overrides: parsed into what TOML would hold, then validated with the file's keys
    overrides = {}        # "section.key" -> environment name
    for ename, (sec, key) in ENV_KEYS.items():
        if ename in env:
            raw.setdefault(sec, {})[key] = _EnvValue(env[ename], ename)
            overrides[f"{sec}.{key}"] = ename
    for ename, v in env.items():
        if ename.startswith("TICKMESH_") and "__" in ename:
            sec, _, key = ename[len("TICKMESH_"):].partition("__")
            sec, key = sec.lower(), key.lower()
            if sec not in SECTIONS:
                raise ConfigError(f"{sec}: unknown section{_did_you_mean(sec, SECTIONS)} "
                                  f"(from the environment: {ename})")
            raw.setdefault(sec, {})[key] = _EnvValue(v, ename)
            overrides[f"{sec}.{key}"] = ename
    sections = {}
    for name, data in raw.items():
        cls = section_class(name, light)
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: expected a table")
        hints = typing.get_type_hints(cls)
        plain = {}
        for k, v in data.items():
            if isinstance(v, _EnvValue):
                if k not in hints:
                    raise ConfigError(f"{name}.{k}: unknown key{_did_you_mean(k, hints)} "
                                  f"(from the environment: {v.name})")
                try:
                    v = _parse_env(hints[k], v.value, f"{name}.{k}")
                except ConfigError as e:
                    raise ConfigError(f"{e} (from the environment: {v.name})") from None
            plain[k] = v
        try:
            sections[name] = build(cls, plain, name)
        except ConfigError as e:
            # name the environment variable when the bad value came from it
            msg = str(e)
            for dotted, ename in overrides.items():
                if msg.startswith((dotted + ":", dotted + ".", dotted + "[")):
                    raise ConfigError(f"{msg} (from the environment: {ename})") from None
            raise
    sections.setdefault("mesh", MeshConfig())
    secrets, sec_path, found = load_secrets(path, env)
    sources = {"config": str(path), "dotenv": str(dot) if dot else None,
               "secrets_file": str(sec_path) if sec_path else None, "secrets_found": found,
               "env_overrides": overrides}
    return Config(sections, secrets, path, sources, light)


def check(cfg: Config, build_nodes: bool = True) -> list:
    """Everything a node checks at start, for every section: each section built (defaults for the
    absent ones) and, with ``build_nodes``, each node constructed from it without starting it (a
    constructor stores config and collaborators only), which runs the checks that need more than
    one section (strategy plugin parameters, live-trading switches). Raises the first
    ConfigError; returns the node names built."""
    for name in SECTIONS:
        cfg.section(name)
    built = []
    if build_nodes:
        from .registry import load_class
        for name in SECTIONS:
            if name == "mesh":
                continue
            cls = load_class(name)
            try:
                cls.from_config(cfg)
            except ConfigError:
                raise
            built.append(name)
    return built


class _EnvValue:
    __slots__ = ("value", "name")

    def __init__(self, value, name):
        self.value = value
        self.name = name
