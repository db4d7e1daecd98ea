"""A model version that kills the worker loading it: the pool backs off, readiness says why, and it heals."""

from __future__ import annotations

import json
import os
import time

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from fraud_inference.demo.dataset import make_transactions
from tests.conftest import use_registry

# NOTE: soak, out of the default run: a worker crash loop through granian with backoffs (minutes on a busy machine).
# With the default PARITY_CHECK the gate refuses this model before serving (test_parity.py, in the default run), and
# a dying worker replaced by the pool is in pool/test_pool.py; `.ci/run` runs this module with -m soak.
pytestmark = [pytest.mark.slow, pytest.mark.soak]


class ExitsWhenUnpickled:
    """A fault we cannot get from a healthy model: unpickling it ends the process (as a native crash would)."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (os._exit, (70,))


def log_crashing_champion(registry: str) -> None:
    use_registry(registry)
    features, _ = make_transactions(20, seed=3)
    mlflow.set_experiment("crash-loop")
    with mlflow.start_run():
        # No input example: MLflow would load the model to validate it, and that would end this process.
        info = mlflow.sklearn.log_model(
            sk_model=ExitsWhenUnpickled(),
            name="model",
            signature=infer_signature(features),
            registered_model_name="fraud-sklearn",
            serialization_format="pickle",
        )
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.set_registered_model_alias("fraud-sklearn", "champion", str(info.registered_model_version))


def test_a_model_that_crashes_its_worker_backs_off_explains_itself_and_recovers(
    service_factory, private_registry: str
) -> None:
    log_crashing_champion(private_registry)
    service = service_factory(
        ["serve"],
        # PARITY_CHECK=off: the gate would refuse this model before serving (tests/test_parity.py); this test is
        # about what the pool does when a model gets past it.
        {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "MODELS": "sklearn=fraud-sklearn",
         "SKLEARN_PICKLE": "allow", "PARITY_CHECK": "off"},
    )  # fmt: skip
    with service.client() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"worker.restart_backoff"' not in service.log():
            time.sleep(0.5)
        service.wait_listening()
        alive, unready = client.get("/livez"), client.get("/readyz")
        MlflowClient(tracking_uri=private_registry, registry_uri=private_registry).set_registered_model_alias(
            "fraud-sklearn", "champion", "1"
        )  # the data scientist rolls back
    service.wait_ready(timeout_s=120)

    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    deaths = [line for line in lines if line["event"] == "worker.died"]
    backoffs = [line["retry_in_s"] for line in lines if line["event"] == "worker.restart_backoff"]
    assert alive.status_code == 200
    assert unready.status_code == 503
    assert "died while loading" in unready.json()["reason"], unready.text
    assert {line["exitcode"] for line in deaths} == {70}
    assert backoffs, "a worker dying before it loads anything is restarted after a backoff"
    assert backoffs == sorted(backoffs)
    assert service.process.poll() is None
