"""A real MLflow tracking server going away and coming back while the service keeps scoring."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.conftest import MlflowServer
from tests.load import Load

# NOTE: soak, out of the default run: each test stops, pauses or restarts a real `mlflow server` (tens of seconds a
# start on a busy machine; the module was the longest of the default run). The default run keeps the unreachable
# registry at start (e2e/test_startup.py, e2e/test_secrets.py) and REGISTRY_TIMEOUT_S bounding every call
# (test_registry_timeout.py); `.ci/run` runs this module with -m soak.
pytestmark = [pytest.mark.slow, pytest.mark.soak]

ADMIN_KEY = "outage-admin-key"


def test_refresh_while_the_registry_is_down_keeps_serving_and_recovers(
    service_factory, mlflow_server: MlflowServer, transactions: pd.DataFrame
) -> None:
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, "WORKERS": "2", "API_KEYS": ADMIN_KEY}
    )
    service.wait_ready()
    instances: list[dict[str, Any]] = json.loads(transactions.head(3).to_json(orient="records"))
    payload = {"model": "xgboost", "instances": instances}
    headers = {"X-API-Key": ADMIN_KEY}
    with Load(service.base_url, lambda: payload, clients=3, max_seconds=120) as load, service.client() as admin:
        time.sleep(1.0)
        mlflow_server.stop()
        refused = admin.post("/admin/refresh-models", headers=headers)
        ready_during_outage = admin.get("/readyz")
        mlflow_server.start()
        recovered = admin.post("/admin/refresh-models", headers=headers)
        time.sleep(0.5)
    answers = load.stop()
    failed = [a for a in answers if a.status != 200]
    print(f"\nregistry killed under load: {len(answers)} requests, {len(failed)} failed, 0 lost")

    assert refused.status_code == 502, refused.text
    assert "still serving" in refused.json()["detail"]
    assert ready_during_outage.status_code == 200
    assert recovered.status_code == 200, recovered.text
    assert (recovered.json()["generation"], recovered.json()["changed"]) == (1, {})
    assert len(answers) > 50
    assert [a.error or a.status for a in answers if a.status != 200] == []
    assert {a.body["model_version"] for a in answers if a.body} == {"1"}


def test_a_hung_registry_is_bounded_and_a_second_refresh_meanwhile_is_409(
    service_factory, mlflow_server: MlflowServer
) -> None:
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, "WORKERS": "1", "API_KEYS": ADMIN_KEY,
         "REGISTRY_TIMEOUT_S": "2"},
    )  # fmt: skip
    service.wait_ready()
    headers = {"X-API-Key": ADMIN_KEY}
    assert mlflow_server.process is not None
    # A registry that accepts connections but never answers: its processes stopped, not killed.
    os.killpg(mlflow_server.process.pid, signal.SIGSTOP)
    try:
        with service.client() as first, service.client() as second:
            with ThreadPoolExecutor(1) as pool:
                hung = pool.submit(first.post, "/admin/refresh-models", headers=headers)
                time.sleep(0.5)
                overlapping = second.post("/admin/refresh-models", headers=headers)
                # Without REGISTRY_TIMEOUT_S this would wait on the stopped registry forever.
                refused = hung.result(timeout=60)
            version = second.get("/v1/version").json()
    finally:
        os.killpg(mlflow_server.process.pid, signal.SIGCONT)

    assert overlapping.status_code == 409, overlapping.text
    assert refused.status_code == 502, refused.text
    assert version["generation"] == 1
    with service.client() as client:
        assert client.post("/admin/refresh-models", headers=headers).status_code == 200


def test_started_while_the_registry_is_down_it_is_alive_not_ready_and_becomes_ready_when_it_returns(
    service_factory, mlflow_server: MlflowServer, transactions: pd.DataFrame
) -> None:
    mlflow_server.stop()
    try:
        service = service_factory(
            ["serve"], {"MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, "WORKERS": "1", "REGISTRY_TIMEOUT_S": "2"}
        )
        with service.client() as client:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    if client.get("/livez").status_code == 200:
                        break
                except httpx.TransportError:
                    pass  # still starting (the preflight tries the registry first)
                time.sleep(0.2)
            alive = client.get("/livez")
            # Until its first attempt has failed the service only says it is starting: wait for that attempt.
            deadline = time.monotonic() + 60
            unready = client.get("/readyz")
            while "starting" in unready.json()["reason"] and time.monotonic() < deadline:
                time.sleep(0.2)
                unready = client.get("/readyz")
            time.sleep(3)  # a few failed attempts
            refused = client.post(
                "/v1/predict", json={"instances": json.loads(transactions.head(1).to_json(orient="records"))}
            )
    finally:
        mlflow_server.start()
    service.wait_ready(timeout_s=90)
    with service.client() as client:
        scored = client.post(
            "/v1/predict", json={"instances": json.loads(transactions.head(2).to_json(orient="records"))}
        )

    assert alive.status_code == 200
    assert unready.status_code == 503
    assert unready.headers["retry-after"]
    assert "registry cannot be reached" in unready.json()["reason"], unready.text
    assert refused.status_code == 503
    assert scored.status_code == 200, scored.text
    assert service.process.poll() is None, "it became ready without a restart"
    retries = [json.loads(line) for line in service.log().splitlines() if '"startup.registry_unavailable"' in line]
    delays = [line["retry_in_s"] for line in retries]
    assert len(delays) >= 2, delays
    assert delays == sorted(delays), delays  # backing off, not hammering the registry
