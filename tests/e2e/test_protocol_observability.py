"""Every protocol shows in the metrics (by route template) and in the access log (route, protocol, model, rows),
through a real `fraud-inference serve`."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraud_inference.demo.dataset import FEATURES
from tests.conftest import RunningService

pytestmark = pytest.mark.slow


def counter(client: httpx.Client, metric: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return 0.0


def access_lines(service: RunningService, request_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The `http.request` lines of `request_ids`, waiting for them: a line is written after its answer is sent."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while set(found) != request_ids and time.monotonic() < deadline:
        for text in service.log().splitlines():
            line = json.loads(text) if text.startswith("{") else {}
            if line.get("event") == "http.request" and line.get("request_id") in request_ids:
                found[line["request_id"]] = line
        time.sleep(0.1)
    return found


def test_each_protocol_is_counted_under_its_route_and_logged_with_its_protocol(
    demo_service: RunningService, transactions: pd.DataFrame
) -> None:
    """On the session's shared service: counts are deltas from before this test's requests."""
    service = demo_service
    frame = transactions.head(3)
    records = json.loads(frame.to_json(orient="records"))
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=float)
    oip = {"inputs": [{"name": "x", "datatype": "FP64", "shape": list(matrix.shape), "data": matrix.tolist()}]}
    calls = {
        ("/v1/predict", "v1"): ("/v1/predict", {"model": "sklearn", "instances": records}),
        ("/invocations/{model}", "mlflow"): ("/invocations/sklearn", {"dataframe_records": records}),
        ("/v2/models/{model}/infer", "oip"): ("/v2/models/sklearn/infer", oip),
    }
    with service.client() as client:
        before = {route: counter(client, "fraud_inference_http_requests_total", method="POST", route=route,
                                 status="200") for route, _protocol in calls}  # fmt: skip
        scored_before = counter(client, "fraud_inference_rows_scored_total", model="sklearn", version="1")
        unmatched_before = counter(client, "fraud_inference_http_requests_total", method="GET", route="<unmatched>",
                                   status="404")  # fmt: skip
        for (_route, protocol), (path, body) in calls.items():
            response = client.post(path, json=body, headers={"X-Request-ID": f"obs-{protocol}"})
            assert response.status_code == 200, response.text
        access = access_lines(service, {f"obs-{protocol}" for _route, protocol in calls})
        for route, protocol in calls:
            line = access[f"obs-{protocol}"]
            assert (line["route"], line["protocol"], line["status"]) == (route, protocol, 200)
            assert (line["model"], line["version"], line["rows"]) == ("sklearn", "1", 3)
            now = counter(client, "fraud_inference_http_requests_total", method="POST", route=route, status="200")
            assert now - before[route] == 1, route
        assert counter(client, "fraud_inference_rows_scored_total", model="sklearn", version="1") - scored_before == 9
        client.get("/no/such/path")
        unmatched = counter(client, "fraud_inference_http_requests_total", method="GET", route="<unmatched>",
                            status="404")  # fmt: skip
        assert unmatched - unmatched_before == 1
