"""Overload and a hung worker, through granian: fast 503s past QUEUE_LIMIT, 504s bounded by the timeout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import slow_xgboost_copy, use_registry
from tests.e2e.test_hot_swap import promote, rows, wait_replaced, worker_pids
from tests.load import Answer, Load

# NOTE: soak, out of the default run: bursts and seconds-long loads through granian. The default run keeps the same
# behaviours in the pool (pool/test_queue.py: refused at once past the limit; pool/test_pool.py: a hung worker times
# out its request and is replaced, a slow request times out alone); `.ci/run` runs this module with -m soak.
pytestmark = [pytest.mark.slow, pytest.mark.soak]


def p99_ms(answers: list[Answer]) -> float:
    return float(np.percentile([a.latency_s for a in answers], 99) * 1000) if answers else 0.0


def test_a_burst_past_capacity_gets_fast_503s_and_the_service_recovers(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2", "QUEUE_LIMIT": "4"})
    service.wait_ready()
    heavy = {"model": "sklearn", "instances": rows(transactions, 400)}
    light = {"model": "xgboost", "instances": rows(transactions, 1)}
    with Load(service.base_url, lambda: heavy, clients=24, max_seconds=8, max_requests=3_000) as burst:
        time.sleep(2.0)
        with service.client() as client:
            during = client.post("/v1/predict", json=heavy)
            while during.status_code == 200 and burst.count() < 3_000:
                during = client.post("/v1/predict", json=heavy)
    answers = burst.stop()
    with service.client() as client:
        after = [client.post("/v1/predict", json=light) for _ in range(30)]

    statuses = {a.status for a in answers}
    accepted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 503]
    lost = sum(a.error is not None for a in answers)
    # Client-side latencies include 24 Python threads encoding 400-row bodies under one GIL; the server's own
    # access log says how long it took to answer each.
    access = [json.loads(line) for line in service.log().splitlines() if '"http.request"' in line]
    server_ms = {status: [line["duration_ms"] for line in access if line["status"] == status] for status in (200, 503)}
    accepted_ms, refused_ms = (float(np.percentile(server_ms[status], 99)) for status in (200, 503))
    print(
        f"\nburst: {len(answers)} requests, {len(accepted)} accepted (p99 {p99_ms(accepted):.0f} ms at the client, "
        f"{accepted_ms:.1f} ms in the server), {len(refused)} refused with 503 (p99 {p99_ms(refused):.0f} ms at the "
        f"client, {refused_ms:.1f} ms in the server), lost {lost}"
    )
    assert statuses <= {200, 503}, [a.error or a.status for a in answers if a.status not in {200, 503}]
    assert accepted
    assert refused, "24 clients of 400-row requests should overflow a queue of 4"
    assert all(a.body is not None and a.body["detail"].startswith("overloaded") for a in refused)
    assert during.status_code == 503
    assert during.headers["retry-after"] == "1"
    assert [response.status_code for response in after] == [200] * 30
    assert service.process.poll() is None


def test_a_stopped_worker_under_load_costs_at_most_its_own_requests_and_is_replaced(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2", "INFERENCE_TIMEOUT_S": "2"}
    )
    service.wait_ready()
    hung = worker_pids(service)["fraud-inference worker 1"]
    payload: dict[str, Any] = {"model": "xgboost", "instances": rows(transactions, 5)}
    with Load(service.base_url, lambda: payload, clients=4, max_seconds=120) as load:
        time.sleep(1.0)
        os.kill(hung, signal.SIGSTOP)  # alive and silent: a worker stuck in a call
        stopped_ns = time.monotonic_ns()
        try:
            ready = wait_replaced(service, "fraud-inference worker 1", hung, deadline=time.monotonic() + 100)
            replaced_s = (time.monotonic_ns() - stopped_ns) / 1e9
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
        time.sleep(1.0)
    answers = load.stop()

    timed_out = [a for a in answers if a.status == 504]
    print(
        f"\nSIGSTOP: {len(answers)} requests, {len(timed_out)} answered 504, the rest 200; "
        f"two live workers again after {replaced_s:.1f} s"
    )
    assert {a.status for a in answers} <= {200, 504}, [a.error or a.status for a in answers if a.status is None]
    # Only requests already inside the stopped worker (two batches, each at most the 4 clients' requests) wait
    # out the timeout; everything sent after goes to the live worker.
    assert len(timed_out) <= 4
    assert all(a.body is not None and "within 2 s" in a.body["detail"] for a in timed_out)
    assert ready["live_workers"] == 2
    assert hung not in worker_pids(service).values()
    assert '"worker.hung"' in service.log()
    with httpx.Client(base_url=service.base_url) as client:
        assert client.post("/v1/predict", json=payload).status_code == 200


def test_a_slow_request_answers_504_and_its_only_worker_answers_the_next_at_once(
    service_factory, private_registry: str, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    """The public report: one request scored longer than INFERENCE_TIMEOUT_S got its 504, then its worker was
    killed as hung, and with one worker everything answered 503 while the replacement loaded."""
    import mlflow.artifacts

    use_registry(private_registry)
    champion = Path(mlflow.artifacts.download_artifacts("models:/fraud-xgboost/1", dst_path=str(tmp_path / "v1")))
    model_dir = next(path.parent for path in champion.rglob("MLmodel"))
    slow_model = slow_xgboost_copy(model_dir, tmp_path / "slow")
    assert promote(private_registry, "fraud-xgboost", source=str(slow_model)) == "2"
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "INFERENCE_TIMEOUT_S": "1",
         "MODELS": "xgboost=fraud-xgboost"},
    )  # fmt: skip
    service.wait_ready()
    worker = worker_pids(service)
    large = json.loads(pd.concat([transactions] * 20).head(10_000).to_json(orient="records"))
    with service.client() as client:
        slow = client.post("/v1/predict", json={"instances": large})
        following = [client.post("/v1/predict", json={"instances": rows(transactions, 5)}) for _ in range(5)]
        ready = client.get("/readyz")
    assert slow.status_code == 504, slow.text
    assert [answer.status_code for answer in following] == [200] * 5, [answer.text for answer in following]
    assert {answer.json()["model_version"] for answer in following} == {"2"}
    assert ready.status_code == 200, ready.text
    assert worker_pids(service) == worker
    assert '"worker.hung"' not in service.log()
    assert '"worker.died"' not in service.log()
