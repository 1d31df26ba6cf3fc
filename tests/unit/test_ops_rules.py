"""conf/prometheus-rules.yml and conf/prometheus.yml checked by Debian's promtool: the rule file is
valid, its unit tests (conf/prometheus-rules.test.yml) pass, the config loads it, and the thresholds
it copies from conf/mesh.toml are the same numbers."""
import os
import re
import shutil
import subprocess

import pytest

from nodes import config
from tests.conftest import ROOT

CONF = ROOT / "conf"


def require_binary(name: str) -> str:
    """The path of ``name``; a skip on a developer machine without it, a failure in CI (CI=true),
    whose .ci/run installs it (apt-get install prometheus provides prometheus and promtool)."""
    exe = shutil.which(name)
    if exe is None:
        why = f"{name} is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return exe


def promtool(*args):
    p = subprocess.run([require_binary("promtool"), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def test_rule_file_is_valid():
    rc, out = promtool("check", "rules", str(CONF / "prometheus-rules.yml"))
    assert rc == 0, out
    assert "SUCCESS: 7 rules found" in out


def test_rule_unit_tests_pass():
    rc, out = promtool("test", "rules", str(CONF / "prometheus-rules.test.yml"))
    assert rc == 0, out
    assert "SUCCESS" in out


def test_prometheus_config_loads_the_rules():
    rc, out = promtool("check", "config", str(CONF / "prometheus.yml"))
    assert rc == 0, out
    assert "1 rule files found" in out and "7 rules found" in out


def test_a_broken_rule_is_caught(tmp_path):
    """The check is not a formality: promtool refuses a rule whose expression does not parse."""
    bad = (CONF / "prometheus-rules.yml").read_text().replace("tickmesh_killswitch_engaged == 1",
                                                               "tickmesh_killswitch_engaged == == 1")
    (tmp_path / "rules.yml").write_text(bad)
    rc, out = promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert rc != 0 and "parse error" in out, out


def test_every_required_alert_is_there():
    text = (CONF / "prometheus-rules.yml").read_text()
    names = set(re.findall(r"^\s+- alert: (\w+)$", text, re.M))
    assert names >= {"TickmeshNodeDown", "TickmeshKillSwitchEngaged", "TickmeshFeedStale", "TickmeshRiskStateStale",
                     "TickmeshDailyLossBreached", "TickmeshScrapeFailing"}
    tested = set(re.findall(r"alertname: (\w+)", (CONF / "prometheus-rules.test.yml").read_text()))
    assert tested == names


def test_thresholds_follow_conf_mesh_toml():
    cfg = config.load(CONF / "mesh.toml", env={}, read_dotenv=False)
    text = (CONF / "prometheus-rules.yml").read_text()
    [loss] = re.findall(r"tickmesh_pnl_daily_quote < (-[\d.]+)", text)
    assert float(loss) == -float(cfg.section("alerts").daily_loss_threshold)
    [age] = re.findall(r'tickmesh_risk_state_age_seconds\{node="execution"\} > ([\d.]+)', text)
    assert float(age) == cfg.section("risk").state_max_age_ms / 1000
