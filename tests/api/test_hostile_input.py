"""Hostile bodies: each gets a 4xx naming what is wrong, nothing long is echoed, and no worker dies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest
from litestar.testing import TestClient

from fraud_inference.api.app import create_app
from fraud_inference.settings import Settings
from tests.api.conftest import wait_ready
from tests.api.test_predict import rows

JSON = {"content-type": "application/json"}


def post(client: TestClient, body: bytes) -> tuple[int, str]:  # type: ignore[type-arg]
    response = client.post("/v1/predict", content=body, headers=JSON)
    return response.status_code, response.json()["detail"]


@pytest.mark.parametrize("depth", [1_000, 30_000])  # 60 KB: under the fixture's MAX_BODY_BYTES
def test_deep_nesting_is_400_and_cannot_blow_the_stack(client: TestClient, depth: int) -> None:  # type: ignore[type-arg]
    assert post(client, b'{"instances": ' + b"[" * depth + b"]" * depth + b"}") == (
        400,
        "malformed JSON: nested too deeply",
    )
    status, detail = post(client, b'{"instances": [{"amount": ' + b"[" * depth + b"]" * depth + b"}]}")
    assert status == 400, detail


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_numbers_are_400(client: TestClient, transactions: pd.DataFrame, token: bytes) -> None:  # type: ignore[type-arg]
    body = json.dumps({"instances": rows(transactions, 1)}).encode()
    body = body.replace(b'"amount": ', b'"amount": ' + token + b', "was": ', 1)
    status, detail = post(client, body)
    assert status == 400
    assert "malformed JSON" in detail


def test_a_huge_unknown_feature_name_is_not_echoed_back(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    row = rows(transactions, 1)[0] | {"x" * 50_000: 1.0}
    status, detail = post(client, json.dumps({"instances": [row]}).encode())
    assert status == 422
    assert "instances[0]" in detail
    assert "unknown field" in detail
    assert len(detail) < 2_000
    status, detail = post(client, json.dumps({"instances": [], "y" * 50_000: 1}).encode())
    assert (status, len(detail) < 500) == (422, True)
    response = client.post("/v1/predict", json={"model": "m" * 50_000, "instances": rows(transactions, 1)})
    assert response.status_code == 404
    assert len(response.json()["detail"]) < 500


def test_hostile_rows_in_a_burst_fail_alone_and_no_worker_dies(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    restarts = client.get("/metrics").text.count("fraud_inference_worker_restarts_total 0.0")
    hostile = [
        b'{"instances": [{"amount": {"nested": [1, 2, {"deeper": null}]}}]}',
        b'{"instances": [[1, 2, 3]]}',
        b'{"instances": [null]}',
        b'{"instances": "not rows"}',
        b'{"instances": [{"amount": 1e999}]}',
        b'{"instances": [{"amount": 18446744073709551616}]}',
    ]
    for body in hostile:
        status, detail = post(client, body)
        assert status == 422, (body, detail)
        assert detail.startswith("instances"), detail
    assert client.post("/v1/predict", json={"instances": rows(transactions, 2)}).status_code == 200
    assert client.get("/metrics").text.count("fraud_inference_worker_restarts_total 0.0") == restarts == 1


@pytest.fixture(scope="module")
def generic_client(demo_registry: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    settings = Settings.from_env(
        {"GRPC": "off", "MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "ERROR_DETAIL": "generic"}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


def test_generic_error_detail_names_no_feature(generic_client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    features = list(transactions.columns)
    cases = []
    for mutate in (
        lambda row: row.pop("amount"),
        lambda row: row.update(amount="12.5"),
        lambda row: row.update(favourite_colour=3),
    ):
        instances = rows(transactions, 3)
        mutate(instances[1])
        cases.append(json.dumps({"instances": instances}).encode())
    overflow = json.dumps({"instances": rows(transactions, 1)}).replace('"amount": ', '"amount": 1e999, "x": ', 1)
    cases.append(overflow.encode())
    for body in cases:
        status, detail = post(generic_client, body)
        assert status == 422
        assert detail.startswith("instances["), detail
        assert not [name for name in [*features, "favourite_colour"] if name in detail], detail
    response = generic_client.post("/v1/predict", json={"model": "catboost", "instances": rows(transactions, 1)})
    assert response.status_code == 404
    assert "xgboost" not in response.json()["detail"]
