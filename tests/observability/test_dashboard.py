"""The shipped Grafana dashboard and Prometheus config only use metrics the service exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from fraud_inference.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_series() -> set[str]:
    return {
        family.name + suffix for family in Metrics().registry.collect() for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_every_dashboard_query_uses_an_exposed_series() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "fraud-inference.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expression in expressions for name in re.findall(r"fraud_inference_[a-z_]+", expression)}
    assert used, "the dashboard queries nothing"
    assert used - exposed_series() == set()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("requests per second", "error rate", "latency", "score distribution", "model versions"):
        assert topic in titles


def test_prometheus_scrapes_the_metrics_path() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
