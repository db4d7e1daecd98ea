"""gRPC through the service's life, with the real tritonclient.grpc client: a client's deadline shorter than the
scoring (DEADLINE_EXCEEDED, the work freed as REST's timeout frees it) and an overloaded queue
(RESOURCE_EXHAUSTED); a refresh under gRPC load; health and readiness while no model can load; SIGTERM
draining the calls in flight; BYTES tensors for a real model's string features.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import mlflow
import msgspec
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from fraud_inference.demo.dataset import FEATURES
from tests.conftest import RunningService, free_port, slow_xgboost_copy, use_registry
from tests.e2e.test_hot_swap import ADMIN_KEY, probabilities, promote, worker_pids

pytestmark = [pytest.mark.slow, pytest.mark.soak]

NAMES = [feature.name for feature in FEATURES]
NUMPY = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


def matrix_input(frame: pd.DataFrame) -> triton.InferInput:
    matrix = frame[NAMES].to_numpy(dtype=np.float64)
    tensor = triton.InferInput("transactions", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)
    return tensor


class Outcome(msgspec.Struct):
    sent_at: float
    received_at: float
    version: str | None = None
    probabilities: list[float] | None = None
    status: str | None = None
    """The gRPC status code of a failed call."""


class GrpcLoad:
    """`clients` threads, each with its own tritonclient.grpc client, sending `frame` to `model` until stopped."""

    def __init__(self, target: str, model: str, frame: pd.DataFrame, *, clients: int = 4) -> None:
        self._target, self._model, self._frame = target, model, frame
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> GrpcLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.outcomes

    def _run(self) -> None:
        client = triton.InferenceServerClient(self._target)
        tensor = matrix_input(self._frame)
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    result = client.infer(self._model, [tensor], client_timeout=30)
                    response = result.get_response()
                    outcome = Outcome(sent, time.monotonic(), version=response.model_version,
                                      probabilities=result.as_numpy("fraud_probability").tolist())  # fmt: skip
                except InferenceServerException as error:
                    outcome = Outcome(sent, time.monotonic(), status=str(error.status()))
                with self._lock:
                    self.outcomes.append(outcome)
        finally:
            client.close()


def test_a_refresh_under_grpc_load_swaps_with_no_failed_call(
    service_factory: Any, private_registry: str, transactions: pd.DataFrame
) -> None:
    sample = transactions.head(5)
    by_v1 = probabilities(private_registry, "fraud-xgboost", "1", sample, mlflow.xgboost)
    by_v2 = probabilities(private_registry, "fraud-lightgbm", "1", sample, mlflow.lightgbm)
    service: RunningService = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "2", "API_KEYS": ADMIN_KEY}
    )
    service.wait_ready()
    # NOTE: the refresh compiles the new version's trees for its parity gate while four clients keep both cores
    # busy: on this machine that took ~30 s, past httpx's default timeout.
    admin = httpx.Client(base_url=service.base_url, timeout=180)
    with GrpcLoad(service.grpc_target, "xgboost", sample) as load, admin:
        time.sleep(1.5)
        assert promote(private_registry, "fraud-xgboost", "fraud-lightgbm") == "2"
        refresh = admin.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
        refreshed = time.monotonic()
        time.sleep(1.5)
    outcomes = load.stop()
    assert refresh.status_code == 200, refresh.text
    assert refresh.json()["changed"] == {"xgboost": {"from": "1", "to": "2"}}
    assert len(outcomes) > 50
    assert [o.status for o in outcomes if o.status is not None] == []
    for outcome in outcomes:
        expected = by_v1 if outcome.version == "1" else by_v2
        assert outcome.version in {"1", "2"}
        np.testing.assert_allclose(outcome.probabilities, expected, rtol=0, atol=1e-6)  # type: ignore[arg-type]
        if outcome.sent_at > refreshed:
            assert outcome.version == "2", "a call sent after the refresh returned was scored by the old version"
    assert {o.version for o in outcomes} == {"1", "2"}


def test_a_deadline_shorter_than_scoring_is_deadline_exceeded_and_frees_the_worker(
    service_factory: Any, private_registry: str, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    import mlflow.artifacts

    use_registry(private_registry)
    champion = Path(mlflow.artifacts.download_artifacts("models:/fraud-xgboost/1", dst_path=str(tmp_path / "v1")))
    model_dir = next(path.parent for path in champion.rglob("MLmodel"))
    assert (
        promote(private_registry, "fraud-xgboost", source=str(slow_xgboost_copy(model_dir, tmp_path / "slow"))) == "2"
    )
    service: RunningService = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "INFERENCE_TIMEOUT_S": "8", "QUEUE_LIMIT": "1",
         "MODELS": "xgboost=fraud-xgboost"},
    )  # fmt: skip
    service.wait_ready()
    worker = worker_pids(service)
    large = pd.concat([transactions] * 20).head(10_000)
    results: dict[str, Any] = {}

    def call(name: str, frame: pd.DataFrame, deadline_s: float) -> None:
        client = triton.InferenceServerClient(service.grpc_target)
        started = time.monotonic()
        try:
            results[name] = client.infer("xgboost", [matrix_input(frame)], client_timeout=deadline_s)
        except InferenceServerException as error:
            results[name] = error
        finally:
            results[f"{name}_s"] = time.monotonic() - started
            client.close()

    slow = threading.Thread(target=call, args=("slow", large, 1.5))
    waiting = threading.Thread(target=call, args=("waiting", transactions.head(5), 30))
    slow.start()
    time.sleep(0.5)  # the worker has the large batch: the next call waits in the queue (QUEUE_LIMIT=1)
    waiting.start()
    time.sleep(0.3)
    call("refused", transactions.head(5), 30)
    slow.join()
    waiting.join()
    following = []
    for _ in range(5):
        call("next", transactions.head(5), 30)
        following.append(results["next"])
    # A client that cancels (its deadline far off) is counted CANCELLED, apart from the deadline above.
    with grpc.insecure_channel(service.grpc_target) as channel:
        request = service_pb2.ModelInferRequest(model_name="xgboost")
        request.inputs.add(name="transactions", datatype="FP64", shape=[len(large), len(NAMES)])
        request.raw_input_contents.append(large[NAMES].to_numpy(dtype=np.float64).tobytes())
        cancelled = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(request, timeout=30)
        time.sleep(0.5)  # the worker has it
        cancelled.cancel()
    counts = grpc_counts(service, "ModelInfer")
    bound = time.monotonic() + 30  # a bound, not a timing: the server sees the cancel when the stream's reset arrives
    while "CANCELLED" not in counts and time.monotonic() < bound:
        time.sleep(0.2)
        counts = grpc_counts(service, "ModelInfer")

    assert isinstance(results["slow"], InferenceServerException), results["slow"]
    assert results["slow"].status() == "StatusCode.DEADLINE_EXCEEDED"
    assert results["slow_s"] < 3.0
    assert isinstance(results["refused"], InferenceServerException), results["refused"]
    assert results["refused"].status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "overloaded" in results["refused"].message()
    # Freed: the waiting call is answered once the slow one's deadline has passed, not after its whole batch.
    assert not isinstance(results["waiting"], InferenceServerException), results["waiting"]
    assert results["waiting"].get_response().model_version == "2"
    assert results["waiting_s"] < 5.0, results["waiting_s"]
    assert all(not isinstance(r, InferenceServerException) for r in following), following
    assert worker_pids(service) == worker
    assert '"worker.hung"' not in service.log()
    lines = [json.loads(line) for line in service.log().splitlines() if '"grpc.request"' in line]
    assert {line["status"] for line in lines} >= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}
    # The deadline that passed is DEADLINE_EXCEEDED in the metrics too (grpcio cancels the call at the deadline:
    # that was counted CANCELLED before), and only the call cancelled by its client is CANCELLED.
    assert counts["DEADLINE_EXCEEDED"] == 1, counts
    assert counts["CANCELLED"] == 1, counts


def grpc_counts(service: RunningService, method: str) -> dict[str, float]:
    """fraud_inference_grpc_requests_total of `method`, by status code."""
    with service.client() as http:
        metrics = http.get("/metrics").text
    found = re.findall(rf'fraud_inference_grpc_requests_total{{code="(\w+)",method="{method}"}} (\S+)', metrics)
    return {code: float(value) for code, value in found}


def test_health_and_readiness_answer_not_ready_with_the_reason_while_the_registry_is_unreachable(
    service_factory: Any, transactions: pd.DataFrame
) -> None:
    registry = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the first generation never loads
    service: RunningService = service_factory(["serve"], {"MLFLOW_TRACKING_URI": registry, "WORKERS": "1"})
    service.wait_listening()
    request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    client = triton.InferenceServerClient(service.grpc_target)
    try:
        with grpc.insecure_channel(service.grpc_target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert not client.is_model_ready("xgboost")
        with pytest.raises(InferenceServerException) as refused:
            client.infer("xgboost", [matrix_input(transactions.head(1))], client_timeout=10)
    finally:
        client.close()
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert refused.value.message().startswith("not ready: ")


def test_sigterm_drains_the_grpc_calls_in_flight(
    service_factory: Any, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service: RunningService = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1"})
    service.wait_ready()
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(service.grpc_target) as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
    with GrpcLoad(service.grpc_target, "xgboost", transactions.head(500), clients=4) as load:
        time.sleep(1.0)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(timeout=60) == 0
    outcomes = load.stop()
    in_flight = [o for o in outcomes if o.sent_at < signalled < o.received_at]
    assert in_flight, "no call was in flight at SIGTERM"
    assert [o.status for o in outcomes if o.sent_at < signalled and o.status is not None] == []
    assert '"grpc.stopped"' in service.log()


def test_an_open_health_watch_sees_not_serving_and_ends_without_holding_up_the_stop(
    service_factory: Any, demo_registry: str
) -> None:
    """A Watch stream (load balancers keep one open) used to run on until the server's grace period (here 600 s)
    cancelled it, long after every call had been answered."""
    env = {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "INFERENCE_TIMEOUT_S": "600"}
    service: RunningService = service_factory(["serve"], env)
    service.wait_ready()
    seen: list[int] = []
    with grpc.insecure_channel(service.grpc_target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=300)
        seen.append(next(stream).status)
        service.process.send_signal(signal.SIGTERM)
        seen.extend(response.status for response in stream)  # ends when the server ends it
        # A deadline far below the grace period: the stop did not wait for the stream.
        assert service.process.wait(timeout=120) == 0
    assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]


def test_bytes_tensors_score_a_real_string_model_as_v1_predict(
    service_factory: Any, real_models: tuple[str, dict[str, str]]
) -> None:
    from tests.real_models import make_fraud_table

    tracking_uri, names = real_models
    service: RunningService = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": tracking_uri, "WORKERS": "1", "MODELS": f"lgb={names['lgb-classifier']}"}
    )
    service.wait_ready()
    table = make_fraud_table(200, seed=5)[0].dropna().head(30)
    client = triton.InferenceServerClient(service.grpc_target)
    try:
        metadata = client.get_model_metadata("lgb", as_json=True)
        datatypes = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
        assert datatypes["merchant_category"] == datatypes["country"] == "BYTES"
        inputs = []
        for name, datatype in datatypes.items():
            tensor = triton.InferInput(name, [len(table)], datatype)
            if datatype == "BYTES":
                values = np.array([value.encode() for value in table[name]], dtype=np.object_)
            else:
                values = table[name].to_numpy(dtype=NUMPY[datatype])
            tensor.set_data_from_numpy(values)
            inputs.append(tensor)
        result = client.infer("lgb", inputs)
    finally:
        client.close()
    instances = json.loads(table.to_json(orient="records"))
    with service.client() as http:
        expected = http.post("/v1/predict", json={"model": "lgb", "instances": instances}).json()["predictions"]
    served = np.array([p["fraud_probability"] for p in expected])
    assert np.max(np.abs(result.as_numpy("fraud_probability") - served)) <= 1e-12
    assert result.as_numpy("is_fraud").tolist() == [p["is_fraud"] for p in expected]
