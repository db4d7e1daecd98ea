"""Columnar bodies (`dataframe_split`, `inputs` as columns, OIP tensors) travel to the workers as columns.

Each columnar form must give exactly the numbers of the same rows sent as row objects (/v1/predict, within
1e-12), MLflow's flavour loader's numbers (within 1e-6), and exactly the row path's refusals: the same status,
naming the same row and column. Real models: the shapes of tests/real_models.py (numeric with NaN, categorical,
a scikit-learn pipeline on strings) and the demo models, through the real app and pool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from litestar.testing import TestClient

from fraud_inference.demo.dataset import FEATURES
from tests.api.conftest import MAX_BATCH_ROWS
from tests.api.test_predict import rows as demo_rows
from tests.conftest import RunningService
from tests.models.test_real_models import reference
from tests.real_models import CATEGORICAL, NUMERIC, make_fraud_table, request_rows

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
# A raw Booster answers /invocations with probabilities (a scikit-learn-API classifier with labels).
NUMERIC_MODEL = "xgb-booster"  # float64 matrix path, NaN in optional columns
CATEGORICAL_MODEL = "xgb-booster-categorical"  # DataFrame path, categories from training, unseen ones missing
STRING_MODEL = "sklearn-pipeline"  # DataFrame path, string columns one-hot encoded
COLUMNS = NUMERIC + CATEGORICAL
DATATYPES = {"amount": "FP64", "txn_count_24h": "INT64", "account_age_days": "INT64", "device_age_days": "FP64",
             "distance_km": "FP64", "is_foreign": "BOOL", "is_online": "BOOL", "merchant_category": "BYTES",
             "country": "BYTES"}  # fmt: skip
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def real_client(real_service: RunningService) -> Iterator[httpx.Client]:
    """A client of the session's `real_service` (every shape of tests/real_models.py through granian and the pool,
    EXTRA_FEATURES=ignore, so every model takes every column of the table): these tests only send and read."""
    with real_service.client() as client:
        yield client


@pytest.fixture(scope="module")
def table_rows() -> list[dict[str, Any]]:
    """Rows with missing values (null, and left-out optional keys) and categories never seen in training."""
    table, _labels = make_fraud_table(40, seed=11)
    return request_rows(table)


def columns_of(records: list[dict[str, Any]], names: list[str]) -> dict[str, list[Any]]:
    """The rows as columns: a left-out key is a missing value (null)."""
    return {name: [row.get(name) for row in records] for name in names}


def v1_probabilities(client: httpx.Client, model: str, records: list[dict[str, Any]]) -> np.ndarray:
    response = client.post("/v1/predict", json={"model": model, "instances": records})
    assert response.status_code == 200, response.text
    return np.array([p["fraud_probability"] for p in response.json()["predictions"]])


def invocation_forms(records: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    columns = columns_of(records, names)
    split = {"columns": names, "data": [[row.get(name) for name in names] for row in records]}
    return {
        "dataframe_split": {"dataframe_split": split},
        "dataframe_split_with_index": {"dataframe_split": {**split, "index": list(range(len(records)))}},
        "inputs_columns": {"inputs": columns},
        "instances_columns": {"instances": columns},
    }


def tensor_forms(
    records: list[dict[str, Any]], names: list[str], datatypes: dict[str, str] = DATATYPES
) -> dict[str, dict[str, Any]]:
    """One JSON tensor per feature (shape [n] and [n, 1]), and without strings one [n, features] FP64 tensor."""
    columns = columns_of(records, names)
    per_feature = [{"name": name, "datatype": datatypes.get(name, "FP64"), "shape": [len(records)], "data": values}
                   for name, values in columns.items()]  # fmt: skip
    column_vectors = [{**tensor, "shape": [len(records), 1], "data": [[v] for v in tensor["data"]]}
                      for tensor in per_feature]  # fmt: skip
    forms = {"per-feature": {"inputs": per_feature}, "per-feature-[n,1]": {"inputs": column_vectors}}
    if all(datatypes.get(name, "FP64") != "BYTES" for name in names):
        data = [None if v is None else float(v) for row in zip(*columns.values(), strict=True) for v in row]
        forms["matrix-flat"] = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(records), len(names)],
                                            "data": data}]}  # fmt: skip
    return forms


def post_triton(client: httpx.Client, model: str, inputs: list[triton.InferInput]) -> httpx.Response:
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    headers = {"content-type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def oip_probabilities(response: httpx.Response) -> np.ndarray:  # type: ignore[type-arg]
    """`fraud_probability` of an OIP answer, as JSON or (tritonclient's default) a binary tensor."""
    assert response.status_code == 200, response.text
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    outputs = {output["name"]: output for output in json.loads(response.content[:length])["outputs"]}
    if "data" in outputs["fraud_probability"]:
        return np.array(outputs["fraud_probability"]["data"])
    assert [*outputs] == ["fraud_probability", "is_fraud"], outputs
    rows = outputs["fraud_probability"]["shape"][0]
    return np.frombuffer(response.content[length : length + 8 * rows], dtype="<f8")


@pytest.mark.parametrize("model", [NUMERIC_MODEL, CATEGORICAL_MODEL, STRING_MODEL])
def test_every_columnar_form_scores_as_rows_and_as_mlflow_loader(
    real_client: httpx.Client,
    real_models: tuple[str, dict[str, str]],
    table_rows: list[dict[str, Any]],
    model: str,
) -> None:
    tracking_uri, names = real_models
    expected = v1_probabilities(real_client, model, table_rows)
    assert any(row.get("device_age_days") is None for row in table_rows), "some rows must miss a value"
    np.testing.assert_allclose(expected, reference(tracking_uri, names[model], model, table_rows), rtol=0, atol=1e-6)
    sent = NUMERIC if model == NUMERIC_MODEL else COLUMNS
    for form, body in tensor_forms(table_rows, sent).items():
        response = real_client.post(f"/v2/models/{model}/infer", json=body)
        np.testing.assert_allclose(oip_probabilities(response), expected, rtol=0, atol=1e-12, err_msg=form)
    records = real_client.post(f"/invocations/{model}", json={"dataframe_records": table_rows}).json()
    for form, body in invocation_forms(table_rows, COLUMNS).items():
        response = real_client.post(f"/invocations/{model}", json=body)
        assert response.status_code == 200, (form, response.text)
        if model == STRING_MODEL:  # a scikit-learn classifier: MLflow's pyfunc answers labels
            assert response.json() == records, form
        else:
            np.testing.assert_allclose(response.json()["predictions"], expected, rtol=0, atol=1e-12, err_msg=form)


def test_binary_tensors_score_as_rows(real_client: httpx.Client, table_rows: list[dict[str, Any]]) -> None:
    """Triton's binary tensors, NaN for a missing value, per feature and as one [n, features] FP64 tensor."""
    expected = v1_probabilities(real_client, NUMERIC_MODEL, table_rows)
    frame = pd.DataFrame(table_rows, columns=NUMERIC)
    per_feature = []
    for name in NUMERIC:
        numpy_type = {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_}[DATATYPES[name]]
        tensor = triton.InferInput(name, [len(frame)], DATATYPES[name])
        tensor.set_data_from_numpy(frame[name].to_numpy(dtype=numpy_type), binary_data=True)
        per_feature.append(tensor)
    matrix = triton.InferInput("x", [len(frame), len(NUMERIC)], "FP64")
    matrix.set_data_from_numpy(frame.to_numpy(dtype=np.float64), binary_data=True)
    for inputs in (per_feature, [matrix]):
        probabilities = oip_probabilities(post_triton(real_client, NUMERIC_MODEL, inputs))
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)


