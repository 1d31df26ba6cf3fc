"""Config as an operator meets it: environment overrides of every Decimal key, errors naming the
key (and the environment variable), the .env and secrets lookup, ``tickmesh config check``, and
conf/mesh.toml documenting every key of every section with a comment."""
import dataclasses
import importlib
import re
import subprocess
import sys
import typing
from decimal import Decimal

import pytest

from nodes import config
from nodes.config import ConfigError
from tests.conftest import ROOT
from tools import config as config_tool

CONF_TEXT = config.DEFAULT_CONF.read_text()


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _decimal_keys():
    out = []
    for name in config.SECTIONS:
        for key, tp in _fields(config.section_class(name)):
            if tp is Decimal or (typing.get_origin(tp) is typing.Union and Decimal in typing.get_args(tp)):
                out.append((name, key))
    return out


@pytest.mark.parametrize("section,key", _decimal_keys())
def test_every_decimal_key_can_be_overridden_from_the_environment(tmp_path, section, key):
    # before the fix: "expected a decimal, got Decimal Decimal('5000')" (the value converted twice)
    conf = tmp_path / "mesh.toml"
    conf.write_text("")
    ename = f"TICKMESH_{section.upper()}__{key.upper()}"
    # a value every Decimal key accepts: the shipped default, as the environment would write it
    default = getattr(config.load(conf, env={}, read_dotenv=False).section(section), key)
    cfg = config.load(conf, env={ename: str(default)}, read_dotenv=False)
    got = getattr(cfg.section(section), key)
    assert type(got) is Decimal and got == default
    assert cfg.sources["env_overrides"] == {f"{section}.{key}": ename}


def test_the_readmes_own_example_and_errors_from_the_environment_name_the_variable(tmp_path):
    conf = tmp_path / "mesh.toml"
    conf.write_text("")
    cfg = config.load(conf, env={"TICKMESH_RISK__MAX_ORDER_NOTIONAL": "5000"}, read_dotenv=False)
    assert cfg.section("risk").max_order_notional == Decimal("5000")
    with pytest.raises(ConfigError, match=r"^risk\.max_order_notional: not a decimal: 'lots' "
                                          r"\(from the environment: TICKMESH_RISK__MAX_ORDER_NOTIONAL\)$"):
        config.load(conf, env={"TICKMESH_RISK__MAX_ORDER_NOTIONAL": "lots"}, read_dotenv=False)
    with pytest.raises(ConfigError, match=r"^risk\.max_order_notional: must be > 0.*TICKMESH_RISK__MAX_ORDER"):
        config.load(conf, env={"TICKMESH_RISK__MAX_ORDER_NOTIONAL": "-1"}, read_dotenv=False)
    cfg = config.load(conf, env={"TICKMESH_STRATEGY__ORDER_SIZES": '{"ETH-USD": "0.01"}'}, read_dotenv=False)
    assert cfg.section("strategy").order_sizes == {"ETH-USD": Decimal("0.01")}
    with pytest.raises(ConfigError, match=r"^risk\.max_order_notionl: unknown key \(did you mean max_order_notional\?\)"):
        config.load(conf, env={"TICKMESH_RISK__MAX_ORDER_NOTIONL": "1"}, read_dotenv=False)
    with pytest.raises(ConfigError, match=r"^rsk: unknown section \(did you mean risk\?\)"):
        config.load(conf, env={"TICKMESH_RSK__MAX_POSITION": "1"}, read_dotenv=False)


def test_the_security_section_that_nothing_read_is_gone(tmp_path):
    conf = tmp_path / "mesh.toml"
    conf.write_text("[security]\nallow_any_known_key = true\n")
    with pytest.raises(ConfigError, match=r"^security: unknown section"):
        config.load(conf, env={}, read_dotenv=False)


# --- .env and secrets: which files, and the test suite's isolation ----------------------------------

def test_dotenv_is_named_by_tickmesh_dotenv_and_can_be_switched_off(tmp_path):
    conf = tmp_path / "mesh.toml"
    conf.write_text("")
    dot = tmp_path / "my.env"
    dot.write_text("COINBASE_WS_URL=ws://127.0.0.1:1\nTICKMESH_RISK__MAX_POSITION=3\n")
    cfg = config.load(conf, env={"TICKMESH_DOTENV": str(dot)})
    assert cfg.section("marketdata").ws_url == "ws://127.0.0.1:1"
    assert cfg.section("risk").max_position == Decimal("3") and cfg.sources["dotenv"] == str(dot)
    cfg = config.load(conf, env={"TICKMESH_DOTENV": str(dot), "COINBASE_WS_URL": "ws://h:2"})
    assert cfg.section("marketdata").ws_url == "ws://h:2"           # the real environment wins
    cfg = config.load(conf, env={"TICKMESH_DOTENV": ""})
    assert cfg.section("marketdata").ws_url.startswith("wss://") and cfg.sources["dotenv"] is None


