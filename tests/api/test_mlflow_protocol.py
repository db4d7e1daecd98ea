"""MLflow's scoring protocol through the real app and pool: every body form, answers equal MLflow's pyfunc, errors.

The end-to-end comparison with a real `mlflow models serve` and MLflow's own client is in tests/e2e/test_protocols.py.
"""

from __future__ import annotations

import json
import math

import mlflow.pyfunc
import pandas as pd
import pytest
from litestar.testing import TestClient

from tests.api.test_predict import rows
from tests.conftest import use_registry

MODELS = ["xgboost", "lightgbm", "sklearn"]


def pyfunc_predictions(demo_registry: str, client: TestClient, model: str, frame: pd.DataFrame) -> list[object]:  # type: ignore[type-arg]
    """What MLflow's own pyfunc wrapper of the served version answers for `frame`, as JSON would carry it."""
    served = client.get("/v1/version").json()["models"][model]
    use_registry(demo_registry)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{served['name']}/{served['version']}")
    answer: list[object] = json.loads(pd.Series(pyfunc.predict(frame)).to_json(orient="records"))
    return answer


def bodies(frame: pd.DataFrame) -> dict[str, bytes]:
    """The same rows in every JSON form MLflow's scoring server reads."""
    records = json.loads(frame.to_json(orient="records"))
    columns = {name: json.loads(frame[name].to_json(orient="values")) for name in frame.columns}
    forms: dict[str, object] = {
        "dataframe_split": {"dataframe_split": json.loads(frame.to_json(orient="split"))},
        "dataframe_split_without_index": {
            "dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}
        },
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs_records": {"inputs": records},
        "inputs_columns": {"inputs": columns},
        "with_params": {"dataframe_records": records, "params": {"anything": 1}},
    }
    return {name: json.dumps(body).encode() for name, body in forms.items()}