def test_a_number_in_a_string_column_is_refused_as_in_rows(
    real_client: httpx.Client,
    table_rows: list[dict[str, Any]],
) -> None:
    records = [dict(row) for row in table_rows[:6]]
    records[3]["merchant_category"] = 5
    expect_refused(real_client, STRING_MODEL, records, COLUMNS, row=3, feature="merchant_category", oip=False)


# -- refusals: the demo models, EXTRA_FEATURES=reject, MAX_BATCH_ROWS=50 -------------------------------------

_V1_WHERE = re.compile(r"^instances(?:\[(\d+)\])?(?:\.([A-Za-z_0-9]+))?")


def expect_refused(
    client: httpx.Client,
    model: str,
    records: list[dict[str, Any]],
    names: list[str],
    *,
    row: int | None,
    feature: str | None,
    oip: bool = True,
    datatypes: dict[str, str] = DATATYPES,
    matrix: bool = True,
    oip_input: str | None = None,
) -> None:
    """The row path's refusal of `records`, then every columnar form's: same status, same row and column (OIP's
    names `oip_input` when given: a tensor missing or not the model's, which rows name as a JSON field)."""
    v1 = client.post("/v1/predict", json={"model": model, "instances": records})
    assert v1.status_code in (413, 422), v1.text
    match = _V1_WHERE.match(v1.json()["detail"])
    where = (int(match.group(1)) if match.group(1) else None, match.group(2)) if match else (None, None)
    assert where == (row, feature), v1.text
    as_records = client.post(f"/invocations/{model}", json={"dataframe_records": records})
    assert as_records.status_code == 400, as_records.text
    for form, body in invocation_forms(records, names).items():
        response = client.post(f"/invocations/{model}", json=body)
        assert (response.status_code, response.json()) == (400, as_records.json()), form
    if not oip:
        return
    named = oip_input or feature
    parts = ([] if named is None else [f"input '{named}'"]) + ([] if row is None else [f"row {row}"])
    for form, body in tensor_forms(records, names, datatypes).items():
        if form == "matrix-flat" and not matrix:
            continue  # a matrix of another width is refused before any row is read
        response = client.post(f"/v2/models/{model}/infer", json=body)
        assert response.status_code == (413 if v1.status_code == 413 else 400), (form, response.text)
        error = response.json()["error"]
        assert error.startswith(f"{', '.join(parts)}: ") if parts else "exceed MAX_BATCH_ROWS" in error, (form, error)


