"""The shipped Prometheus rules, their unit tests, the compose Prometheus config and every
dashboard query, parsed for real by `promtool`.

promtool must be installed (`make prometheus`): these tests fail, never skip. The checks that
need no binary stay in tests/unit (test_deploy.py, test_dashboard.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_dashboard import GRAFANA_INTERVAL, dashboard_expressions

PROMETHEUS = Path(__file__).parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: run `make prometheus` (Debian's prometheus package)"
    return found


def run_promtool(promtool: str, *args: str) -> str:
    result = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_pass_promtool_check(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", "rules.yml")


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    tests = sorted(str(p.relative_to(PROMETHEUS)) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert tests, "no promtool rule tests"
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", *tests)


def test_compose_prometheus_config_passes_promtool_check(promtool: str) -> None:
    run_promtool(promtool, "check", "config", "--syntax-only", "prometheus.yml")


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    # promtool parses a rule file's expressions: one recording rule per dashboard query.
    queries = [
        {"record": f"dashboard_query_{i}", "expr": GRAFANA_INTERVAL.sub("5m", expr)}
        for i, (_, expr) in enumerate(dashboard_expressions())
    ]
    rule_file = tmp_path / "dashboard.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
