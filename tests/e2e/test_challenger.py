"""Champion and challenger through granian and the real pool: the challenger's decisions counted exactly as MLflow's
own loaders decide, the alias moved and deleted under load, and a challenger the parity gate refuses."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from fraud_inference.demo.dataset import FEATURE_NAMES, make_transactions
from fraud_inference.demo.seeding import log_fraud_model
from fraud_inference.registry import DEFAULT_THRESHOLD
from tests.conftest import use_registry
from tests.load import Load

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-admin-key-0123456789"
SERVED = "fraud-xgboost"


def register_challenger(registry: str, *, threshold: str) -> str:
    """Train a small XGBoost model (another seed, 5 shallow trees: it disagrees with the demo champion on some
    rows), register it as a new version of `SERVED` and point the alias `challenger` at it."""
    features, labels = make_transactions(3_000, seed=5)
    model = xgboost.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(features, labels)
    version = log_fraud_model(
        registry, flavor="xgboost", model=model, X_example=features, registered_name=SERVED,
        tags={"threshold": threshold},
    )  # fmt: skip
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.set_registered_model_alias(SERVED, "challenger", str(version.version))
    return str(version.version)


def decisions_by_mlflow(registry: str, version: str, frame: pd.DataFrame) -> np.ndarray:
    """Fraud (True) or legit per row, as MLflow's own loader of `version` scores it, at the version's threshold."""
    use_registry(registry)
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    threshold = float(client.get_model_version(SERVED, version).tags.get("threshold", DEFAULT_THRESHOLD))
    probabilities = mlflow.xgboost.load_model(f"models:/{SERVED}/{version}").predict_proba(frame)[:, 1]
    return probabilities >= threshold  # type: ignore[no-any-return]


def metric_values(client: httpx.Client, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of `name` on /metrics, by its labels."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == name
    }


def shadow_rows(client: httpx.Client) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: count
        for labels, count in metric_values(client, "fraud_inference_shadow_rows_total").items()
    }


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return rows


def request_in(protocol: str, frame: pd.DataFrame) -> tuple[str, dict[str, Any]]:
    """The path and JSON body that score `frame`'s rows with the served XGBoost model through `protocol`."""
    if protocol == "v1":
        return "/v1/predict", {"model": "xgboost", "instances": records(frame)}
    if protocol == "mlflow-records":
        return "/invocations/xgboost", {"dataframe_records": records(frame)}
    if protocol == "mlflow-split":  # columns: the worker decodes them without rows (`Columns`)
        return "/invocations/xgboost", {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    matrix = frame[list(FEATURE_NAMES)].to_numpy(dtype=float)
    tensor = {"name": "x", "datatype": "FP64", "shape": list(matrix.shape), "data": matrix.tolist()}
    return "/v2/models/xgboost/infer", {"inputs": [tensor]}


def test_the_challengers_decisions_on_every_protocol_are_counted_as_mlflow_decides_and_deleting_its_alias_drops_it(
    service_factory, private_registry: str, transactions: pd.DataFrame
) -> None:
    challenger = register_challenger(private_registry, threshold="0.2")
    champion_fraud = decisions_by_mlflow(private_registry, "1", transactions)
    challenger_fraud = decisions_by_mlflow(private_registry, challenger, transactions)
    # 40 rows, and every row (up to 12) on which the two versions disagree: the counts must show disagreement.
    disagreeing = np.flatnonzero(champion_fraud != challenger_fraud)
    assert len(disagreeing) > 0, "the two versions never disagree on these rows: the test would prove nothing"
    chosen = np.unique(np.concatenate([np.arange(40), disagreeing[:12]]))
    frame = transactions.iloc[chosen]
    by_champion, by_challenger = champion_fraud[chosen], challenger_fraud[chosen]
    expected = {
        (first, second): int(
            np.count_nonzero((by_champion == (first == "fraud")) & (by_challenger == (second == "fraud")))
        )
        for first in ("fraud", "legit")
        for second in ("fraud", "legit")
    }

    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "MODELS": f"xgboost={SERVED}", "API_KEYS": ADMIN_KEY},
    )
    service.wait_ready()
    with httpx.Client(base_url=service.base_url, timeout=180) as client:
        version = client.get("/v1/version").json()["models"]["xgboost"]
        assert version["version"] == "1"
        assert version["challenger"] == {
            "name": SERVED, "version": challenger, "selected_by": "alias:challenger", "state": "active", "share": 1.0,
            "reason": None,
        }  # fmt: skip
        # At light load: one request at a time, and the next only once the challenger has taken its turn. Every
        # protocol is shadowed the same way, through the one scoring core.
        sent = 0
        parts = ((0, 1, "v1"), (1, 5, "mlflow-records"), (6, 10, "oip"), (16, 20, "mlflow-split"), (36, None, "v1"))
        for start, size, protocol in parts:
            part = frame.iloc[start : None if size is None else start + size]
            path, body = request_in(protocol, part)
            answer = client.post(path, json=body)
            assert answer.status_code == 200, answer.text
            sent += len(part)
            deadline = time.monotonic() + 30
            while sum(shadow_rows(client).values()) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
        assert sent == len(frame)
        assert shadow_rows(client) == {"scored": len(frame)}
        counted = {
            (dict(labels)["champion"], dict(labels)["challenger"]): count
            for labels, count in metric_values(client, "fraud_inference_shadow_decisions_total").items()
        }
        assert {key: count for key, count in counted.items() if count} == {k: v for k, v in expected.items() if v}
        # Negative buckets: prometheus-client exports no _count nor _sum, the +Inf bucket counts every row.
        differences = metric_values(client, "fraud_inference_shadow_score_difference_bucket")
        assert differences[frozenset({("model", "xgboost"), ("le", "+Inf")})] == len(frame)
        logged = [json.loads(line) for line in service.log().splitlines() if '"shadow.disagreement"' in line]
        assert len(logged) == expected[("fraud", "legit")] + expected[("legit", "fraud")]
        assert {line["challenger_version"] for line in logged} == {challenger}

        # Moving, then deleting the alias under load: each refresh swaps every worker to a generation with the
        # next challenger, then without one; the champion answers every request meanwhile.
        moved = register_challenger(private_registry, threshold="0.3")
        payload = {"model": "xgboost", "instances": records(frame.head(3))}
        registry = MlflowClient(tracking_uri=private_registry, registry_uri=private_registry)
        with Load(service.base_url, lambda: payload, clients=2, max_seconds=120) as load:
            time.sleep(1.0)
            registry.set_registered_model_alias(SERVED, "challenger", moved)
            move = client.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
            registry.delete_registered_model_alias(SERVED, "challenger")
            refresh = client.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
            time.sleep(1.0)
        answers = load.stop()
        assert move.status_code == 200, move.text
        assert (move.json()["changed"], move.json()["models"]["xgboost"]["challenger"]["version"]) == ({}, moved)
        assert refresh.status_code == 200, refresh.text
        assert refresh.json()["changed"] == {}
        assert refresh.json()["generation"] == move.json()["generation"] + 1
        assert refresh.json()["models"]["xgboost"]["challenger"] is None
        assert client.get("/v1/version").json()["models"]["xgboost"]["challenger"] is None
    assert len(answers) > 20
    assert [a.error or a.status for a in answers if a.status != 200] == []
    assert {a.body["model_version"] for a in answers if a.body} == {"1"}


