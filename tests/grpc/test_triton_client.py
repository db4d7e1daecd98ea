"""OIP over gRPC with the real `tritonclient.grpc.InferenceServerClient` against a real `fraud-inference serve`.

Liveness, readiness, metadata; inference from numpy with raw contents (tritonclient's default: one FP64 [n, 20]
tensor, or one tensor per feature) and with typed contents, every probability equal to /v1/predict's within
1e-12; each refusal with its status code; the request id in the trailing metadata and the access log; the
standard health service; the metrics per method.

NOTE: this process imports tritonclient's own compiled proto (package `inference`, as ours): the server's
generated modules are never imported here, since protobuf refuses two files defining the same message names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from fraud_inference.decisions import feature_column
from fraud_inference.demo.dataset import FEATURES
from tests.conftest import RunningService, start_service
from tests.decisions.conftest import wait_for_rows

pytestmark = [pytest.mark.slow]

NUMPY = {"double": np.float64, "long": np.int64}
DATATYPE = {"double": "FP64", "long": "INT64"}
NAMES = [feature.name for feature in FEATURES]
MAX_BATCH_ROWS = 100
MAX_BODY_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def decisions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's decision log (DECISION_LOG)."""
    return tmp_path_factory.mktemp("grpc-decisions")


@pytest.fixture(scope="module")
def service(demo_registry: str, decisions: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {
        "MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "LOG_LEVEL": "INFO",
        "MAX_BATCH_ROWS": str(MAX_BATCH_ROWS), "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "DECISION_LOG": str(decisions), "DECISION_LOG_FLUSH_S": "0.2",
    }  # fmt: skip
    running = start_service(["serve"], env, Path(tmp_path_factory.mktemp("grpc")))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(service: RunningService) -> Iterator[triton.InferenceServerClient]:
    grpc_client = triton.InferenceServerClient(url=service.grpc_target)
    try:
        yield grpc_client
    finally:
        grpc_client.close()


def v1_predictions(service: RunningService, model: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    instances = json.loads(frame.to_json(orient="records"))
    with service.client() as http:
        answer = http.post("/v1/predict", json={"model": model, "instances": instances})
    assert answer.status_code == 200, answer.text
    predictions: list[dict[str, Any]] = answer.json()["predictions"]
    return predictions


def assert_equals_v1(result: Any, expected: list[dict[str, Any]], output: str = "fraud_probability") -> None:
    probabilities = result.as_numpy(output)
    served = np.array([p["fraud_probability"] for p in expected])
    assert np.max(np.abs(probabilities - served)) <= 1e-12
    assert result.as_numpy("is_fraud").tolist() == [p["is_fraud"] for p in expected]


def matrix_input(frame: pd.DataFrame, name: str = "transactions") -> triton.InferInput:
    matrix = frame[NAMES].to_numpy(dtype=np.float64)
    tensor = triton.InferInput(name, list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)
    return tensor


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_liveness_readiness_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "fraud-inference"
    for model in ("xgboost", "lightgbm", "sklearn"):
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, model_version="1")
        assert not client.is_model_ready(model, model_version="9")
        metadata = client.get_model_metadata(model, model_version="1", as_json=True)
        assert (metadata["name"], metadata["versions"]) == (model, ["1"])
        assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
            (f.name, DATATYPE[f.kind], ["-1"]) for f in FEATURES
        ]
        assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
            ("fraud_probability", "FP64"),
            ("is_fraud", "BOOL"),
        ]
    assert not client.is_model_ready("catboost")