@pytest.mark.parametrize("model", MODELS)
def test_every_body_form_answers_what_mlflow_pyfunc_answers(
    client: TestClient,
    demo_registry: str,
    transactions: pd.DataFrame,
    model: str,  # type: ignore[type-arg]
) -> None:
    frame = transactions.head(30)
    expected = pyfunc_predictions(demo_registry, client, model, frame)
    for form, body in bodies(frame).items():
        response = client.post(f"/invocations/{model}", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200, (form, response.text)
        assert response.json() == {"predictions": expected}, form
    csv = client.post(f"/invocations/{model}", content=frame.to_csv(index=False), headers={"content-type": "text/csv"})
    assert csv.status_code == 200, csv.text
    assert csv.json() == {"predictions": expected}


def test_plain_invocations_scores_with_the_default_model(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    body = {"dataframe_records": rows(transactions, 5)}
    assert client.post("/invocations", json=body).json() == client.post("/invocations/xgboost", json=body).json()


def test_labels_agree_with_v1_probabilities(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    instances = rows(transactions, 40)
    v1 = client.post("/v1/predict", json={"model": "lightgbm", "instances": instances}).json()
    labels = client.post("/invocations/lightgbm", json={"instances": instances}).json()["predictions"]
    assert labels == [int(p["fraud_probability"] > 0.5) for p in v1["predictions"]]


def test_probes_and_version_answer_as_mlflow_does(client: TestClient, unready_client: TestClient) -> None:  # type: ignore[type-arg]
    for path in ("/ping", "/health"):
        assert (client.get(path).status_code, client.get(path).text) == (200, "\n")
        assert unready_client.get(path).status_code == 503
    assert client.get("/version").text == mlflow.__version__


@pytest.mark.parametrize(
    ("body", "status", "error_code", "says"),
    [
        ({"dataframe_records": [], "instances": []}, 400, "BAD_REQUEST", "exactly one of the input fields"),
        ({"records": []}, 400, "BAD_REQUEST", "exactly one of the input fields"),
        ([{"amount": 1.0}], 400, "BAD_REQUEST", "Received a list"),
        ({"dataframe_split": {"columns": ["amount"], "data": [[1.0, 2.0]]}}, 400, "BAD_REQUEST", "data[0]"),
        ({"inputs": {"amount": [1.0], "hour_of_day": [1, 2]}}, 400, "BAD_REQUEST", "every column"),
        ({"dataframe_records": [{"amount": 1.0}]}, 400, "INVALID_PARAMETER_VALUE", "row 0"),
        ({"dataframe_records": [], "params": {"output_margin": True}}, 400, "INVALID_PARAMETER_VALUE", "output_margin"),
        ({"dataframe_records": [], "params": [1]}, 400, "BAD_REQUEST", "params"),
    ],
    ids=[
        "two-forms",
        "no-form",
        "a-list",
        "ragged-split",
        "ragged-columns",
        "missing-feature",
        "xgb-params",
        "params-list",
    ],
)
def test_bad_bodies_answer_mlflow_errors(
    client: TestClient,
    body: object,
    status: int,
    error_code: str,
    says: str,  # type: ignore[type-arg]
) -> None:
    response = client.post("/invocations", json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error_code"] == error_code
    assert says in answer["message"], answer


def test_an_invalid_row_names_row_and_column(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    records = rows(transactions, 3)
    records[2]["amount"] = "lots"  # type: ignore[assignment]
    answer = client.post("/invocations/sklearn", json={"dataframe_records": records}).json()
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "row 2, column 'amount'" in answer["message"], answer


def test_unknown_model_not_json_and_not_utf8(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    body = {"dataframe_records": rows(transactions, 1)}
    unknown = client.post("/invocations/catboost", json=body)
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/vnd.apache.parquet"):
        refused = client.post("/invocations", content=b"amount\n1.0", headers={"content-type": content_type})
        assert refused.status_code == 415, content_type
        assert "application/json" in refused.json()["message"]
        assert "text/csv" in refused.json()["message"]
    latin = client.post("/invocations", content=b"{}", headers={"content-type": "application/json; charset=latin-1"})
    assert (latin.status_code, latin.json()["error_code"]) == (415, "BAD_REQUEST")
    assert "send application/json or text/csv, in UTF-8" in latin.json()["message"]


def test_not_ready_is_503_in_mlflow_shape(unready_client: TestClient) -> None:  # type: ignore[type-arg]
    response = unready_client.post("/invocations", json={"dataframe_records": [{"amount": 1.0}]})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def json_forms(records: list[dict[str, object]]) -> dict[str, bytes]:
    """`records` in every JSON form of /invocations; an infinity is written `1e999`, as JSON can only carry it."""
    names = list(records[0])
    forms: dict[str, object] = {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": [list(r.values()) for r in records]}},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs_records": {"inputs": records},
        "instances_columns": {"instances": {name: [r[name] for r in records] for name in names}},
        "inputs_columns": {"inputs": {name: [r[name] for r in records] for name in names}},
    }
    return {form: json.dumps(body).replace("Infinity", "1e999").encode() for form, body in forms.items()}


@pytest.mark.parametrize("column", ["amount", "hour_of_day"])
@pytest.mark.parametrize("infinity", [math.inf, -math.inf])
def test_an_infinity_in_any_json_form_is_refused_naming_row_and_column(
    client: TestClient,
    transactions: pd.DataFrame,
    column: str,
    infinity: float,  # type: ignore[type-arg]
) -> None:
    records: list[dict[str, object]] = rows(transactions, 3)  # type: ignore[assignment]
    records[2][column] = infinity
    for form, body in json_forms(records).items():
        response = client.post("/invocations/lightgbm", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (form, response.text)
        answer = response.json()
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE", (form, answer)
        assert f"row 2, column '{column}'" in answer["message"], (form, answer)
        assert "not a finite number" in answer["message"], (form, answer)


def csv_refusal(client: TestClient, transactions: pd.DataFrame, column: str, row: int, cell: str) -> str:  # type: ignore[type-arg]
    """The message of the 400 `/invocations` answers for three rows of CSV holding `cell` at `row` in `column`."""
    frame = transactions.head(3).copy()
    frame[column] = frame[column].astype(object)
    frame.loc[frame.index[row], column] = cell
    response = client.post("/invocations", content=frame.to_csv(index=False), headers={"content-type": "text/csv"})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    message: str = response.json()["message"]
    return message


@pytest.mark.parametrize("spelling", ["inf", "-inf", "Infinity", "-Infinity", "1e999", "-1E400"])
@pytest.mark.parametrize("column", ["amount", "hour_of_day"])
def test_an_infinity_in_csv_is_refused_naming_row_and_column(
    client: TestClient,
    transactions: pd.DataFrame,
    column: str,
    spelling: str,  # type: ignore[type-arg]
) -> None:
    message = csv_refusal(client, transactions, column, 1, spelling)
    assert f"row 1, column '{column}'" in message
    assert "not a finite number" in message


@pytest.mark.parametrize("spelling", ["\uff11\uff12", "1_000", "\u0663", "twelve"])
@pytest.mark.parametrize("column", ["amount", "hour_of_day"])
def test_a_csv_cell_pandas_reads_as_text_is_refused_in_a_numeric_column(
    client: TestClient,
    transactions: pd.DataFrame,
    column: str,
    spelling: str,  # type: ignore[type-arg]
) -> None:
    """Full-width (U+FF11 U+FF12) or Arabic-Indic (U+0663) digits and `1_000` are numbers to Python's int() and
    float(), text to pandas.read_csv (MLflow's server): refused as any other text in a numeric column is
    (`twelve`), naming row and column."""
    message = csv_refusal(client, transactions, column, 2, spelling)
    assert f"row 2, column '{column}': Expected `float`, got `str`" in message


# pandas.read_csv's default missing values (MLflow's server reads CSV with it), a few of each kind.
_PANDAS_MISSING = ["", "nan", "NaN", "-nan", "NA", "N/A", "n/a", "NULL", "null", "None", "#N/A", "<NA>", "1.#IND"]


@pytest.mark.parametrize("column", ["amount", "hour_of_day"])
def test_csv_cells_pandas_reads_as_missing_are_missing_values(
    client: TestClient,
    transactions: pd.DataFrame,
    column: str,  # type: ignore[type-arg]
) -> None:
    count = len(_PANDAS_MISSING)
    frame = transactions.head(count).copy()
    frame[column] = frame[column].astype(object)
    for row, cell in enumerate(_PANDAS_MISSING):
        frame.loc[frame.index[row], column] = cell
    response = client.post(
        "/invocations/xgboost", content=frame.to_csv(index=False), headers={"content-type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    missing = rows(transactions, count)
    for record in missing:
        record[column] = None  # type: ignore[assignment]
    assert response.json() == client.post("/invocations/xgboost", json={"dataframe_records": missing}).json()


@pytest.mark.parametrize("spelling", ["NAN", "+nan", "nAn", "+NaN", "--5", "+-5"])
def test_a_nan_spelling_pandas_does_not_read_is_refused(
    client: TestClient,
    transactions: pd.DataFrame,
    spelling: str,  # type: ignore[type-arg]
) -> None:
    """Python's float() reads any spelling of NaN; pandas.read_csv only its missing-value list, and fails on the
    rest (MLflow answers 400): refused as text, not scored as a missing value. Doubled signs, which int()
    refuses, are text too (they were a 500 in a long column)."""
    for column in ("amount", "hour_of_day"):  # a double and a long column
        message = csv_refusal(client, transactions, column, 1, spelling)
        assert f"row 1, column '{column}': Expected `float`, got `str`" in message


def test_an_integer_cell_past_float64_is_refused_by_name(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    """A 400-digit integer (exact as Python's int, never a float64) and one past int()'s 4,300 digits (text) in a
    long column: 400 naming row and column, never a 500."""
    for cell in ("9" * 400, "1" * 4301):
        assert "row 2, column 'hour_of_day'" in csv_refusal(client, transactions, "hour_of_day", 2, cell)


@pytest.mark.parametrize(
    ("body", "subject"),
    [
        ({"dataframe_split": {"columns": ["amount"], "data": []}}, "dataframe_split.data is empty"),
        ({"dataframe_records": []}, "dataframe_records is empty"),
        ({"instances": []}, "instances is empty"),
        ({"inputs": []}, "inputs is empty"),
        ({"inputs": {"amount": [], "hour_of_day": []}}, "inputs is empty"),
        ({"instances": {}}, "instances is empty"),
    ],
)
def test_a_body_without_rows_names_what_is_empty(client: TestClient, body: object, subject: str) -> None:  # type: ignore[type-arg]
    response = client.post("/invocations", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"{subject}: send at least one row" in response.json()["message"]
    csv = client.post("/invocations", content="amount,hour_of_day\n", headers={"content-type": "text/csv"})
    assert csv.status_code == 400, csv.text
    assert "the CSV input under its header row is empty" in csv.json()["message"]


def test_a_split_index_must_label_each_row(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    split = json.loads(transactions.head(3).to_json(orient="split"))
    for index in (split["index"][:2], split["index"] + [3], 7):
        response = client.post("/invocations", json={"dataframe_split": {**split, "index": index}})
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "BAD_REQUEST"
        assert "index" in response.json()["message"]
        assert "does not match the 3 rows of data" in response.json()["message"]
    assert client.post("/invocations", json={"dataframe_split": split}).status_code == 200


def test_a_column_named_twice_is_refused_in_a_split_and_in_csv(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    split = json.loads(transactions.head(2).to_json(orient="split"))
    split["columns"].append("amount")
    for row in split["data"]:
        row.append(912.4)  # the second `amount`: which one would score is a guess
    response = client.post("/invocations", json={"dataframe_split": split})
    assert response.status_code == 400, response.text
    assert "'amount' is named more than once" in response.json()["message"]
    frame = transactions.head(2).copy()
    csv = frame.to_csv(index=False).splitlines()
    doubled = "\n".join([f"{csv[0]},amount", *(f"{line},912.4" for line in csv[1:])])
    response = client.post("/invocations", content=doubled, headers={"content-type": "text/csv"})
    assert response.status_code == 400, response.text
    assert "'amount' is named more than once" in response.json()["message"]


def test_csv_with_a_byte_order_mark_scores_as_pandas_reads_it(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
) -> None:
    text = transactions.head(3).to_csv(index=False)
    plain = client.post("/invocations", content=text, headers={"content-type": "text/csv"})
    marked = client.post("/invocations", content="\ufeff" + text, headers={"content-type": "text/csv"})
    assert plain.status_code == marked.status_code == 200, marked.text
    assert marked.json() == plain.json()


def test_csv_with_old_mac_line_ends_scores_as_pandas_reads_it(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
) -> None:
    """A bare CR ends a line for pandas.read_csv (MLflow's server); the csv module raised on it unless told."""
    text = transactions.head(3).to_csv(index=False)
    plain = client.post("/invocations", content=text, headers={"content-type": "text/csv"})
    cr = client.post("/invocations", content=text.replace("\n", "\r"), headers={"content-type": "text/csv"})
    assert plain.status_code == cr.status_code == 200, cr.text
    assert cr.json() == plain.json()