def test_a_challenger_the_parity_gate_refuses_leaves_the_champion_serving_and_is_reported(
    service_factory, private_registry: str, transactions: pd.DataFrame
) -> None:
    # A real version the gate refuses: a classifier whose classes are "fraud"/"legit" with no positive_class tag,
    # so the service cannot tell which probability is the fraud one (tests/test_parity.py).
    features, labels = make_transactions(1_000, seed=5)
    model = LogisticRegression(max_iter=200).fit(features, np.where(labels == 1, "fraud", "legit"))
    refused = log_fraud_model(
        private_registry, flavor="sklearn", model=model, X_example=features, registered_name=SERVED
    )
    MlflowClient(tracking_uri=private_registry, registry_uri=private_registry).set_registered_model_alias(
        SERVED, "challenger", str(refused.version)
    )
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "MODELS": f"xgboost={SERVED}"}
    )
    service.wait_ready()
    with service.client() as client:
        answer = client.post(
            "/v1/predict", json={"model": "xgboost", "instances": records(transactions.head(3))},
            headers={"X-Request-ID": str(uuid.uuid4())},
        )  # fmt: skip
        version = client.get("/v1/version").json()["models"]["xgboost"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "1"
    assert version["version"] == "1"
    shown = version["challenger"]
    assert (shown["version"], shown["state"]) == (str(refused.version), "refused")
    assert shown["reason"].startswith("parity check: ")
    assert "positive_class" in shown["reason"]
