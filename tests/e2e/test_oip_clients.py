"""OIP V2 clients switch by changing the URL: tritonclient's HTTP client against a real `fraud-inference serve`.

Liveness, readiness, server and model metadata, and inference with JSON and binary tensors, one tensor per
feature and one [n, features] matrix; every probability equals /v1/predict's within 1e-6. (KServe's Python
client does not install cleanly beside this project: it pins pandas 2 and protobuf 6.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from fraud_inference.demo.dataset import FEATURES
from tests.conftest import RunningService, start_service

pytestmark = [pytest.mark.slow, pytest.mark.soak]

NUMPY = {"double": np.float64, "long": np.int64}
DATATYPE = {"double": "FP64", "long": "INT64"}


@pytest.fixture(scope="module")
def service(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "LOG_LEVEL": "WARNING"}
    running = start_service(["serve"], env, Path(tmp_path_factory.mktemp("oip")))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def triton_client(service: RunningService) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=service.base_url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def v1_answer(service: RunningService, model: str, frame: pd.DataFrame) -> dict[str, object]:
    instances = json.loads(frame.to_json(orient="records"))
    with service.client() as client:
        answer: dict[str, object] = client.post("/v1/predict", json={"model": model, "instances": instances}).json()
    return answer


def test_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["name"] == "fraud-inference"
    for model in ("xgboost", "lightgbm", "sklearn"):
        assert triton_client.is_model_ready(model)
        assert triton_client.is_model_ready(model, model_version="1")
        assert not triton_client.is_model_ready(model, model_version="9")
        metadata = triton_client.get_model_metadata(model, model_version="1")
        assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
            (f.name, DATATYPE[f.kind]) for f in FEATURES
        ]
        assert [o["name"] for o in metadata["outputs"]] == ["fraud_probability", "is_fraud"]
    assert not triton_client.is_model_ready("catboost")
    with pytest.raises(InferenceServerException, match="not served"):
        triton_client.get_model_metadata("xgboost", model_version="9")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", ["xgboost", "lightgbm", "sklearn"])
def test_infer_per_feature_equals_v1(
    service: RunningService,
    triton_client: triton.InferenceServerClient,
    transactions: pd.DataFrame,
    model: str,
    binary: bool,
) -> None:
    frame = transactions.head(40)
    inputs = []
    for feature in FEATURES:
        tensor = triton.InferInput(feature.name, [len(frame)], DATATYPE[feature.kind])
        tensor.set_data_from_numpy(frame[feature.name].to_numpy(dtype=NUMPY[feature.kind]), binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("fraud_probability", "is_fraud")]
    result = triton_client.infer(model, inputs, model_version="1", request_id="oip-42", outputs=outputs)
    expected = v1_answer(service, model, frame)
    probabilities = result.as_numpy("fraud_probability")
    served = [p["fraud_probability"] for p in expected["predictions"]]  # type: ignore[attr-defined]
    np.testing.assert_allclose(probabilities, served, rtol=0, atol=1e-6)
    flagged = [p["is_fraud"] for p in expected["predictions"]]  # type: ignore[attr-defined]
    assert result.as_numpy("is_fraud").tolist() == flagged
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("oip-42", model, "1")


def test_infer_one_matrix_with_default_binary_outputs(
    service: RunningService, triton_client: triton.InferenceServerClient, transactions: pd.DataFrame
) -> None:
    frame = transactions.head(100)
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=np.float64)
    tensor = triton.InferInput("transactions", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)  # binary by default; no outputs named: binary outputs
    result = triton_client.infer("lightgbm", [tensor])
    served = [p["fraud_probability"] for p in v1_answer(service, "lightgbm", frame)["predictions"]]  # type: ignore[attr-defined]
    np.testing.assert_allclose(result.as_numpy("fraud_probability"), served, rtol=0, atol=1e-6)
    assert result.as_numpy("is_fraud").dtype == np.bool_


def test_refusals_reach_the_client_as_errors(triton_client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("amount", [1], "FP64")
    tensor.set_data_from_numpy(np.array([12.5]), binary_data=False)
    with pytest.raises(InferenceServerException, match="row 0") as refused:
        triton_client.infer("xgboost", [tensor])
    assert refused.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model") as unknown:
        triton_client.infer("catboost", [tensor])
    assert unknown.value.status() == "404"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_an_infinity_reaches_the_client_as_a_refusal_not_a_score(
    triton_client: triton.InferenceServerClient, transactions: pd.DataFrame, binary: bool
) -> None:
    matrix = transactions.head(3)[[f.name for f in FEATURES]].to_numpy(dtype=np.float64)
    matrix[1, 0] = np.inf  # tritonclient writes it as JSON `inf`, which no JSON parser reads, or as binary
    tensor = triton.InferInput("transactions", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix, binary_data=binary)
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer("xgboost", [tensor])
    assert refused.value.status() == "400"
    said = "JSON has no NaN or Infinity" if not binary else f"input '{FEATURES[0].name}', row 1: value inf is not a"
    assert said in str(refused.value)
