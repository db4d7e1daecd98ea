"""POST /v1/predict through the real app and the real worker pool: answers and every error status."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from litestar.testing import TestClient

from tests.api.conftest import MAX_BATCH_ROWS, MAX_BODY_BYTES
from tests.conftest import use_registry

FLAVOR_LOADERS = {"xgboost": mlflow.xgboost, "lightgbm": mlflow.lightgbm, "sklearn": mlflow.sklearn}


def rows(frame: pd.DataFrame, count: int) -> list[dict[str, float | int]]:
    records: list[dict[str, float | int]] = json.loads(frame.head(count).to_json(orient="records"))
    return records


@pytest.mark.parametrize("model", ["xgboost", "lightgbm", "sklearn"])
def test_scores_equal_mlflow_flavor_loader_probabilities(
    client: TestClient,
    demo_registry: str,
    transactions: pd.DataFrame,
    model: str,  # type: ignore[type-arg]
) -> None:
    instances = rows(transactions, 40)
    response = client.post("/v1/predict", json={"model": model, "instances": instances})
    assert response.status_code == 200, response.text
    body = response.json()
    use_registry(demo_registry)
    reference = FLAVOR_LOADERS[model].load_model(f"models:/{body['model_name']}/{body['model_version']}")
    expected = reference.predict_proba(pd.DataFrame(instances)[list(transactions.columns)])[:, 1]
    served = np.array([p["fraud_probability"] for p in body["predictions"]])
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    assert [p["is_fraud"] for p in body["predictions"]] == [bool(p >= body["threshold"]) for p in served]


def test_answer_names_model_version_and_rule(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    # The app is shared by the package: its generation is whatever earlier tests left, read from the service.
    generation = client.get("/v1/version").json()["generation"]
    response = client.post("/v1/predict", json={"instances": rows(transactions, 2)})
    body = response.json()
    assert response.status_code == 200
    assert body["model"] == "xgboost"  # DEFAULT_MODEL: the first key of MODELS
    assert body["model_name"] == "fraud-xgboost"
    assert body["model_version"] == "1"
    assert body["selected_by"] == "alias:champion"
    assert body["generation"] == generation
    assert body["threshold"] == 0.5
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["predictions"]) == 2


def test_key_order_does_not_change_scores(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    instances = rows(transactions, 10)
    shuffled = [dict(reversed(list(row.items()))) for row in instances]
    first = client.post("/v1/predict", json={"model": "lightgbm", "instances": instances}).json()
    second = client.post("/v1/predict", json={"model": "lightgbm", "instances": shuffled}).json()
    assert first["predictions"] == second["predictions"]


def test_malformed_json_is_400(client: TestClient) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", content=b'{"instances": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["detail"]


def test_unknown_model_is_404_listing_served_keys(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", json={"model": "catboost", "instances": rows(transactions, 1)})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "catboost" in detail
    assert all(key in detail for key in ("xgboost", "lightgbm", "sklearn"))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda row: row.pop("amount"), ["instances[1]", "amount"]),
        (lambda row: row.update(favourite_colour=3), ["instances[1]", "favourite_colour"]),
        (lambda row: row.update(amount="12.5"), ["instances[1].amount", "str"]),
        (lambda row: row.update(amount=True), ["instances[1].amount", "bool"]),
        (lambda row: row.update(hour_of_day=3.5), ["instances[1].hour_of_day", "long"]),
    ],
    ids=["missing-feature", "unknown-feature", "string", "boolean", "fraction-for-integer"],
)
def test_bad_instance_is_422_naming_row_and_feature(
    client: TestClient,
    transactions: pd.DataFrame,
    mutate: object,
    expected: list[str],  # type: ignore[type-arg]
) -> None:
    instances = rows(transactions, 3)
    mutate(instances[1])  # type: ignore[operator]
    response = client.post("/v1/predict", json={"instances": instances})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(part in detail for part in expected), detail


def test_overflowing_number_is_422(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    instances = rows(transactions, 2)
    raw = json.dumps({"instances": instances})
    raw = raw.replace(f'"amount": {json.dumps(instances[0]["amount"])}', '"amount": 1e999', 1)
    response = client.post("/v1/predict", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "instances[0].amount" in response.json()["detail"]
    assert "finite" in response.json()["detail"]


def test_empty_instances_is_422(client: TestClient) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", json={"instances": []})
    assert response.status_code == 422
    assert "empty" in response.json()["detail"]


def test_missing_instances_field_is_422(client: TestClient) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", json={"model": "xgboost"})
    assert response.status_code == 422
    assert "instances" in response.json()["detail"]


def test_too_many_rows_is_413(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", json={"instances": rows(transactions, MAX_BATCH_ROWS + 1)})
    assert response.status_code == 413
    assert "MAX_BATCH_ROWS" in response.json()["detail"]


def test_body_over_limit_is_413(client: TestClient) -> None:  # type: ignore[type-arg]
    response = client.post(
        "/v1/predict", content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_request_id_is_echoed_when_sane(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    response = client.post(
        "/v1/predict",
        json={"instances": rows(transactions, 1)},
        headers={"X-Request-ID": "auth-2026.11_27-x"},
    )
    assert response.headers["x-request-id"] == "auth-2026.11_27-x"
    assert response.json()["request_id"] == "auth-2026.11_27-x"


@pytest.mark.parametrize("sent", ["txn:2026/42", "card+auth@edge=1"])
def test_a_transaction_id_as_fraud_teams_write_them_is_kept(client: TestClient, sent: str) -> None:  # type: ignore[type-arg]
    response = client.get("/livez", headers={"X-Request-ID": sent})
    assert response.headers["x-request-id"] == sent


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "semi;colon", ""])
def test_insane_request_id_is_replaced(client: TestClient, sent: str) -> None:  # type: ignore[type-arg]
    response = client.get("/livez", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert returned != sent
    assert 1 <= len(returned) <= 128


def test_request_id_is_on_error_responses(client: TestClient) -> None:  # type: ignore[type-arg]
    not_found = client.get("/no/such/path", headers={"X-Request-ID": "err-1"})
    bad = client.post("/v1/predict", content=b"{", headers={"X-Request-ID": "err-2"})
    assert (not_found.status_code, not_found.headers["x-request-id"]) == (404, "err-1")
    assert (bad.status_code, bad.headers["x-request-id"]) == (400, "err-2")
    assert "detail" in not_found.json()
