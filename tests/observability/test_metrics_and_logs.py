"""Metrics and logs of a real service through granian: exact counts, worker replacement, request ids, cardinality."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningService, descendants, serving

pytestmark = pytest.mark.slow


def samples(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str) -> float:
    return metrics.get((metric, frozenset(labels.items())), 0.0)


def rows(frame: pd.DataFrame, count: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(frame.head(count).to_json(orient="records"))
    return records


def predict(client: httpx.Client, model: str, instances: list[dict[str, Any]], request_id: str | None = None) -> None:
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = client.post("/v1/predict", json={"model": model, "instances": instances}, headers=headers)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def own_service(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """One `serve` for the module's two tests that cannot use `demo_service`, in the order of this file (pytest's):
    the counters test first, which reads its counts from zero and kills a worker, then the request-id test, which
    stops the service to read its whole log. One start instead of two (tens of seconds each); LOG_LEVEL=DEBUG for
    the worker's `batch.scored` line."""
    env = {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2", "LOG_LEVEL": "DEBUG"}
    with serving(env, tmp_path_factory.mktemp("metrics-and-logs")) as service:
        yield service


def test_counters_match_what_was_sent_and_survive_a_worker_replacement(
    own_service: RunningService, transactions: pd.DataFrame
) -> None:
    service = own_service  # no request has reached it yet: this test comes first in the module
    with service.client() as client:
        for _ in range(30):
            predict(client, "xgboost", rows(transactions, 5))
        for _ in range(20):
            predict(client, "lightgbm", rows(transactions, 2))
        before = samples(client)
        assert value(before, "fraud_inference_predictions_total", model="xgboost", version="1") == 30
        assert value(before, "fraud_inference_rows_scored_total", model="xgboost", version="1") == 150
        assert value(before, "fraud_inference_predictions_total", model="lightgbm", version="1") == 20
        assert value(before, "fraud_inference_rows_scored_total", model="lightgbm", version="1") == 40
        assert value(before, "fraud_inference_inference_duration_seconds_count", model="xgboost") == 30
        assert value(before, "fraud_inference_batch_rows_count", model="lightgbm") == 20
        assert value(before, "fraud_inference_batch_rows_sum", model="lightgbm") == 40
        assert value(before, "fraud_inference_fraud_score_count", model="xgboost") == 150
        assert (
            value(before, "fraud_inference_http_requests_total", method="POST", route="/v1/predict", status="200") == 50
        )
        assert value(before, "fraud_inference_http_request_duration_seconds_count", route="/v1/predict") == 50
        assert value(before, "fraud_inference_generation") == 1  # a service no other test has used: its first
        assert value(before, "fraud_inference_pool_workers") == 2
        info = {"model": "sklearn", "name": "fraud-sklearn", "version": "1", "selected_by": "alias:champion"}
        assert value(before, "fraud_inference_model_info", **info, flavor="sklearn") == 1
        # Every worker loaded every model once at startup.
        assert value(before, "fraud_inference_model_loads_total", model="xgboost", outcome="success") == 2

        victim = next(pid for pid, title in descendants(service.process.pid).items() if title.endswith("worker 1"))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60

        def replaced() -> bool:
            now = samples(client)
            return value(now, "fraud_inference_model_loads_total", model="xgboost", outcome="success") == 3

        while time.monotonic() < deadline and not replaced():
            time.sleep(0.2)
        for _ in range(10):
            predict(client, "xgboost", rows(transactions, 1))
        after = samples(client)
    assert value(after, "fraud_inference_predictions_total", model="xgboost", version="1") == 40
    assert value(after, "fraud_inference_rows_scored_total", model="xgboost", version="1") == 160
    assert value(after, "fraud_inference_worker_restarts_total") == 1
    assert value(after, "fraud_inference_pool_workers") == 2
    assert value(after, "fraud_inference_model_loads_total", model="xgboost", outcome="success") == 3


_CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
"""structlog's console renderer: `2026-11-30 17:09:46 [info     ] event ...`."""


def test_the_request_id_is_in_the_server_line_and_the_worker_line(
    own_service: RunningService, transactions: pd.DataFrame
) -> None:
    service = own_service  # the module's last user of it: stopped here
    with service.client() as client:
        predict(client, "sklearn", rows(transactions, 4), request_id="trace-both-sides")
    assert service.stop() == 0
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    # The server's lines carry the request's id; the worker's line, one per batch, the ids of every request in it.
    traced = [
        line
        for line in lines
        if line.get("request_id") == "trace-both-sides" or "trace-both-sides" in line.get("request_ids", [])
    ]
    roles = {line["role"] for line in traced}
    assert "server" in roles
    assert any(role.startswith("worker ") for role in roles), traced
    (worker_line,) = [line for line in traced if line["role"].startswith("worker ")]
    assert (worker_line["event"], worker_line["model"], worker_line["rows"]) == ("batch.scored", "sklearn", 4)
    assert all({"timestamp", "level", "event", "role"} <= line.keys() for line in lines)
    assert all(line["timestamp"].endswith("Z") for line in lines)
    # The process gating new versions against MLflow's loaders logs as JSON too (it printed console lines).
    assert "parity" in {line["role"] for line in lines}
    assert not [line for line in service.log().splitlines() if _CONSOLE_LINE.match(line)]


def test_hostile_paths_and_models_do_not_grow_the_series(
    demo_service: RunningService, transactions: pd.DataFrame
) -> None:
    """On the session's shared service: counts are deltas from a scrape after the warm-up."""
    service = demo_service
    instance = rows(transactions, 1)
    with service.client() as client:
        client.get(f"/warmup/{uuid.uuid4().hex}")
        client.post("/v1/predict", json={"model": "warmup", "instances": instance})
        samples(client)  # the scrape's own series exist from here on
        warm = samples(client)
        for _ in range(500):
            client.get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}")
            client.post("/v1/predict", json={"model": uuid.uuid4().hex, "instances": instance})
        after = samples(client)
    assert len(after) == len(warm)
    for method, route in (("GET", "<unmatched>"), ("POST", "/v1/predict")):
        labels = {"method": method, "route": route, "status": "404"}
        counted = value(after, "fraud_inference_http_requests_total", **labels)
        assert counted - value(warm, "fraud_inference_http_requests_total", **labels) == 500, (method, route)


def test_metrics_show_readiness_and_cpu_and_memory_of_the_server_and_each_worker(
    demo_service: RunningService, transactions: pd.DataFrame
) -> None:
    """On the session's shared service: the score counts are deltas."""
    service = demo_service
    with service.client() as client:
        before = samples(client)
        for _ in range(20):
            predict(client, "xgboost", rows(transactions, 50))
        scrape = client.get("/metrics")
        now = samples(client)
    assert scrape.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(now, "fraud_inference_ready") == 1
    for process in ("server", "worker 1", "worker 2"):
        assert value(now, "fraud_inference_process_cpu_seconds_total", process=process) > 0, process
        # Each process holds at least its Python runtime and numpy: far over 10 MiB.
        assert value(now, "fraud_inference_process_resident_memory_bytes", process=process) > 10 * 2**20, process
    scored = value(now, "fraud_inference_fraud_score_count", model="xgboost")
    assert scored - value(before, "fraud_inference_fraud_score_count", model="xgboost") == 1000
    every = value(now, "fraud_inference_fraud_score_bucket", model="xgboost", le="+Inf")
    assert every - value(before, "fraud_inference_fraud_score_bucket", model="xgboost", le="+Inf") == 1000
