"""The shipped Grafana dashboard and Prometheus config: only metrics the service exposes, and an honest view."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from fraud_inference.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Route templates of probes and scrapes: no client's request, and readiness answers 503 while starting.
PROBES = "/livez|/readyz|/metrics|/ping|/health|/v2/health/.+|/v2/models/.+/ready"
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
    assert config["rule_files"] == ["alerts.yml"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana" / "fraud-inference.json").read_text())
    return loaded


def panel(title_part: str) -> dict[str, Any]:
    (found,) = [p for p in dashboard()["panels"] if title_part in p["title"].lower()]
    return found


def test_the_error_rate_leaves_out_probes_and_metrics_scrapes() -> None:
    # /readyz (and each protocol's readiness) answers 503 during every start: a false spike per rollout.
    for target in panel("error rate")["targets"]:
        assert target["expr"].count(f'route!~"{PROBES}"') == 2
    for probe in (
        "/livez",
        "/readyz",
        "/metrics",
        "/ping",
        "/health",
        "/v2/health/ready",
        "/v2/models/{model:str}/ready",
    ):
        assert re.fullmatch(PROBES, probe), probe
    for api in ("/v1/predict", "/invocations", "/v2/models/{model:str}/infer", "/v1/version", "/v2"):
        assert not re.fullmatch(PROBES, api), api


def test_every_query_can_be_narrowed_to_one_instance() -> None:
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert "instance" in variables["instance"]["query"]["query"]
    for p in dashboard()["panels"]:
        for target in p["targets"]:
            selectors = re.findall(r"fraud_inference_[a-z_]+\{([^}]*)\}", target["expr"])
            assert selectors, target["expr"]
            assert all('instance=~"$instance"' in selector for selector in selectors), target["expr"]


def test_the_score_heatmap_is_one_per_model_in_heatmap_format() -> None:
    heatmap = panel("score distribution")
    assert heatmap["type"] == "heatmap"
    assert heatmap["repeat"] == "model"
    (target,) = heatmap["targets"]
    assert target["format"] == "heatmap"
    assert 'model="$model"' in target["expr"]
    assert target["expr"].startswith("sum by (le) (")


def test_model_versions_are_shown_apart_from_the_generation() -> None:
    versions = panel("model versions")
    assert versions["type"] == "state-timeline"
    assert all("fraud_inference_generation" not in target["expr"] for target in versions["targets"])
    assert "fraud_inference_generation" in panel("active generation")["targets"][0]["expr"]


def test_cpu_and_memory_are_shown_per_process() -> None:
    assert "by (instance, process)" in panel("cpu by process")["targets"][0]["expr"]
    assert "fraud_inference_process_resident_memory_bytes" in panel("resident memory")["targets"][0]["expr"]


def test_a_row_compares_each_champion_with_its_challenger() -> None:
    titles = [p["title"] for p in dashboard()["panels"]]
    assert "Champion versus challenger" in titles
    agreement = panel("challenger agreement")["targets"][0]["expr"]
    assert 'champion="fraud", challenger="fraud"' in agreement
    assert 'champion="legit", challenger="legit"' in agreement
    assert "by (model, champion, challenger)" in panel("challenger decisions")["targets"][0]["expr"]
    assert "fraud_inference_shadow_score_difference_bucket" in panel("score shift")["targets"][0]["expr"]
    assert "skipped" in panel("challenger rows by outcome")["title"]
