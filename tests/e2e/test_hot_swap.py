"""Hot swap under load through granian: promotion, failed promotion, kill -9, SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import descendants, left_alive, use_registry
from tests.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.soak]

ADMIN_KEY = "test-admin-key-0123456789"


def rows(frame: pd.DataFrame, count: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(frame.head(count).to_json(orient="records"))
    return records


def probabilities(registry: str, name: str, version: str, frame: pd.DataFrame, flavor: Any) -> np.ndarray:
    use_registry(registry)
    return flavor.load_model(f"models:/{name}/{version}").predict_proba(frame)[:, 1]  # type: ignore[no-any-return]


def promote(registry: str, name: str, source_of: str | None = None, *, source: str | None = None) -> str:
    """Register a new version of `name` (from another model's files, or from `source`) and make it champion."""
    use_registry(registry)  # a `models:/m-...` source is resolved through the process-wide tracking URI
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    if source is None:
        assert source_of is not None
        donor = client.get_model_version_by_alias(source_of, "champion")
        source, run_id = donor.source, donor.run_id
    else:
        run_id = None
    version = str(client.create_model_version(name, source=source, run_id=run_id).version)
    client.set_registered_model_alias(name, "champion", version)
    return version


def test_promotion_under_load_fails_nothing_and_never_misattributes(
    service_factory, private_registry: str, transactions: pd.DataFrame
) -> None:
    sample = transactions.head(5)
    # Version 2 of fraud-xgboost is the LightGBM model's files: its scores differ, so every answer's
    # probabilities show which version really scored it.
    by_v1 = probabilities(private_registry, "fraud-xgboost", "1", sample, mlflow.xgboost)
    by_v2 = probabilities(private_registry, "fraud-lightgbm", "1", sample, mlflow.lightgbm)
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "2", "API_KEYS": ADMIN_KEY}
    )
    service.wait_ready()
    payload = {"model": "xgboost", "instances": rows(sample, 5)}
    with Load(service.base_url, lambda: payload, clients=4, max_seconds=60) as load, service.client() as admin:
        time.sleep(1.5)
        assert promote(private_registry, "fraud-xgboost", "fraud-lightgbm") == "2"
        posted = time.monotonic()
        refresh = admin.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
        refreshed = time.monotonic()
        time.sleep(1.5)
        again = admin.post("/v1/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
    answers = load.stop()

    assert refresh.status_code == 200, refresh.text
    assert refresh.json()["generation"] == 2
    assert refresh.json()["changed"] == {"xgboost": {"from": "1", "to": "2"}}
    assert refresh.json()["models"]["xgboost"]["version"] == "2"
    assert refresh.json()["models"]["lightgbm"]["version"] == "1"
    assert again.status_code == 200
    assert (again.json()["generation"], again.json()["changed"]) == (2, {})

    assert len(answers) > 100
    assert [a.error or a.status for a in answers if a.status != 200] == []
    for answer in answers:
        assert answer.body is not None
        version = answer.body["model_version"]
        assert version in {"1", "2"}
        expected = by_v1 if version == "1" else by_v2
        np.testing.assert_allclose([p["fraud_probability"] for p in answer.body["predictions"]], expected, atol=1e-6)
        if answer.sent_at > refreshed:
            assert version == "2", "a request sent after the refresh returned was scored by the old version"
    assert {a.body["model_version"] for a in answers if a.body} == {"1", "2"}
    worst = max(a.latency_s for a in answers if posted <= a.sent_at <= refreshed)
    print(f"refresh took {refreshed - posted:.3f} s; worst request latency during the swap {worst * 1000:.1f} ms")


def test_promotion_of_a_corrupted_version_is_refused_and_the_old_one_keeps_serving(
    service_factory, private_registry: str, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    # A fault a healthy registry cannot give us: a version whose model file is corrupted.
    client = MlflowClient(tracking_uri=private_registry, registry_uri=private_registry)
    good = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/fraud-lightgbm/1", dst_path=str(tmp_path / "good"), tracking_uri=private_registry
    )
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    for model_file in broken.glob("model.*"):
        model_file.write_bytes(b"\x00 corrupted \x00")
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "2", "API_KEYS": ADMIN_KEY}
    )
    service.wait_ready()
    payload = {"model": "lightgbm", "instances": rows(transactions, 3)}
    with Load(service.base_url, lambda: payload, clients=3, max_seconds=60) as load, service.client() as admin:
        time.sleep(1.0)
        promote(private_registry, "fraud-lightgbm", source=broken.as_uri())
        refresh = admin.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
        time.sleep(1.0)
        ready = admin.get("/readyz")
        version = admin.get("/v1/version").json()
    answers = load.stop()

    assert refresh.status_code == 422, refresh.text
    assert "lightgbm" in refresh.json()["detail"]
    assert "still serving" in refresh.json()["detail"]
    assert ready.status_code == 200
    assert version["generation"] == 1
    assert version["models"]["lightgbm"]["version"] == "1"
    assert len(answers) > 50
    assert [a.error or a.status for a in answers if a.status != 200] == []
    assert {a.body["model_version"] for a in answers if a.body} == {"1"}
    assert client.get_model_version_by_alias("fraud-lightgbm", "champion").version in (2, "2")


