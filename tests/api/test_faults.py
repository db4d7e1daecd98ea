"""A fault no handler expects: each protocol answers its own 500, and one log line says what happened."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import structlog
from litestar.testing import TestClient

from fraud_inference.dataplane import DataPlane


@pytest.fixture
def broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faked: the scoring core raises what no handler expects. A real one cannot be produced on demand (the
    known ones were fixed), so this stands in for the next unknown bug.

    Faked at `DataPlane.score`, the public step every protocol's scoring passes through (rows to the pool),
    not at a private method."""

    async def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("an unforeseen fault")

    monkeypatch.setattr(DataPlane, "score", fail)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/predict", "v1", {"status_code": 500, "detail": "Internal Server Error"}),
        ("/invocations/xgboost", "mlflow", {"error_code": "INTERNAL_ERROR", "message": "Internal Server Error"}),
        ("/v2/models/xgboost/infer", "oip", {"error": "Internal Server Error"}),
    ],
)
def test_an_unforeseen_fault_is_a_500_in_the_protocols_shape_and_logged_with_its_traceback(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
    broken_core: None,
    path: str,
    body: str,
    expected: dict[str, Any],
) -> None:
    rows: list[dict[str, Any]] = transactions.head(2).to_dict(orient="records")
    tensors = [{"name": n, "shape": [2], "datatype": "FP64", "data": [row[n] for row in rows]} for n in rows[0]]
    payload = {
        "v1": {"instances": rows},
        "mlflow": {"dataframe_records": rows},
        "oip": {"inputs": tensors},
    }[body]
    with structlog.testing.capture_logs() as logs:
        response = client.post(path, json=payload, headers={"X-Request-ID": "fault-1"})
    assert (response.status_code, response.json()) == (500, expected)
    assert response.headers["X-Request-ID"] == "fault-1"
    (line,) = [line for line in logs if line["event"] == "http.unhandled_error"]
    assert (line["log_level"], line["path"], line["request_id"]) == ("error", path, "fault-1")
    assert isinstance(line["exc_info"], RuntimeError)  # rendered as the traceback by the service's processors
