"""The Open Inference Protocol V2 through the real app and pool: metadata, every tensor layout, errors.

The real clients (tritonclient, KServe's) against a running server are in tests/e2e/test_oip_clients.py.
"""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from litestar.testing import TestClient

from fraud_inference.demo.dataset import FEATURES
from tests.api.test_predict import rows

DATATYPE = {"double": "FP64", "long": "INT64", "integer": "INT32", "float": "FP32", "boolean": "BOOL"}


def v1_probabilities(client: TestClient, model: str, frame: pd.DataFrame) -> list[float]:  # type: ignore[type-arg]
    body = client.post("/v1/predict", json={"model": model, "instances": rows(frame, len(frame))}).json()
    return [p["fraud_probability"] for p in body["predictions"]]


def per_feature(frame: pd.DataFrame, *, column_vectors: bool = False) -> list[dict[str, object]]:
    tensors: list[dict[str, object]] = []
    for feature in FEATURES:
        values = json.loads(frame[feature.name].to_json(orient="values"))
        tensors.append(
            {
                "name": feature.name,
                "datatype": DATATYPE[feature.kind],
                "shape": [len(values), 1] if column_vectors else [len(values)],
                "data": [[v] for v in values] if column_vectors else values,
            }
        )
    return tensors


def one_matrix(frame: pd.DataFrame, *, nested: bool) -> list[dict[str, object]]:
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=np.float64)
    data = matrix.tolist() if nested else matrix.ravel().tolist()
    return [{"name": "input-0", "datatype": "FP64", "shape": list(matrix.shape), "data": data}]


