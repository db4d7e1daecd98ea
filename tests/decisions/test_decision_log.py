"""The decision log through the real app and pool: every protocol's scored rows land in one Parquet dataset with
the fields the client was answered, and a directory that cannot be written drops (counted) while serving goes on."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest
from litestar.testing import TestClient

from fraud_inference.api.app import create_app
from fraud_inference.decisions import feature_column
from fraud_inference.demo.dataset import FEATURES
from fraud_inference.settings import Settings
from tests.api.conftest import wait_ready
from tests.api.test_oip import per_feature
from tests.api.test_predict import rows
from tests.decisions.conftest import read_log, wait_for_rows

ARROW_TYPES = {"double": "double", "float": "double", "long": "int64", "integer": "int32", "boolean": "bool"}


def app_settings(registry: str, directory: Path, **more: str) -> Settings:
    return Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": registry,
            "GRPC": "off",  # in-process apps: no gRPC port to share between them
            "WORKERS": "1",
            "DECISION_LOG": str(directory),
            "DECISION_LOG_FLUSH_S": "0.2",
            **more,
        }
    )


class Answered:
    """What one client sent and was answered: the rows, and per row the probability and decision."""

    def __init__(self, request_id: str, protocol: str, model: str, sent: list[dict[str, Any]]) -> None:
        self.request_id = request_id
        self.protocol = protocol
        self.model = model
        self.sent = sent
        self.probabilities: list[float] = []
        self.is_fraud: list[bool] = []
        self.version = ""
        self.selected_by = ""
        self.threshold: float | None = None
        self.generation: int | None = None


def ask_v1(client: TestClient, model: str, instances: list[dict[str, Any]], request_id: str) -> Answered:  # type: ignore[type-arg]
    """`/v1/predict` of `instances`, and what it answered."""
    answered = Answered(request_id, "v1", model, instances)
    response = client.post(
        "/v1/predict", json={"model": model, "instances": instances}, headers={"x-request-id": request_id}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    answered.probabilities = [p["fraud_probability"] for p in body["predictions"]]
    answered.is_fraud = [p["is_fraud"] for p in body["predictions"]]
    answered.version, answered.threshold, answered.generation = (
        body["model_version"],
        body["threshold"],
        body["generation"],
    )
    answered.selected_by = body["selected_by"]
    return answered


def ask_mlflow(
    client: TestClient,  # type: ignore[type-arg]
    model: str,
    sent: list[dict[str, Any]],
    body: dict[str, Any],
    name: str,
) -> list[Answered]:
    """`/invocations` of `body` (holding the rows `sent`), then `/v1/predict` of the same rows: MLflow's answer for
    these models is labels, so the probabilities its records must hold are the ones /v1 answers."""
    invocation = Answered(f"logged-{name}", "mlflow", model, sent)
    response = client.post(f"/invocations/{model}", json=body, headers={"x-request-id": invocation.request_id})
    assert response.status_code == 200, response.text
    v1 = ask_v1(client, model, sent, f"logged-v1-{name}")
    invocation.probabilities = v1.probabilities
    return [invocation, v1]


@pytest.fixture(scope="module")
def logged(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Answered]]:
    """Requests of every protocol answered by an app whose decision log is on, and the log's directory once the
    app has shut down (its lifespan writes what is left)."""
    from fraud_inference.demo.dataset import make_transactions

    transactions, _labels = make_transactions(40, seed=7)
    directory = tmp_path_factory.mktemp("decisions")
    answered: list[Answered] = []
    with TestClient(create_app(app_settings(demo_registry, directory))) as client:
        wait_ready(client)
        instances = rows(transactions, 5)
        instances[1]["amount"] = None  # a missing value: logged as null
        instances[2]["hour_of_day"] = None
        answered.append(ask_v1(client, "xgboost", instances, "logged-v1"))

        # MLflow's answer for these models is labels: the probabilities the log must hold are /v1's for the rows.
        frame = transactions.iloc[5:9]
        split = {"columns": list(frame.columns), "data": json.loads(frame.to_json(orient="values"))}
        answered += ask_mlflow(client, "lightgbm", rows(frame, len(frame)), {"dataframe_split": split}, "split")
        records = rows(transactions.iloc[9:], 3)
        answered += ask_mlflow(client, "sklearn", records, {"dataframe_records": records}, "records")

        oip = Answered("logged-oip", "oip", "xgboost", rows(transactions.iloc[12:], 6))
        body = client.post(
            "/v2/models/xgboost/infer",
            json={"inputs": per_feature(transactions.iloc[12:18])},
            headers={"x-request-id": oip.request_id},
        ).json()
        outputs = {output["name"]: output["data"] for output in body["outputs"]}
        oip.probabilities, oip.is_fraud = outputs["fraud_probability"], outputs["is_fraud"]
        oip.threshold = body["parameters"]["threshold"]
        answered.append(oip)
        # Written while serving, every DECISION_LOG_FLUSH_S: no shutdown needed to see them.
        written = wait_for_rows(directory, sum(len(a.sent) for a in answered))
        assert len(written) == sum(len(a.sent) for a in answered)
        metrics = client.get("/metrics").text
    assert _sample(metrics, "fraud_inference_decision_log_records_written_total", 'model="xgboost"') == 11
    assert _sample(metrics, "fraud_inference_decision_log_files_written_total") >= 3
    assert _sample(metrics, "fraud_inference_decision_log_bytes_written_total") > 0
    return directory, answered


def test_every_protocol_logs_each_row_with_the_answer_the_client_got(logged: tuple[Path, list[Answered]]) -> None:
    directory, answered = logged
    log = read_log(directory)
    assert len(log) == sum(len(a.sent) for a in answered)  # the shutdown wrote nothing twice
    for request in answered:
        mine = log[log.request_id == request.request_id].sort_values("row")
        assert list(mine.row) == list(range(len(request.sent)))
        assert set(mine.protocol) == {request.protocol}
        assert set(mine.model.astype(str)) == {request.model}
        assert set(mine.registered_name) == {f"fraud-{request.model}"}
        assert len(set(mine.selected_by)) == 1
        if request.selected_by:
            assert set(mine.selected_by) == {request.selected_by}
        np.testing.assert_array_equal(mine.fraud_probability.to_numpy(), request.probabilities)
        np.testing.assert_array_equal(mine.is_fraud.to_numpy(), mine.fraud_probability >= mine.threshold)
        if request.is_fraud:
            assert list(mine.is_fraud) == request.is_fraud
        if request.threshold is not None:
            assert set(mine.threshold) == {request.threshold}
        if request.version:
            assert set(mine.version) == {request.version}
            assert set(mine.generation) == {request.generation}
        for feature in FEATURES:
            logged_values = mine[feature_column(feature.name)].tolist()
            sent = [row[feature.name] for row in request.sent]
            assert [_missing_as_none(v) for v in logged_values] == sent, feature.name
        assert all(mine.date.astype(str) == mine.time.dt.strftime("%Y-%m-%d"))


def test_the_log_is_one_typed_table_partitioned_by_model_and_date(logged: tuple[Path, list[Answered]]) -> None:
    directory, answered = logged
    files = sorted(directory.rglob("*"))
    parts = [path.relative_to(directory).parts for path in files if path.is_file()]
    assert parts, "no file written"
    for model, date, name in parts:  # no temporary file is left: each appeared complete, by a rename
        assert re.fullmatch(r"model=(xgboost|lightgbm|sklearn)", model)
        assert re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", date)
        assert re.fullmatch(r"part-[A-Za-z0-9._-]+-\d+-\d{8}T\d{6}-\d{6}\.parquet", name)
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == sum(len(a.sent) for a in answered)
    schema = table.schema
    assert str(schema.field("time").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("fraud_probability").type) == "double"
    assert str(schema.field("is_fraud").type) == "bool"
    for feature in FEATURES:
        assert str(schema.field(feature_column(feature.name)).type) == ARROW_TYPES[feature.kind], feature.name


def test_duckdb_reads_the_log_as_one_table(logged: tuple[Path, list[Answered]]) -> None:
    duckdb = pytest.importorskip("duckdb")
    directory, answered = logged
    counts = duckdb.sql(
        f"SELECT model, count(*) AS n FROM read_parquet('{directory}/**/*.parquet', hive_partitioning = true) "
        "GROUP BY model ORDER BY model"
    ).fetchall()
    expected: dict[str, int] = {}
    for request in answered:
        expected[request.model] = expected.get(request.model, 0) + len(request.sent)
    assert counts == sorted(expected.items())


def test_an_unwritable_directory_drops_counted_records_and_serving_goes_on(demo_registry: str, tmp_path: Path) -> None:
    # Under a regular file: no process can create it, root included (chmod would not stop root).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    directory = blocker / "decisions"
    with TestClient(create_app(app_settings(demo_registry, directory))) as client:
        wait_ready(client)
        from fraud_inference.demo.dataset import make_transactions

        transactions, _labels = make_transactions(4, seed=3)
        for _ in range(3):
            response = client.post("/v1/predict", json={"model": "xgboost", "instances": rows(transactions, 4)})
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + 60  # a bound: the writer tries at its next flush (0.2 s here)
        while (dropped := _dropped(client)) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dropped == 12
        assert client.get("/readyz").status_code == 200
    assert not directory.exists()


def _missing_as_none(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _dropped(client: TestClient) -> float:  # type: ignore[type-arg]
    metrics = client.get("/metrics").text
    return _sample(metrics, "fraud_inference_decision_log_records_dropped_total", 'reason="write_failed"')


def _sample(metrics: str, name: str, labels: str = "") -> float:
    for line in metrics.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
