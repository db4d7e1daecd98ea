"""`/v1/predict` with `explain`, through granian and the real worker pool (compiled trees on), on real models.

Contributions and base values equal `pred_contribs` / `pred_contrib` of the model `mlflow.<flavour>.load_model`
returns (1e-6); their sum is the library's margin up to XGBoost's float32 residual; reasons are the top K in order,
with mapped codes.
"""

from __future__ import annotations

import json
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from tests.conftest import RunningService, use_registry
from tests.real_models import (
    CATEGORICAL,
    COUNTRIES,
    MERCHANTS,
    NUMERIC,
    REASON_CODES,
    categorized,
    make_fraud_table,
    request_rows,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
TRAINING_CATEGORIES = {"merchant_category": sorted(MERCHANTS), "country": sorted(COUNTRIES)}
XGBOOST_SHAPES = ["xgb-classifier", "xgb-numeric", "xgb-booster", "xgb-booster-categorical", "xgb-early-stopped"]
LIGHTGBM_SHAPES = ["lgb-classifier", "lgb-booster", "lgb-booster-categorical"]
CATEGORICAL_SHAPES = {"xgb-classifier", "xgb-booster-categorical", "lgb-classifier", "lgb-booster-categorical"}
UNEXPLAINED = ["sklearn-pipeline", "sklearn-pca-pipeline", "pyfunc-custom"]
CODES = REASON_CODES  # the version tag `reason_codes` of xgb-numeric in `real_models`


@pytest.fixture(scope="module")
def service(real_service: RunningService) -> RunningService:
    """The session's `real_service`: every XGBoost and LightGBM shape, a pipeline ending in XGBoost, and models that
    cannot explain; xgb-numeric carries the reason_codes tag (`REASON_CODES`)."""
    return real_service


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    table, _labels = make_fraud_table(30, seed=9)
    return request_rows(table)  # missing values sent as null and left out; unseen categories


def library_numbers(tracking_uri: str, name: str, key: str, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """The fraud class's contributions (`pred_contribs` / `pred_contrib`) and margin (`output_margin` /
    `raw_score`) of MLflow's loaded model on the rows, over the trees its probabilities use."""
    use_registry(tracking_uri)
    frame = pd.DataFrame(rows, columns=NUMERIC + CATEGORICAL)
    frame = categorized(frame, TRAINING_CATEGORIES) if key in CATEGORICAL_SHAPES else frame[NUMERIC]
    if key.startswith("lgb"):
        model = mlflow.lightgbm.load_model(f"models:/{name}/1")
        sign = -1.0 if not isinstance(model, lgb.Booster) and next(iter(model.classes_)) == "fraud" else 1.0
        contributions = sign * np.asarray(model.predict(frame, pred_contrib=True), np.float64)
        return contributions, sign * np.asarray(model.predict(frame, raw_score=True), np.float64)
    model = mlflow.xgboost.load_model(f"models:/{name}/1")
    booster = model if isinstance(model, xgb.Booster) else model.get_booster()
    best = getattr(model, "best_iteration", None) if not isinstance(model, xgb.Booster) else None
    iterations = (0, best + 1) if best is not None else (0, 0)
    matrix = xgb.DMatrix(frame, enable_categorical=True)
    contributions = booster.predict(matrix, pred_contribs=True, iteration_range=iterations)
    margin = booster.predict(matrix, output_margin=True, iteration_range=iterations)
    return np.asarray(contributions, np.float64), np.asarray(margin, np.float64)


@pytest.mark.parametrize("key", XGBOOST_SHAPES + LIGHTGBM_SHAPES)
def test_every_tree_shape_explains_with_the_librarys_own_contributions(
    service: RunningService, real_models: tuple[str, dict[str, str]], rows: list[dict[str, Any]], key: str
) -> None:
    tracking_uri, names = real_models
    features = NUMERIC + (CATEGORICAL if key in CATEGORICAL_SHAPES else [])
    with service.client() as client:
        every = client.post("/v1/predict", json={"model": key, "instances": rows, "explain": len(features)})
        top3 = client.post("/v1/predict", json={"model": key, "instances": rows, "explain": 3})
    assert every.status_code == 200, every.text
    assert every.json()["margin"] == "log_odds"
    contributions, margin = library_numbers(tracking_uri, names[key], key, rows)
    served = np.zeros_like(contributions)
    for index, prediction in enumerate(every.json()["predictions"]):
        served[index, -1] = prediction["base_value"]
        for reason in prediction["reasons"]:
            served[index, features.index(reason["feature"])] = reason["contribution"]
        assert {reason["feature"] for reason in prediction["reasons"]} == set(features)
        ranked = [reason["contribution"] for reason in prediction["reasons"]]
        assert ranked == sorted(ranked, reverse=True)
    difference = float(np.max(np.abs(served - contributions)))
    # NOTE: XGBoost sums its contributions in float32: their sum misses its own output_margin by its rounding;
    # LightGBM's are float64, their sum its raw_score.
    residual = float(np.max(np.abs(served.sum(axis=1) - margin)))
    print(f"{key}: contributions max |diff| {difference:.3g}, sum - output_margin max {residual:.3g}, {len(rows)} rows")
    assert difference <= 1e-6
    assert residual <= (1e-5 if key.startswith("xgb") else 1e-9)
    assert top3.status_code == 200, top3.text
    for full, top in zip(every.json()["predictions"], top3.json()["predictions"], strict=True):
        assert top["reasons"] == full["reasons"][:3]
        assert top["fraud_probability"] == full["fraud_probability"]


def test_reasons_carry_the_value_received_and_the_versions_codes(
    service: RunningService, rows: list[dict[str, Any]]
) -> None:
    with service.client() as client:
        numeric = client.post("/v1/predict", json={"model": "xgb-numeric", "instances": rows, "explain": 7}).json()
        categorical = client.post("/v1/predict", json={"model": "xgb-classifier", "instances": rows, "explain": 9})
    for row, prediction in zip(rows, numeric["predictions"], strict=True):
        by_feature = {reason["feature"]: reason for reason in prediction["reasons"]}
        assert by_feature["amount"]["value"] == row["amount"]
        assert by_feature["txn_count_24h"]["value"] == row["txn_count_24h"]  # an integer, as the signature says
        assert by_feature["is_foreign"]["value"] is row["is_foreign"]
        assert by_feature["device_age_days"]["value"] == row.get("device_age_days")  # null or left out: null
        assert (by_feature["amount"]["code"], by_feature["amount"]["text"]) == ("A01", CODES["amount"]["text"])
        assert by_feature["txn_count_24h"]["code"] == "V02"
        assert "code" not in by_feature["distance_km"]
    unseen = [p for row, p in zip(rows, categorical.json()["predictions"], strict=True) if row["country"] == "ZZ"]
    assert unseen, "some rows send a category never seen in training"
    for prediction in unseen:  # scored as missing, and said so
        assert {r["feature"]: r["value"] for r in prediction["reasons"]}["country"] is None


def pipeline_numbers(tracking_uri: str, name: str, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Per signature column, XGBoost's own `pred_contribs` on the transformed rows of the pipeline
    `mlflow.sklearn.load_model` returns, summed over the columns its preprocessing made of it (named by
    `get_feature_names_out`), the bias last; and the booster's `output_margin`."""
    use_registry(tracking_uri)
    pipeline = mlflow.sklearn.load_model(f"models:/{name}/1")
    frame = pd.DataFrame(rows, columns=NUMERIC + CATEGORICAL)
    frame[NUMERIC] = frame[NUMERIC].astype("float64")
    matrix = xgb.DMatrix(pipeline[:-1].transform(frame))
    booster = pipeline[-1].get_booster()
    own = np.asarray(booster.predict(matrix, pred_contribs=True), np.float64)
    columns = NUMERIC + CATEGORICAL
    summed = np.zeros((len(rows), len(columns) + 1))
    for index, transformed in enumerate(pipeline[:-1].get_feature_names_out()):  # "categories__country_DE"
        source = next(column for column in columns if transformed.split("__", 1)[1].startswith(column))
        summed[:, columns.index(source)] += own[:, index]
    summed[:, -1] = own[:, -1]
    return summed, np.asarray(booster.predict(matrix, output_margin=True), np.float64)


def test_a_pipeline_ending_in_xgboost_gives_reasons_naming_its_signature_columns(
    service: RunningService, real_models: tuple[str, dict[str, str]], rows: list[dict[str, Any]]
) -> None:
    tracking_uri, names = real_models
    features = NUMERIC + CATEGORICAL
    with service.client() as client:
        answer = client.post(
            "/v1/predict", json={"model": "sklearn-xgb-pipeline", "instances": rows, "explain": len(features)}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["margin"] == "log_odds"
    contributions, margin = pipeline_numbers(tracking_uri, names["sklearn-xgb-pipeline"], rows)
    served = np.zeros_like(contributions)
    for index, prediction in enumerate(answer.json()["predictions"]):
        assert {reason["feature"] for reason in prediction["reasons"]} == set(features)  # "country", not its one-hots
        served[index, -1] = prediction["base_value"]
        for reason in prediction["reasons"]:
            served[index, features.index(reason["feature"])] = reason["contribution"]
        by_feature = {reason["feature"]: reason["value"] for reason in prediction["reasons"]}
        assert by_feature["country"] == rows[index].get("country")  # the string the pipeline received
    assert float(np.max(np.abs(served - contributions))) <= 1e-6
    assert float(np.max(np.abs(served.sum(axis=1) - margin))) <= 1e-5  # XGBoost sums in float32


def test_a_pipeline_step_that_mixes_columns_is_a_422_naming_the_step(service: RunningService) -> None:
    table, _labels = make_fraud_table(2, seed=1)
    body = {"model": "sklearn-pca-pipeline", "instances": request_rows(table), "explain": 2}
    with service.client() as client:
        response = client.post("/v1/predict", json=body)
        plain = client.post("/v1/predict", json={"model": "sklearn-pca-pipeline", "instances": request_rows(table)})
    assert response.status_code == 422, response.text
    assert "columns/numbers/pca" in response.json()["detail"]
    assert "PCA" in response.json()["detail"]
    assert plain.status_code == 200, plain.text  # scored as before, only not explained


@pytest.mark.parametrize("key", UNEXPLAINED)
def test_a_model_that_cannot_explain_is_a_422_naming_it_and_what_can(service: RunningService, key: str) -> None:
    table, _labels = make_fraud_table(2, seed=1)
    with service.client() as client:
        response = client.post("/v1/predict", json={"model": key, "instances": request_rows(table), "explain": 2})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"model {key!r}" in detail
    assert "XGBoost" in detail
    assert "LightGBM" in detail


@pytest.mark.parametrize("explain", [0, 8, -1, "3", True, 2.5, [3]])
def test_an_explain_outside_one_to_the_feature_count_is_a_400_naming_explain(
    service: RunningService, rows: list[dict[str, Any]], explain: Any
) -> None:
    with service.client() as client:
        response = client.post("/v1/predict", json={"model": "xgb-numeric", "instances": rows[:2], "explain": explain})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("explain: ")
    assert "from 1 to 7" in response.json()["detail"]
    # What was sent, as the client wrote it in JSON (`true`, `"3"`), not as Python prints it (`True`, `'3'`).
    assert response.json()["detail"].endswith(f"got {json.dumps(explain, separators=(',', ':'))}")


def test_explain_is_read_as_json_numbers_are_whole_3_0_is_3_and_an_overflowing_one_is_a_400(
    service: RunningService, rows: list[dict[str, Any]]
) -> None:
    """JSON does not tell 3 from 3.0 (integer features take 3.0 too); 1e999 overflows a float (not a whole number)."""
    instances = json.dumps(rows[:2])
    with service.client() as client:
        whole = client.post("/v1/predict", json={"model": "xgb-numeric", "instances": rows[:2], "explain": 3.0})
        huge = client.post(
            "/v1/predict",
            content=f'{{"model": "xgb-numeric", "instances": {instances}, "explain": 1e999}}',
            headers={"content-type": "application/json"},
        )
    assert whole.status_code == 200, whole.text
    assert [len(prediction["reasons"]) for prediction in whole.json()["predictions"]] == [3, 3]
    assert huge.status_code == 400, huge.text
    assert huge.json()["detail"].startswith("explain: ")
    assert huge.json()["detail"].endswith("got 1e999")


def test_a_plain_request_answers_as_before(service: RunningService, rows: list[dict[str, Any]]) -> None:
    with service.client() as client:
        answer = client.post("/v1/predict", json={"model": "xgb-numeric", "instances": rows[:3]}).json()
    assert "margin" not in answer
    assert all(set(prediction) == {"fraud_probability", "is_fraud"} for prediction in answer["predictions"])


@pytest.mark.parametrize("key", ["xgb-numeric", "lgb-booster"])
def test_oip_parameters_explain_adds_the_contributions_and_base_value_tensors(
    service: RunningService, real_models: tuple[str, dict[str, str]], rows: list[dict[str, Any]], key: str
) -> None:
    tracking_uri, names = real_models
    complete = [row for row in rows if all(row.get(column) is not None for column in NUMERIC + CATEGORICAL)][:6]
    datatypes = {"txn_count_24h": "INT64", "account_age_days": "INT64", "is_foreign": "BOOL", "is_online": "BOOL"}
    inputs = [
        {"name": name, "datatype": datatypes.get(name, "FP64"), "shape": [len(complete)],
         "data": [row[name] for row in complete]}
        for name in NUMERIC
    ]  # fmt: skip
    strings = [
        {"name": name, "datatype": "BYTES", "shape": [len(complete)], "data": [row[name] for row in complete]}
        for name in CATEGORICAL
    ]
    with service.client() as client:
        answer = client.post(f"/v2/models/{key}/infer", json={"inputs": inputs, "parameters": {"explain": 3}}).json()
        refused = client.post(
            "/v2/models/sklearn-pipeline/infer", json={"inputs": inputs + strings, "parameters": {"explain": 3}}
        )
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert set(outputs) == {"fraud_probability", "is_fraud", "contributions", "base_value"}, answer
    assert answer["parameters"]["margin"] == "log_odds"
    assert outputs["contributions"]["datatype"] == "FP64"
    assert outputs["contributions"]["shape"] == [len(complete), len(NUMERIC)]
    served = np.array(outputs["contributions"]["data"]).reshape(len(complete), len(NUMERIC))
    contributions, _margin = library_numbers(tracking_uri, names[key], key, complete)
    np.testing.assert_allclose(served, contributions[:, :-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["base_value"]["data"], contributions[:, -1], rtol=0, atol=1e-6)
    assert refused.status_code == 422, refused.text
    assert "cannot explain" in refused.text
