"""The real command through granian on a loopback port: serve, demo, startup failures, shutdown."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import descendants, left_alive, run_cli
from tests.decisions.conftest import read_log

pytestmark = pytest.mark.slow


def instances(frame: pd.DataFrame, count: int) -> list[dict[str, float | int]]:
    records: list[dict[str, float | int]] = json.loads(frame.head(count).to_json(orient="records"))
    return records


def test_serve_scores_all_three_models_through_granian_and_exits_cleanly(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(["serve", "--workers", "2"], {"MLFLOW_TRACKING_URI": demo_registry})
    service.wait_ready()
    with service.client() as client:
        for model in ("xgboost", "lightgbm", "sklearn"):
            response = client.post("/v1/predict", json={"model": model, "instances": instances(transactions, 5)})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == model
            assert body["model_name"] == f"fraud-{model}"
            assert len(body["predictions"]) == 5
            assert all(0.0 <= p["fraud_probability"] <= 1.0 for p in body["predictions"])
        ready = client.get("/readyz").json()
        assert ready == {"status": "ready", "generation": 1, "workers": 2, "live_workers": 2}
        traced = client.post(
            "/v1/predict", json={"model": "lightgbm", "instances": instances(transactions, 3)},
            headers={"X-Request-ID": "trace-me-42"},
        )  # fmt: skip
        assert traced.status_code == 200
        client.get("/no/such/route", headers={"X-Request-ID": "trace-me-404"})
    processes = descendants(service.process.pid)
    titles = sorted(title for title in processes.values() if title.startswith("fraud-inference worker"))
    assert titles == ["fraud-inference worker 1", "fraud-inference worker 2"]

    assert service.stop() == 0
    assert left_alive(processes, timeout_s=5) == {}
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "http.request"]
    (traced_line,) = [line for line in access if line.get("request_id") == "trace-me-42"]
    assert traced_line["role"] == "server"
    assert (traced_line["method"], traced_line["route"], traced_line["status"]) == ("POST", "/v1/predict", 200)
    assert (traced_line["model"], traced_line["version"], traced_line["generation"], traced_line["rows"]) == (
        "lightgbm", "1", 1, 3,
    )  # fmt: skip
    assert traced_line["duration_ms"] > 0
    assert not [line for line in access if line["route"] in {"/livez", "/readyz"}]


def test_demo_serves_the_embedded_registry_and_prints_its_uri(
    service_factory, demo_home: Path, transactions: pd.DataFrame
) -> None:
    service = service_factory(["demo", "--workers", "1"], {"FRAUD_INFERENCE_HOME": str(demo_home)})
    service.wait_ready()
    assert f"MLFLOW_TRACKING_URI=sqlite:///{demo_home / 'mlflow.db'}" in service.log()
    with service.client() as client:
        response = client.post(
            "/v1/predict",
            json={"model": "sklearn", "instances": instances(transactions, 1)},
            headers={"x-request-id": "demo-decision-1"},
        )
    assert response.status_code == 200
    assert response.json()["selected_by"] == "alias:champion"
    assert service.stop() == 0
    # The demo turns the decision log on under its home, so a newcomer sees it.
    logged = read_log(demo_home / "decisions")
    assert logged[logged.request_id == "demo-decision-1"].fraud_probability.tolist() == [
        response.json()["predictions"][0]["fraud_probability"]
    ]


def test_serve_without_tracking_uri_points_to_demo(tmp_path: Path) -> None:
    result = run_cli(["serve"], {}, tmp_path)
    assert result.returncode == 1
    assert "MLFLOW_TRACKING_URI" in result.stderr
    assert "fraud-inference demo" in result.stderr


def test_serve_fails_fast_naming_a_model_that_resolves_to_nothing(demo_registry: str, tmp_path: Path) -> None:
    result = run_cli(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "MODELS": "fraud=fraud-catboost"}, tmp_path)
    assert result.returncode == 1
    assert "'fraud'" in result.stderr
    assert "no registered model named 'fraud-catboost'" in result.stderr


def test_bad_setting_stops_startup_naming_the_variable(demo_registry: str, tmp_path: Path) -> None:
    result = run_cli(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "MAX_BATCH_ROWS": "many"}, tmp_path)
    assert result.returncode == 1
    assert "MAX_BATCH_ROWS" in result.stderr