NAMES = [feature.name for feature in FEATURES]


def demo_records(transactions: pd.DataFrame, count: int = 5) -> list[dict[str, Any]]:
    return [dict(row) for row in demo_rows(transactions, count)]


DEMO_DATATYPES = {name: "FP64" for name in NAMES}  # long features fit FP64 tensors too


@pytest.mark.parametrize("value", [2.5, 2**60, -(2**70)])
def test_a_value_an_integer_feature_cannot_take_is_refused_as_in_rows(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
    value: float,
) -> None:
    records = demo_records(transactions)
    records[3]["hour_of_day"] = value
    expect_refused(client, "xgboost", records, NAMES, row=3, feature="hour_of_day", datatypes=DEMO_DATATYPES)


@pytest.mark.parametrize("value", ["lots", True, [1.0]])
def test_a_value_of_the_wrong_type_is_refused_as_in_rows(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
    value: object,
) -> None:
    records = demo_records(transactions)
    records[2]["amount"] = value
    # OIP refuses these in the HTTP process already: they do not fit the tensor's datatype.
    expect_refused(client, "sklearn", records, NAMES, row=2, feature="amount", oip=False)


def test_a_missing_or_unknown_column_is_refused_as_in_rows(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    without = [{k: v for k, v in row.items() if k != "amount"} for row in demo_records(transactions)]
    expect_refused(client, "xgboost", without, NAMES[1:], row=0, feature=None, datatypes=DEMO_DATATYPES, matrix=False,
                   oip_input="amount")  # fmt: skip
    extra = [{**row, "coupon": 1.0} for row in demo_records(transactions)]
    expect_refused(client, "xgboost", extra, [*NAMES, "coupon"], row=0, feature=None, datatypes=DEMO_DATATYPES,
                   matrix=False, oip_input="coupon")  # fmt: skip


def test_more_rows_than_max_batch_rows_are_refused_as_in_rows(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    records = demo_records(transactions, MAX_BATCH_ROWS + 1)
    expect_refused(client, "xgboost", records, NAMES, row=None, feature=None, datatypes=DEMO_DATATYPES)


def test_null_is_a_missing_value_in_every_columnar_form(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    records = demo_records(transactions)
    records[1]["amount"] = None
    records[4]["hour_of_day"] = None
    expected = v1_probabilities(client, "xgboost", records)
    for form, body in tensor_forms(records, NAMES, DEMO_DATATYPES).items():
        probabilities = oip_probabilities(client.post("/v2/models/xgboost/infer", json=body))
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12, err_msg=form)
    for form, body in invocation_forms(records, NAMES).items():
        response = client.post("/invocations/xgboost", json=body)
        assert response.status_code == 200, (form, response.text)
        assert response.json() == client.post("/invocations/xgboost", json={"dataframe_records": records}).json()


def test_nan_in_a_binary_tensor_of_an_integer_feature_is_a_missing_value(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
) -> None:
    records = demo_records(transactions)
    records[2]["hour_of_day"] = None
    matrix = pd.DataFrame(records, columns=NAMES).to_numpy(dtype=np.float64)
    tensor = triton.InferInput("x", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix, binary_data=True)
    probabilities = oip_probabilities(post_triton(client, "xgboost", [tensor]))
    np.testing.assert_allclose(probabilities, v1_probabilities(client, "xgboost", records), rtol=0, atol=1e-12)


def test_a_split_column_named_twice_is_refused_as_an_oip_input_sent_twice_is(
    client: TestClient,
    transactions: pd.DataFrame,  # type: ignore[type-arg]
) -> None:
    records = demo_records(transactions)
    split = {"columns": [*NAMES, "amount"], "data": [[row[n] for n in NAMES] + [1.0] for row in records]}
    response = client.post("/invocations/xgboost", json={"dataframe_split": split})
    assert response.status_code == 400, response.text
    assert "'amount' is named more than once" in response.json()["message"]
