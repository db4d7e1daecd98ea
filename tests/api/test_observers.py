"""Scoring observers: every scored request of every protocol is handed over as served, after its answer, and an
observer that fails never fails the request."""

from __future__ import annotations

import json
import queue

import numpy as np
import pandas as pd
from litestar.testing import TestClient

from fraud_inference.observers import ScoredRequest
from fraud_inference.service import FraudService
from tests.api.test_predict import rows


def service_of(client: TestClient) -> FraudService:  # type: ignore[type-arg]
    service: FraudService = client.app.state.service
    return service


def test_each_scored_request_is_handed_to_observers_as_served_and_a_failing_one_is_skipped(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
) -> None:
    handed: queue.Queue[ScoredRequest] = queue.Queue()

    def record(request: ScoredRequest) -> None:
        handed.put(request)

    def fail(_request: ScoredRequest) -> None:
        raise RuntimeError("a broken observer (faked: the fault is the point)")

    service = service_of(client)
    service.observers.add(fail)
    service.observers.add(record)
    try:
        instances = rows(transactions, 3)
        response = client.post(
            "/v1/predict", json={"model": "lightgbm", "instances": instances}, headers={"x-request-id": "observed-1"}
        )
        assert response.status_code == 200, response.text
        first = handed.get(timeout=10)
        oip = client.post(
            "/invocations/xgboost", json={"dataframe_records": instances}, headers={"x-request-id": "observed-2"}
        )
        assert oip.status_code == 200, oip.text
        # Handed over after the answer, on the app's loop: waited for, not assumed done when the client has it.
        second = handed.get(timeout=10)
    finally:
        service.observers.remove(fail)
        service.observers.remove(record)
    answer = response.json()
    assert first.request_id == "observed-1"
    assert first.scored.selection.key == "lightgbm"
    assert first.scored.ref.version == answer["model_version"]
    assert first.scored.selection.generation.number == answer["generation"]
    assert isinstance(first.rows, bytes)
    assert json.loads(first.rows) == instances
    served = [prediction["fraud_probability"] for prediction in answer["predictions"]]
    np.testing.assert_array_equal(first.scored.probabilities, served)
    assert (first.request_id, second.request_id) == ("observed-1", "observed-2")
    assert (first.protocol, second.protocol) == ("v1", "mlflow")
