"""The monitoring files in config/ (Prometheus, its alert rules, the Grafana dashboard) only name metrics the
service really exposes: renaming a metric without them would leave an empty panel or a silent alert."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.compose.test_contract import load_compose, notifier_services
from tests.conftest import MAIL, Service
from tests.http.test_metrics import scrape
from tests.tools import find_tool

CONFIG = Path(__file__).resolve().parents[1] / "config"
OUR_METRIC = re.compile(r"\b(?:notifications?|outbox|smtp|dispatcher|http|webhook)_[a-z0-9_]+\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((CONFIG / "grafana" / "dashboards" / "notification-service.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((CONFIG / "prometheus-alerts.yml").read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


async def test_dashboard_and_alerts_use_only_exposed_metrics(service: Service) -> None:
    response = await service.post(**MAIL)
    await service.wait_for_status(response.json()["id"], "sent")
    await scrape(service)  # one scrape first, so that the /metrics route has its own HTTP series
    exposed = {name for name, _labels in await scrape(service)}

    expressions = dashboard_expressions() + alert_expressions()
    named = {name for expression in expressions for name in OUR_METRIC.findall(expression)}
    assert len(named) >= 8
    assert named <= exposed, f"not exposed by /metrics: {sorted(named - exposed)}"


def test_prometheus_scrapes_every_replica_of_every_notifier_service_and_loads_the_rules() -> None:
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "notifier", "the alert rules select job=notifier"
    assert job["metrics_path"] == "/metrics"
    # One target per address behind each name (type A), for `notifier` and the `scale` profile's `notifier-pg`.
    [discovery] = job["dns_sd_configs"]
    assert (discovery["type"], discovery["port"]) == ("A", 8000)
    assert sorted(discovery["names"]) == sorted(notifier_services(load_compose()))
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_tool("promtool", package="prometheus", variable="REQUIRE_PROMTOOL")


def run_promtool(promtool: str, *arguments: str) -> None:
    result = subprocess.run([promtool, *arguments], cwd=CONFIG, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_are_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", "prometheus-alerts.yml")


def test_the_alert_rules_fire_as_their_unit_tests_say(promtool: str) -> None:
    # config/prometheus-alerts.test.yml: among others, NotifierDown when the last container's target vanishes.
    run_promtool(promtool, "test", "rules", "prometheus-alerts.test.yml")


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((CONFIG / "prometheus-alerts.test.yml").read_text())
    assert tests["rule_files"] == ["prometheus-alerts.yml"]
    tested = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])}
    rules = yaml.safe_load((CONFIG / "prometheus-alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts <= tested, f"add cases for {sorted(alerts - tested)} to config/prometheus-alerts.test.yml"


def test_the_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    # The rule file's path is the container's; point it at the repository's copy.
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    config["rule_files"] = [str(CONFIG / "prometheus-alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run_promtool(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
