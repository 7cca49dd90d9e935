"""The monitoring files in config/ (Prometheus, its alert rules, the Grafana dashboard) only name metrics the
service really exposes: renaming a metric without them would leave an empty panel or a silent alert."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.conftest import MAIL, Service
from tests.http.test_metrics import scrape

CONFIG = Path(__file__).resolve().parents[1] / "config"
OUR_METRIC = re.compile(r"\b(?:notifications?|outbox|smtp|dispatcher|http)_[a-z0-9_]+\b")


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


def test_prometheus_scrapes_the_notifier_and_loads_the_rules() -> None:
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [{"names": ["notifier"], "type": "A", "port": 8000, "refresh_interval": "15s"}]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