def test_the_suite_never_reads_the_checkouts_dotenv_or_secrets():
    # tests/conftest.py switches both off for the whole run (subprocesses inherit it): a developer's
    # .env with COINBASE_WS_URL made the supervisord fault test fail
    import os
    assert os.environ.get("TICKMESH_DOTENV") == "" and os.environ.get("TICKMESH_SECRETS") == ""
    assert config.dotenv_path({}) is None
    assert not any(k.startswith(("COINBASE_", "SLACK_", "TEAMS_")) for k in os.environ)


def test_secrets_file_beside_the_config_or_named_and_described_without_values(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    conf = d / "prod.toml"
    conf.write_text("")
    (d / "secrets.env").write_text("SLACK_WEBHOOK_URL=https://hooks.example/T000/abc\n")
    cfg = config.load(conf, env={}, read_dotenv=False)
    assert cfg.secret("SLACK_WEBHOOK_URL").reveal().endswith("/abc")
    line = cfg.describe()
    assert f"secrets {d / 'secrets.env'}" in line and "secrets set: SLACK_WEBHOOK_URL" in line
    assert "hooks.example" not in line
    other = tmp_path / "other.env"
    other.write_text("TEAMS_WEBHOOK_URL=https://teams.example/x\n")
    cfg = config.load(conf, env={"TICKMESH_SECRETS": str(other)}, read_dotenv=False)
    assert cfg.secret("TEAMS_WEBHOOK_URL") and not cfg.secret("SLACK_WEBHOOK_URL")
    cfg = config.load(conf, env={"TICKMESH_SECRETS": ""}, read_dotenv=False)
    assert cfg.secrets == {} and "no secrets file" in cfg.describe()
    cfg = config.load(tmp_path / "etc" / "prod.toml", env={"TICKMESH_SECRETS": str(tmp_path / "none.env")},
                      read_dotenv=False)
    assert "(not found)" in cfg.describe()


def test_conf_keys_are_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("conf/keys/private/risk.key_secret", "conf/keys/public/risk.key"):
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, f"{path} is not git-ignored: {r.stderr}"


# --- tickmesh config check ------------------------------------------------------------------------

def run_check(*argv, env=None):
    import io
    out, err = io.StringIO(), io.StringIO()
    rc = config_tool.main(["check", *argv], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_config_check_prints_what_it_would_run_with_secrets_masked(tmp_path, monkeypatch):
    conf = tmp_path / "mesh.toml"
    conf.write_text(CONF_TEXT)
    (tmp_path / "secrets.env").write_text("SLACK_WEBHOOK_URL=https://hooks.example/T000/secret-part\n")
    monkeypatch.delenv("TICKMESH_SECRETS")
    monkeypatch.setenv("TICKMESH_RISK__MAX_ORDER_NOTIONAL", "5000")
    rc, out, err = run_check("--conf", str(conf))
    assert rc == 0, err
    assert 'max_order_notional = "5000"   # from TICKMESH_RISK__MAX_ORDER_NOTIONAL' in out
    assert re.search(r'^SLACK_WEBHOOK_URL = "\*\*\*" +# set$', out, re.M)
    assert re.search(r'^TEAMS_WEBHOOK_URL = "" +# not set$', out, re.M)
    assert "secret-part" not in out and "hooks.example" not in out
    for name in config.SECTIONS:
        assert f"\n[{name}]\n" in out
    assert f"# secrets file: {tmp_path / 'secrets.env'}" in out and out.rstrip().endswith("is valid")


@pytest.mark.parametrize("text,env,match", [
    ('[strategy.params.sma]\nfast = "five"\n', {}, r"strategy\.params\.sma\.fast: expected an integer, got str 'five'"),
    ("[risk]\nmax_order_notionl = '5'\n", {}, r"risk\.max_order_notionl: unknown key \(did you mean max_order_notional\?\)"),
    ("", {"TICKMESH_STRATEGY__ORDER_SIZE": "x"}, r"strategy\.order_size: not a decimal: 'x' \(from the environment"),
    ("[execution]\nlive_trading = true\nvenue = 'coinbase'\n", {}, r"^tickmesh config: config error: execution\."),
])
def test_config_check_one_line_naming_the_key_exit_2(tmp_path, monkeypatch, text, env, match):
    conf = tmp_path / "mesh.toml"
    conf.write_text(text)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc, out, err = run_check("--conf", str(conf))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err


def test_config_check_as_a_command(tmp_path):
    conf = tmp_path / "mesh.toml"
    conf.write_text('[strategy.params.sma]\nfast = "five"\n')
    r = subprocess.run([sys.executable, "-m", "tools.cli", "config", "check", "--conf", str(conf)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "tickmesh config: config error: strategy.params.sma.fast: expected an integer, got str 'five'"]
    r = subprocess.run([sys.executable, "-m", "tools.cli", "config", "check", "-q"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


# --- conf/mesh.toml documents every key ----------------------------------------------------------

def _region(text: str, header: str) -> list:
    """The lines of table ``[header]`` (or its commented-out example ``# [header]``) up to the next
    table that is not one of its sub-tables."""
    lines = text.splitlines()
    pat = re.compile(r"^#?\s*\[" + re.escape(header) + r"[\].]")
    start = next((i for i, l in enumerate(lines) if pat.match(l)), None)
    if start is None:
        return []
    out = [lines[start]]
    for line in lines[start + 1:]:
        m = re.match(r"^\[([^\]]+)\]", line)
        if m and not m.group(1).startswith(header.split(".")[0]):
            break
        out.append(line)
    return out


_KEY_LINE = re.compile(r"^#?\s*\w+\s*=")


def _documented(lines: list, key: str) -> bool:
    """``key = ...`` (or ``# key = ...``) present, with a comment: on its line, right above it, or
    in the comment block heading the run of key lines it belongs to."""
    pat = re.compile(r"^#?\s*" + re.escape(key) + r"\s*=")
    for i, line in enumerate(lines):
        if not pat.match(line):
            continue
        if re.search(r"=.*\s#\s*\S", line):
            return True                                   # an inline comment
        j = i - 1
        while j >= 0 and _KEY_LINE.match(lines[j]):       # up over the run of keys
            j -= 1
        block = []
        while j >= 0 and lines[j].startswith("#") and not _KEY_LINE.match(lines[j]):
            block.append(lines[j])
            j -= 1
        if block and (i == j + len(block) + 1 or re.search(rf"\b{re.escape(key)}\b", " ".join(block))):
            return True
    return False


def _nested_dataclass(tp):
    if typing.get_origin(tp) is dict:
        inner = typing.get_args(tp)[1]
        if dataclasses.is_dataclass(inner):
            return inner
    return None


def _missing_docs() -> list:
    missing = []
    for name in config.SECTIONS:
        region = _region(CONF_TEXT, name)
        if not region:
            missing.append(f"[{name}]")
            continue
        comments = " ".join(l for l in region if l.lstrip().startswith("#"))
        for key, tp in _fields(config.section_class(name)):
            inner = _nested_dataclass(tp)
            if inner is not None:            # per-product tables: the header and each inner key
                if not any(re.match(rf"^#?\s*\[{name}\.{key}\.", l) for l in region) and not _documented(region, key):
                    missing.append(f"{name}.{key}")
                for sub, _ in _fields(inner):
                    if not re.search(rf"\b{sub}\b", comments):
                        missing.append(f"{name}.{key}.<PRODUCT>.{sub}")
            elif key == "params" and name == "strategy":
                continue                     # each built-in plugin's table, below
            elif not _documented(region, key):
                missing.append(f"{name}.{key}")
    strategy = importlib.import_module("nodes.strategy")
    for plugin, spec in strategy.BUILTINS.items():
        mod, _, attr = spec.partition(":")
        params = getattr(importlib.import_module(mod), attr).Params
        region = _region(CONF_TEXT, f"strategy.params.{plugin}")
        for key, _ in _fields(params):
            if not _documented(region, key):
                missing.append(f"strategy.params.{plugin}.{key}")
    return missing


def test_every_key_of_every_section_is_in_conf_mesh_toml_with_a_comment():
    assert _missing_docs() == []


def test_the_documentation_check_catches_an_undocumented_key(monkeypatch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithExtra(config.MeshConfig):
        allow_any_known_key: bool = True
    real = config.section_class
    before = set(_missing_docs())
    monkeypatch.setattr(config, "section_class", lambda n: WithExtra if n == "mesh" else real(n))
    assert set(_missing_docs()) - before == {"mesh.allow_any_known_key"}


def test_the_shipped_config_passes_the_whole_check():
    cfg = config.load(config.DEFAULT_CONF, env={}, read_dotenv=False)
    assert set(config.check(cfg)) >= {"marketdata", "risk", "execution", "store", "strategy", "metrics", "alerts"}
