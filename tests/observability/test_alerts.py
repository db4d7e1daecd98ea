"""The shipped Prometheus alert rules: valid for promtool, on exposed series only, and firing when they should."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.test_dashboard import DEPLOY, exposed_series

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROBES = {"route": "/v2/health/ready", "method": "GET", "status": "503"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found is not None  # the `program` marker fails the test first
    return found


def rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@pytest.mark.program("promtool")
def test_the_alert_rules_and_the_scrape_config_pass_promtool(promtool: str) -> None:
    for command in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
    ):
        result = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_uses_an_exposed_series_and_the_six_are_there() -> None:
    used = {name for rule in rules() for name in re.findall(r"fraud_inference_[a-z_]+", str(rule["expr"]))}
    assert used - exposed_series() == set()
    names = {rule["alert"] for rule in rules()}
    assert names == {
        "FraudInferenceErrorRatioHigh", "FraudInferenceLatencyP99High", "FraudInferenceNotReady",
        "FraudInferenceWorkerRestarts", "FraudInferenceRefreshFailing", "FraudInferenceDecisionLogDropping",
    }  # fmt: skip


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


@pytest.mark.program("promtool")
def test_each_alert_fires_on_the_replica_in_trouble_only(promtool: str, tmp_path: Path) -> None:
    requests = "fraud_inference_http_requests_total"
    predict = {"route": "/v1/predict", "method": "POST"}
    latency = "fraud_inference_http_request_duration_seconds_bucket"
    dropped = "fraud_inference_decision_log_records_dropped_total"
    # Replica "healthy" starts: its /readyz answers 503 a lot, which is no error a client saw.
    # Replica "sick" answers 10% of its predictions with 503, slowly, restarts workers and cannot refresh.
    inputs = [
        series(requests, "0+100x40", instance="healthy", **PROBES),
        series(requests, "0+100x40", instance="healthy", status="200", **predict),
        series(requests, "0+10x40", instance="sick", status="503", **predict),
        series(requests, "0+90x40", instance="sick", status="200", **predict),
        series(latency, "0+100x40", instance="healthy", route="/v1/predict", le="0.01"),
        series(latency, "0+100x40", instance="healthy", route="/v1/predict", le="+Inf"),
        series(latency, "0+100x40", instance="healthy", route="/v1/predict", le="0.5"),
        series(latency, "0+50x40", instance="sick", route="/v1/predict", le="0.01"),
        series(latency, "0+100x40", instance="sick", route="/v1/predict", le="0.5"),
        series(latency, "0+100x40", instance="sick", route="/v1/predict", le="+Inf"),
        series("fraud_inference_ready", "1x40", instance="healthy"),
        series("fraud_inference_ready", "0x40", instance="sick"),
        series("fraud_inference_worker_restarts_total", "0x40", instance="healthy"),
        series("fraud_inference_worker_restarts_total", "0+1x40", instance="sick"),
        series("fraud_inference_refreshes_total", "0+1x40", instance="healthy", outcome="unchanged"),
        series("fraud_inference_refreshes_total", "0+1x40", instance="sick", outcome="registry_unavailable"),
        series(dropped, "0x40", instance="healthy", reason="write_failed"),
        series(dropped, "0+100x40", instance="sick", reason="write_failed"),
    ]
    # What the person paged reads, for the sick replica only.
    summaries = {
        "FraudInferenceErrorRatioHigh": "sick: 10% of API requests answered 5xx",
        "FraudInferenceLatencyP99High": "sick: p99 of scoring requests is 490.2ms",
        "FraudInferenceNotReady": "sick has not been ready for 5 minutes",
        "FraudInferenceWorkerRestarts": "sick: 15 inference workers replaced in 15 minutes",
        "FraudInferenceRefreshFailing": "sick: model refreshes fail (registry_unavailable)",
        "FraudInferenceDecisionLogDropping": "sick: 1k decision-log records dropped in 10 minutes (write_failed)",
    }
    extra = {
        "FraudInferenceRefreshFailing": {"outcome": "registry_unavailable"},
        "FraudInferenceDecisionLogDropping": {"reason": "write_failed"},
    }
    by_name = {str(rule["alert"]): rule for rule in rules()}
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": alert,
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": by_name[alert]["labels"]["severity"],  # type: ignore[index]
                                    "instance": "sick",
                                    **extra.get(alert, {}),
                                },
                                "exp_annotations": {
                                    "summary": summary,
                                    "description": by_name[alert]["annotations"]["description"],  # type: ignore[index]
                                },
                            }
                        ],
                    }
                    for alert, summary in summaries.items()
                ],
            }
        ],
    }
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