def test_a_grpc_call_lands_in_the_decision_log_as_answered(
    decisions: Path, client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    frame = transactions.iloc[100:107].reset_index(drop=True)
    result = client.infer("xgboost", [matrix_input(frame)], request_id="grpc-logged-7")
    log = wait_for_rows(decisions, 7, request_id="grpc-logged-7")
    mine = log[log.request_id == "grpc-logged-7"].sort_values("row")
    assert list(mine.row) == list(range(7))
    assert set(mine.protocol) == {"grpc"}
    assert set(mine.model.astype(str)) == {"xgboost"}
    np.testing.assert_array_equal(mine.fraud_probability.to_numpy(), result.as_numpy("fraud_probability"))
    assert list(mine.is_fraud) == result.as_numpy("is_fraud").tolist()
    for name in NAMES:  # the features as the model received them, from the FP64 matrix sent
        np.testing.assert_array_equal(mine[feature_column(name)].to_numpy(dtype=np.float64), frame[name].to_numpy())


@pytest.mark.parametrize("model", ["xgboost", "lightgbm", "sklearn"])
def test_an_fp64_matrix_from_numpy_scores_as_v1_predict(
    service: RunningService, client: triton.InferenceServerClient, transactions: pd.DataFrame, model: str
) -> None:
    frame = transactions.head(60)
    result = client.infer(model, [matrix_input(frame)], request_id="grpc-42")
    assert_equals_v1(result, v1_predictions(service, model, frame))
    response = result.get_response(as_json=True)
    assert (response["id"], response["model_name"], response["model_version"]) == ("grpc-42", model, "1")
    parameters = {key: next(iter(value.values())) for key, value in response["parameters"].items()}
    assert parameters["registered_model"] == f"fraud-{model}"
    assert parameters["selected_by"] == "alias:champion"
    assert float(parameters["threshold"]) == 0.5
    assert int(parameters["generation"]) == 1


def test_one_tensor_per_feature_from_numpy_scores_as_v1_predict(
    service: RunningService, client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    frame = transactions.iloc[100:140]
    inputs = []
    for feature in FEATURES:
        tensor = triton.InferInput(feature.name, [len(frame)], DATATYPE[feature.kind])
        tensor.set_data_from_numpy(frame[feature.name].to_numpy(dtype=NUMPY[feature.kind]))
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("fraud_probability"), triton.InferRequestedOutput("is_fraud")]
    result = client.infer("lightgbm", inputs, outputs=outputs)
    assert_equals_v1(result, v1_predictions(service, "lightgbm", frame))


def test_typed_contents_are_answered_with_typed_contents(service: RunningService, transactions: pd.DataFrame) -> None:
    frame = transactions.iloc[200:230]
    request = service_pb2.ModelInferRequest(model_name="sklearn", id="typed-1")
    for feature in FEATURES:
        tensor = request.inputs.add(name=feature.name, datatype=DATATYPE[feature.kind], shape=[len(frame)])
        values = frame[feature.name].to_numpy(dtype=NUMPY[feature.kind]).tolist()
        if feature.kind == "double":
            tensor.contents.fp64_contents.extend(values)
        else:
            tensor.contents.int64_contents.extend(values)
    with grpc.insecure_channel(service.grpc_target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert not response.raw_output_contents
    assert response.id == "typed-1"
    expected = v1_predictions(service, "sklearn", frame)
    probabilities, flags = (output.contents for output in response.outputs)
    assert [output.name for output in response.outputs] == ["fraud_probability", "is_fraud"]
    served = np.array([p["fraud_probability"] for p in expected])
    assert np.max(np.abs(np.array(probabilities.fp64_contents) - served)) <= 1e-12
    assert list(flags.bool_contents) == [p["is_fraud"] for p in expected]


def test_each_refusal_has_its_status_code(client: triton.InferenceServerClient, transactions: pd.DataFrame) -> None:
    frame = transactions.head(3).copy()
    frame.loc[frame.index[1], "amount"] = np.inf
    invalid = refused(lambda: client.infer("xgboost", [matrix_input(frame)]))
    assert invalid.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'amount', row 1" in invalid.message()

    one = triton.InferInput("amount", [1], "FP64")
    one.set_data_from_numpy(np.array([12.5]))
    missing = refused(lambda: client.infer("xgboost", [one]))
    assert missing.status() == "StatusCode.INVALID_ARGUMENT"
    assert missing.message().startswith("input 'hour_of_day', row 0: missing: ")

    unknown = refused(lambda: client.infer("catboost", [matrix_input(transactions.head(1))]))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'catboost'" in unknown.message()
    version = refused(lambda: client.get_model_metadata("xgboost", model_version="9"))
    assert version.status() == "StatusCode.NOT_FOUND"
    assert "version '9' is not served" in version.message()

    too_many = pd.concat([transactions] * 2).head(MAX_BATCH_ROWS + 1)
    rows = refused(lambda: client.infer("xgboost", [matrix_input(too_many)]))
    assert rows.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert f"exceed MAX_BATCH_ROWS={MAX_BATCH_ROWS}" in rows.message()
    too_large = pd.concat([transactions] * 6).head(MAX_BODY_BYTES // (8 * len(NAMES)) + 10)
    size = refused(lambda: client.infer("xgboost", [matrix_input(too_large)]))
    assert size.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert size.message().startswith(f"the request message is over MAX_BODY_BYTES ({MAX_BODY_BYTES} bytes): it holds ")


def counted(service: RunningService, method: str, code: str) -> float:
    """fraud_inference_grpc_requests_total for `method` and `code` now (0 before the first such call)."""
    with service.client() as http:
        metrics = http.get("/metrics").text
    series = f'fraud_inference_grpc_requests_total{{code="{code}",method="{method}"}} '
    return next((float(line.removeprefix(series)) for line in metrics.splitlines() if line.startswith(series)), 0.0)


def test_a_message_over_max_body_bytes_is_refused_in_the_services_words_logged_and_counted(
    service: RunningService, client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    """As REST's 413: the service's own refusal naming MAX_BODY_BYTES, one access-log line, one count; not grpcio's
    `Received message larger than max`, which no servicer sees."""
    before = counted(service, "ModelInfer", "RESOURCE_EXHAUSTED")
    rows = MAX_BODY_BYTES // (8 * len(NAMES)) + 1  # one row over: the raw FP64 matrix alone is past the limit
    over = pd.concat([transactions] * 4).head(rows)
    size = refused(lambda: client.infer("xgboost", [matrix_input(over)], request_id="too-large-1"))
    assert size.status() == "StatusCode.RESOURCE_EXHAUSTED"
    said = re.fullmatch(rf"the request message is over MAX_BODY_BYTES \({MAX_BODY_BYTES} bytes\): it holds (\d+) "
                        "bytes; send fewer rows per call", size.message())  # fmt: skip
    assert said is not None, size.message()
    assert 0 < int(said.group(1)) - rows * 8 * len(NAMES) < 200  # the matrix, and the message's few other fields
    assert counted(service, "ModelInfer", "RESOURCE_EXHAUSTED") == before + 1
    lines = [json.loads(line) for line in service.log().splitlines() if '"grpc.request"' in line]
    assert any(line["status"] == "RESOURCE_EXHAUSTED" and line["method"] == "ModelInfer" for line in lines)


def test_missing_and_extra_inputs_are_refused_in_oip_terms_as_rest_words_them(
    service: RunningService, client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    frame = transactions.head(2)
    tensors = {}
    for feature in FEATURES:
        tensor = triton.InferInput(feature.name, [len(frame)], DATATYPE[feature.kind])
        tensor.set_data_from_numpy(frame[feature.name].to_numpy(dtype=NUMPY[feature.kind]))
        tensors[feature.name] = tensor
    coupon = triton.InferInput("coupon", [len(frame)], "FP64")
    coupon.set_data_from_numpy(np.array([1.0, 0.0]))
    inputs = ", ".join(NAMES)

    missing = refused(lambda: client.infer("xgboost", [t for name, t in tensors.items() if name != "amount"]))
    extra = refused(lambda: client.infer("xgboost", [*tensors.values(), coupon]))

    assert missing.status() == extra.status() == "StatusCode.INVALID_ARGUMENT"
    assert missing.message() == (
        f"input 'amount', row 0: missing: every row needs a value for this input; the model's inputs are: {inputs}"
    )
    assert extra.message() == f"input 'coupon', row 0: not an input of this model; the model's inputs are: {inputs}"
    # REST's /v2 words both the same way (one codec).
    with service.client() as http:
        rest = http.post("/v2/models/xgboost/infer", json={"inputs": [
            {"name": name, "shape": [len(frame)], "datatype": "FP64", "data": frame[name].astype(float).tolist()}
            for name in NAMES if name != "amount"
        ]})  # fmt: skip
    assert (rest.status_code, rest.json()["error"]) == (400, missing.message())


def test_typed_values_in_the_wrong_contents_field_are_refused_naming_the_input_datatype_and_field(
    service: RunningService,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="xgboost")
    tensor = request.inputs.add(name="transactions", datatype="FP64", shape=[1, len(NAMES)])
    tensor.contents.int64_contents.extend(range(len(NAMES)))
    with grpc.insecure_channel(service.grpc_target) as channel, pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "input 'transactions': datatype FP64 takes its values in contents.fp64_contents, not "
        "contents.int64_contents: send them there, or declare the datatype they are"
    )


def test_an_empty_model_name_is_refused_naming_the_field(
    client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    """OIP names the model in every call (REST's /v2/models/{model}/infer has no route without one): no default
    model answers an empty name."""
    infer = refused(lambda: client.infer("", [matrix_input(transactions.head(1))]))
    metadata = refused(lambda: client.get_model_metadata(""))
    assert infer.status() == metadata.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer.message() == "model_name is empty: name the model to call, as in REST's /v2/models/{model}"
    assert metadata.message() == "name is empty: name the model to call, as in REST's /v2/models/{model}"


def test_the_request_id_is_echoed_in_the_trailing_metadata_and_logged(
    service: RunningService, transactions: pd.DataFrame
) -> None:
    request = service_pb2.ModelInferRequest(model_name="xgboost")
    tensor = request.inputs.add(name="transactions", datatype="FP64", shape=[2, len(NAMES)])
    request.raw_input_contents.append(transactions.head(2)[NAMES].to_numpy(dtype=np.float64).tobytes())
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(request, metadata=(("x-request-id", "trace-7"),), timeout=30)
        _, by_body = stub.ModelInfer.with_call(
            service_pb2.ModelInferRequest(model_name="xgboost", id="body-8", inputs=[tensor],
                                          raw_input_contents=request.raw_input_contents), timeout=30,
        )  # fmt: skip
    assert len(answer.raw_output_contents) == 2
    assert ("x-request-id", "trace-7") in call.trailing_metadata()
    assert ("x-request-id", "body-8") in by_body.trailing_metadata()
    lines = [json.loads(line) for line in service.log().splitlines() if '"grpc.request"' in line]
    logged = next(line for line in lines if line.get("request_id") == "trace-7")
    assert (logged["protocol"], logged["method"], logged["status"], logged["model"], logged["rows"]) == (
        "grpc", "ModelInfer", "OK", "xgboost", 2,
    )  # fmt: skip


def test_the_health_service_answers_as_readyz(service: RunningService) -> None:
    with grpc.insecure_channel(service.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="other.Service"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_calls_are_counted_by_method_and_status_code(
    service: RunningService, client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    client.infer("xgboost", [matrix_input(transactions.head(1))])
    refused(lambda: client.infer("catboost", [matrix_input(transactions.head(1))]))
    with service.client() as http:
        metrics = http.get("/metrics").text
    assert 'fraud_inference_grpc_requests_total{code="OK",method="ModelInfer"}' in metrics
    assert 'fraud_inference_grpc_requests_total{code="NOT_FOUND",method="ModelInfer"}' in metrics
    assert 'fraud_inference_grpc_request_duration_seconds_count{method="ModelInfer"}' in metrics


def library_contributions(demo_registry: str, model: str, frame: pd.DataFrame) -> Any:
    """The fraud class's TreeSHAP of MLflow's loaded demo model (`pred_contribs` / `pred_contrib`), `[rows, 21]`."""
    import mlflow

    from tests.conftest import use_registry

    use_registry(demo_registry)
    loaded = getattr(mlflow, model).load_model(f"models:/fraud-{model}@champion")
    rows = frame[NAMES]
    if model == "xgboost":
        import xgboost

        matrix = xgboost.DMatrix(rows)
        return loaded.get_booster().predict(matrix, pred_contribs=True, iteration_range=(0, 0))
    return loaded.predict(rows, pred_contrib=True)


@pytest.mark.parametrize("model", ["xgboost", "lightgbm"])
def test_parameters_explain_answers_rests_contributions_and_base_value(
    service: RunningService, client: triton.InferenceServerClient, transactions: pd.DataFrame, demo_registry: str,
    model: str,
) -> None:  # fmt: skip
    frame = transactions.iloc[300:312]
    result = client.infer(model, [matrix_input(frame)], parameters={"explain": 3})
    contributions, base_value = result.as_numpy("contributions"), result.as_numpy("base_value")
    assert contributions.shape == (len(frame), len(NAMES))
    assert base_value.shape == (len(frame),)
    response = result.get_response(as_json=True)
    assert response["parameters"]["margin"] == {"string_param": "log_odds"}
    inputs = [{"name": "transactions", "datatype": "FP64", "shape": [len(frame), len(NAMES)],
               "data": frame[NAMES].to_numpy(dtype=np.float64).reshape(-1).tolist()}]  # fmt: skip
    with service.client() as http:
        rest = http.post(f"/v2/models/{model}/infer", json={"inputs": inputs, "parameters": {"explain": 3}}).json()
    outputs = {output["name"]: output for output in rest["outputs"]}
    assert contributions.reshape(-1).tolist() == outputs["contributions"]["data"]  # the same numbers as REST's
    assert base_value.tolist() == outputs["base_value"]["data"]
    assert_equals_v1(result, v1_predictions(service, model, frame))
    library = np.asarray(library_contributions(demo_registry, model, frame), dtype=np.float64)
    np.testing.assert_allclose(contributions, library[:, :-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(base_value, library[:, -1], rtol=0, atol=1e-6)


def test_explain_of_a_model_that_cannot_explain_is_failed_precondition_naming_it(
    client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    refusal = refused(lambda: client.infer("sklearn", [matrix_input(transactions.head(2))], parameters={"explain": 3}))
    assert refusal.status() == "StatusCode.FAILED_PRECONDITION"
    assert "cannot explain" in refusal.message()
    assert "model 'sklearn'" in refusal.message()
    invalid = refused(lambda: client.infer("xgboost", [matrix_input(transactions.head(2))], parameters={"explain": 0}))
    assert invalid.status() == "StatusCode.INVALID_ARGUMENT"
    assert invalid.message().startswith("explain: ")