def test_health_and_server_metadata(client: TestClient, unready_client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert unready_client.get("/v2/health/live").status_code == 200
    assert unready_client.get("/v2/health/ready").status_code == 503
    metadata = client.get("/v2").json()
    assert metadata["name"] == "fraud-inference"
    assert "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_model_metadata_has_one_tensor_per_feature(client: TestClient, suffix: str) -> None:  # type: ignore[type-arg]
    metadata = client.get(f"/v2/models/lightgbm{suffix}").json()
    assert metadata["name"] == "lightgbm"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "lightgbm"
    assert metadata["inputs"] == [{"name": f.name, "datatype": DATATYPE[f.kind], "shape": [-1]} for f in FEATURES]
    assert metadata["outputs"] == [
        {"name": "fraud_probability", "datatype": "FP64", "shape": [-1]},
        {"name": "is_fraud", "datatype": "BOOL", "shape": [-1]},
    ]
    assert client.get(f"/v2/models/lightgbm{suffix}/ready").json() == {"name": "lightgbm", "ready": True}


@pytest.mark.parametrize(
    "path",
    ["/v2/models/lightgbm/versions/2", "/v2/models/lightgbm/versions/2/ready", "/v2/models/catboost",
     "/v2/models/catboost/ready"],
)  # fmt: skip
def test_unknown_models_and_versions_are_404(client: TestClient, path: str) -> None:  # type: ignore[type-arg]
    response = client.get(path)
    assert response.status_code == 404
    assert set(response.json()) == {"error"}
    infer = client.post(path.removesuffix("/ready") + "/infer", json={"inputs": []})
    assert infer.status_code == 404, infer.text


@pytest.mark.parametrize("model", ["xgboost", "lightgbm", "sklearn"])
@pytest.mark.parametrize("layout", ["per-feature", "per-feature-[n,1]", "matrix-flat", "matrix-nested"])
def test_infer_equals_v1_for_every_layout(
    client: TestClient,
    transactions: pd.DataFrame,
    model: str,
    layout: str,  # type: ignore[type-arg]
) -> None:
    frame = transactions.head(25)
    inputs = {
        "per-feature": lambda: per_feature(frame),
        "per-feature-[n,1]": lambda: per_feature(frame, column_vectors=True),
        "matrix-flat": lambda: one_matrix(frame, nested=False),
        "matrix-nested": lambda: one_matrix(frame, nested=True),
    }[layout]()
    response = client.post(f"/v2/models/{model}/versions/1/infer", json={"id": "req-7", "inputs": inputs})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (model, "1", "req-7")
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["fraud_probability"]["datatype"] == "FP64"
    assert outputs["fraud_probability"]["shape"] == [25]
    probabilities = outputs["fraud_probability"]["data"]
    np.testing.assert_allclose(probabilities, v1_probabilities(client, model, frame), rtol=0, atol=1e-6)
    threshold = answer["parameters"]["threshold"]
    assert outputs["is_fraud"] == {
        "name": "is_fraud", "datatype": "BOOL", "shape": [25], "data": [p >= threshold for p in probabilities]
    }  # fmt: skip


def test_binary_tensors_in_and_out(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    frame = transactions.head(8)
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=np.float64)
    blob = matrix.tobytes()
    header = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [8, len(FEATURES)],
                        "parameters": {"binary_data_size": len(blob)}}],
            "outputs": [{"name": "fraud_probability", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    response = client.post(
        "/v2/models/xgboost/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:length])
    assert [output["name"] for output in answer["outputs"]] == ["fraud_probability"]
    probabilities = struct.unpack("<8d", response.content[length:])
    np.testing.assert_allclose(probabilities, v1_probabilities(client, "xgboost", frame), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}, 400, "20 columns"),
        ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [2], "data": [1.0]}]}, 400, "needs 2 values"),
        ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, 400, "row 0"),
        ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1, 2, 3], "data": []}]}, 400, "shape"),
        ({"inputs": "nope"}, 400, "request body"),
        ({"id": "x"}, 400, "inputs"),
    ],
    ids=["wrong-width", "short-data", "missing-features", "rank-3", "inputs-not-a-list", "no-inputs"],
)
def test_bad_requests_are_400_with_an_error(client: TestClient, body: object, status: int, says: str) -> None:  # type: ignore[type-arg]
    response = client.post("/v2/models/xgboost/infer", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_a_wrong_value_names_input_and_row(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    inputs = per_feature(transactions.head(3))
    inputs[1].update(datatype="FP64", data=[1.0, 2.5, 3.0])  # a fraction for a `long` feature
    error = client.post("/v2/models/sklearn/infer", json={"inputs": inputs}).json()["error"]
    assert error.startswith(f"input '{FEATURES[1].name}', row 1: "), error


@pytest.mark.parametrize(
    ("datatype", "data", "says"),
    [
        ("FOO", [1.0, 2.0, 3.0], "datatype 'FOO' is not an OIP datatype; send one of BOOL, BYTES, FP16"),
        ("INT64", [1, 912.4, 3], "data[1] = 912.4 does not fit datatype INT64"),
        ("INT64", [1, 2, True], "data[2] = True does not fit datatype INT64"),
        ("INT8", [1, 300, 3], "data[1] = 300 does not fit datatype INT8"),
        ("UINT32", [1, -1, 3], "data[1] = -1 does not fit datatype UINT32"),
        ("BOOL", [True, 3, False], "data[1] = 3 does not fit datatype BOOL"),
        ("FP32", [1.0, 1e39, 3.0], "data[1] = 1e+39 does not fit datatype FP32"),
        ("FP64", [1.0, "2.0", 3.0], "data[1] = '2.0' does not fit datatype FP64"),
        ("BYTES", ["a", 2, "c"], "data[1] = 2 does not fit datatype BYTES"),
    ],
)
def test_data_that_does_not_fit_its_datatype_is_400_naming_the_input(
    client: TestClient,
    transactions: pd.DataFrame,
    datatype: str,
    data: list[object],
    says: str,  # type: ignore[type-arg]
) -> None:
    inputs = per_feature(transactions.head(3))
    inputs[1].update(datatype=datatype, data=data)
    response = client.post("/v2/models/xgboost/infer", json={"inputs": inputs})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"input '{FEATURES[1].name}': {says}"), response.json()


def test_whole_numbers_written_as_floats_fit_integer_datatypes(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    inputs = per_feature(transactions.head(3))
    expected = client.post("/v2/models/xgboost/infer", json={"inputs": inputs}).json()["outputs"]
    inputs[1]["data"] = [float(v) for v in inputs[1]["data"]]  # type: ignore[attr-defined]
    response = client.post("/v2/models/xgboost/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == expected


def test_a_shape_that_disagrees_with_the_data_is_400_naming_the_input(
    client: TestClient, transactions: pd.DataFrame
) -> None:  # type: ignore[type-arg]
    for shape in ([2], [4], [3, 2], [1, 3]):
        inputs = per_feature(transactions.head(3))
        inputs[2]["shape"] = shape
        response = client.post("/v2/models/xgboost/infer", json={"inputs": inputs})
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(f"input '{FEATURES[2].name}': shape {shape}"), response.json()


def test_tensors_of_different_lengths_are_400_naming_them(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    inputs = per_feature(transactions.head(3))
    inputs[4].update(shape=[2], data=inputs[4]["data"][:2])  # type: ignore[index]
    error = client.post("/v2/models/xgboost/infer", json={"inputs": inputs}).json()["error"]
    assert error.startswith(f"input '{FEATURES[4].name}' holds 2 values and input '{FEATURES[0].name}' 3"), error


def test_a_duplicated_input_name_is_400_saying_so(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    inputs = per_feature(transactions.head(3))
    inputs[3] = {**inputs[2]}
    response = client.post("/v2/models/xgboost/infer", json={"inputs": inputs})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == f"input '{FEATURES[2].name}' is sent more than once: send one tensor per feature"


def test_no_rows_names_what_is_empty(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    no_inputs = client.post("/v2/models/xgboost/infer", json={"inputs": []})
    assert (no_inputs.status_code, no_inputs.json()["error"]) == (
        400, "inputs is empty: send one tensor per feature, or one [n, features] tensor"
    )  # fmt: skip
    no_rows = client.post("/v2/models/xgboost/infer", json={"inputs": per_feature(transactions.head(0))})
    assert (no_rows.status_code, no_rows.json()["error"]) == (
        400, f"input '{FEATURES[0].name}' is empty: send at least one row"
    )  # fmt: skip
    empty_matrix = {"name": "x", "datatype": "FP64", "shape": [0, len(FEATURES)], "data": []}
    assert client.post("/v2/models/xgboost/infer", json={"inputs": [empty_matrix]}).json()["error"] == (
        "input 'x' is empty: send at least one row"
    )


def test_not_json_is_415_and_not_ready_is_503(client: TestClient, unready_client: TestClient) -> None:  # type: ignore[type-arg]
    refused = client.post("/v2/models/xgboost/infer", content=b"inputs", headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    assert "application/json" in refused.json()["error"]
    unready = unready_client.post("/v2/models/fraud/infer", json={"inputs": []})
    assert unready.status_code == 503
    assert unready.headers["retry-after"]
    assert unready_client.get("/v2/models/fraud/ready").status_code == 503


def test_unevenly_nested_data_is_400(client: TestClient) -> None:  # type: ignore[type-arg]
    tensor = {"name": "x", "datatype": "FP64", "shape": [2, 20], "data": [[0.0] * 20, 1.0]}
    response = client.post("/v2/models/xgboost/infer", json={"inputs": [tensor]})
    assert response.status_code == 400
    assert "nested evenly" in response.json()["error"]


def post_triton(client: TestClient, model: str, inputs: list[triton.InferInput]) -> httpx.Response:  # type: ignore[type-arg]
    """Send `inputs` as tritonclient's HTTP client encodes them (binary tensors after the JSON part)."""
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    headers = {"content-type": "application/octet-stream" if json_size else "application/json"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def infinite_bodies(frame: pd.DataFrame, row: int, column: int, infinity: float) -> dict[str, bytes]:
    """Every JSON tensor layout with `infinity` (written `1e999`, as JSON can only carry it) at `row`, `column`."""
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=np.float64)
    matrix[row, column] = infinity
    per_feature = [
        {"name": f.name, "datatype": "FP64", "shape": [len(matrix)], "data": matrix[:, i].tolist()}
        for i, f in enumerate(FEATURES)
    ]
    column_vectors = [
        {**tensor, "shape": [len(matrix), 1], "data": [[v] for v in tensor["data"]]} for tensor in per_feature
    ]  # type: ignore[attr-defined]
    layouts = {
        "per-feature": per_feature,
        "per-feature-[n,1]": column_vectors,
        "matrix-flat": [
            {"name": "x", "datatype": "FP64", "shape": list(matrix.shape), "data": matrix.ravel().tolist()}
        ],
        "matrix-nested": [{"name": "x", "datatype": "FP64", "shape": list(matrix.shape), "data": matrix.tolist()}],
    }
    return {
        name: json.dumps({"inputs": inputs}).replace("Infinity", "1e999").encode() for name, inputs in layouts.items()
    }


@pytest.mark.parametrize("infinity", [np.inf, -np.inf])
def test_an_infinity_in_any_json_layout_is_refused_naming_input_and_row(
    client: TestClient,
    transactions: pd.DataFrame,
    infinity: float,  # type: ignore[type-arg]
) -> None:
    for column in (0, 1):
        for layout, body in infinite_bodies(transactions.head(4), 2, column, infinity).items():
            response = client.post(
                "/v2/models/xgboost/infer", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (layout, response.text)
            error = response.json()["error"]
            assert error.startswith(f"input '{FEATURES[column].name}', row 2: value {infinity} is not a finite"), (
                layout,
                error,
            )


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "FP16"])
def test_an_infinity_in_a_binary_tensor_is_refused_naming_input_and_row(
    client: TestClient,
    transactions: pd.DataFrame,
    datatype: str,  # type: ignore[type-arg]
) -> None:
    frame = transactions.head(5)
    numpy_type = {"FP64": np.float64, "FP32": np.float32, "FP16": np.float16}[datatype]
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=numpy_type)
    matrix[3, 0] = np.inf
    tensor = triton.InferInput("transactions", list(matrix.shape), datatype)
    tensor.set_data_from_numpy(matrix, binary_data=True)
    response = post_triton(client, "lightgbm", [tensor])
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"input '{FEATURES[0].name}', row 3: value inf is not a finite")
    per_feature = []
    for i, feature in enumerate(FEATURES):
        column = triton.InferInput(feature.name, [len(matrix)], datatype)
        column.set_data_from_numpy(-matrix[:, i] if i == 0 else matrix[:, i], binary_data=True)
        per_feature.append(column)
    response = post_triton(client, "lightgbm", per_feature)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"input '{FEATURES[0].name}', row 3: value -inf is not a finite")


def test_nan_in_a_binary_tensor_is_a_missing_value(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    frame = transactions.head(3)
    matrix = frame[[f.name for f in FEATURES]].to_numpy(dtype=np.float64)
    matrix[1, 0] = np.nan
    tensor = triton.InferInput("transactions", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix, binary_data=True)
    response = post_triton(client, "xgboost", [tensor])
    assert response.status_code == 200, response.text
    instances = rows(frame, 3)
    instances[1][FEATURES[0].name] = None  # type: ignore[assignment]
    v1 = client.post("/v1/predict", json={"model": "xgboost", "instances": instances}).json()
    length = int(response.headers["inference-header-content-length"])
    result = triton.InferenceServerClient.parse_response_body(response.content, header_length=length)
    probabilities = result.as_numpy("fraud_probability")
    np.testing.assert_allclose(probabilities, [p["fraud_probability"] for p in v1["predictions"]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("length", ["x", "-1", "99999"])
def test_a_binary_header_length_that_is_not_a_length_of_the_body_is_400(client: TestClient, length: str) -> None:  # type: ignore[type-arg]
    body = b'{"inputs": []}'
    headers = {"Inference-Header-Content-Length": length, "content-type": "application/octet-stream"}
    response = client.post("/v2/models/xgboost/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