def test_periodic_refresh_picks_up_a_promotion_without_an_admin_call(service_factory, private_registry: str) -> None:
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "REFRESH_INTERVAL_S": "0.5"}
    )
    service.wait_ready()
    promote(private_registry, "fraud-sklearn", "fraud-sklearn")
    deadline = time.monotonic() + 60
    with service.client() as client:
        while time.monotonic() < deadline:
            body = client.get("/v1/version").json()
            if body["models"]["sklearn"]["version"] == "2":
                break
            time.sleep(0.25)
    assert body["models"]["sklearn"]["version"] == "2"
    assert body["generation"] == 2


def worker_pids(service: Any) -> dict[str, int]:
    return {title: pid for pid, title in descendants(service.process.pid).items() if "fraud-inference worker" in title}


def wait_replaced(service: Any, title: str, old_pid: int, *, deadline: float) -> dict[str, Any]:
    """Wait (until `deadline`, monotonic s) for the worker `title` to run under a pid other than `old_pid`, then for
    /readyz to count every worker live again; return that /readyz answer.

    NOTE: the new pid first: a killed worker leaves the process list (a zombie has no title) before the server has
    noticed its death, and /readyz still counts it live until then.
    """
    replacement = None
    while time.monotonic() < deadline and replacement in {old_pid, None}:
        time.sleep(0.2)
        replacement = worker_pids(service).get(title)
    with service.client() as client:
        while True:
            ready: dict[str, Any] = client.get("/readyz").json()
            if ready.get("live_workers") == ready.get("workers") or time.monotonic() >= deadline:
                return ready
            time.sleep(0.2)


def test_kill_9_of_a_worker_under_load_fails_nothing_and_the_pool_heals(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2"})
    service.wait_ready()
    victim = worker_pids(service)["fraud-inference worker 1"]
    payload = {"model": "xgboost", "instances": rows(transactions, 20)}
    with Load(service.base_url, lambda: payload, clients=4, max_seconds=60) as load:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        ready = wait_replaced(service, "fraud-inference worker 1", victim, deadline=time.monotonic() + 100)
        time.sleep(0.5)
    answers = load.stop()
    print(f"\nkill -9 of a worker under load: {len(answers)} requests, {sum(a.status != 200 for a in answers)} failed")

    assert [a.error or a.status for a in answers if a.status != 200] == []
    assert len(answers) > 100
    assert ready["status"] == "ready"
    assert ready["live_workers"] == 2
    pids = worker_pids(service)
    assert sorted(pids) == ["fraud-inference worker 1", "fraud-inference worker 2"]
    assert victim not in pids.values()
    assert "worker.died" in service.log()


def test_sigterm_under_load_finishes_in_flight_requests_and_leaves_no_process(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2"})
    service.wait_ready()
    processes = descendants(service.process.pid)
    payload = {"model": "sklearn", "instances": rows(transactions, 200)}
    with Load(service.base_url, lambda: payload, clients=4, max_seconds=60, keep_alive=False) as load:
        time.sleep(1.0)
        terminated_at = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        code = service.process.wait(timeout=60)
    answers = load.stop()

    assert code == 0
    assert terminated_at > 0
    # Every request the server started handling (it logs each one when it finishes) reached its client as a 200.
    accepted = {
        entry["request_id"]
        for entry in (json.loads(line) for line in service.log().splitlines() if line.startswith("{"))
        if entry.get("event") == "http.request"
    }
    answered = {a.request_id for a in answers if a.status == 200}
    assert len(accepted & answered) > 10
    assert accepted - answered == set(), "a request the server accepted was cut off instead of completed"
    # Requests that arrived after the listener closed were refused at the connection, never answered with an error.
    assert [a.status for a in answers if a.status is not None and a.status != 200] == []
    assert left_alive(processes, timeout_s=5) == {}


def test_sigkill_of_the_serve_process_leaves_no_process_behind(service_factory, demo_registry: str) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2"})
    service.wait_ready()
    processes = descendants(service.process.pid)
    assert len(processes) >= 3  # the HTTP process and two inference workers
    service.process.send_signal(signal.SIGKILL)
    service.process.wait(timeout=10)
    assert left_alive(processes, timeout_s=30) == {}
