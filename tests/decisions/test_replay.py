"""Replay of the decision log through the service's own loading and scoring code: the version that scored the
rows gives back its logged probabilities for every model shape, and another version gives the decisions MLflow's
own loader of that version gives."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from fraud_inference.api.app import create_app
from fraud_inference.decisions import feature_column
from fraud_inference.decisions.replay import ReplayError, parse_time, read_logged, replay
from fraud_inference.demo.dataset import FEATURE_NAMES, make_transactions
from fraud_inference.settings import Settings
from tests.api.conftest import wait_ready
from tests.api.test_predict import rows
from tests.conftest import run_cli, use_registry
from tests.decisions.conftest import read_log
from tests.models.test_real_models import COMPLETE_ONLY, frame_of
from tests.real_models import SHAPES, make_fraud_table, request_rows


@pytest.fixture(scope="module")
def shapes_logged(
    real_models: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, Path, dict[str, int]]:
    """Every shape of `tests/real_models.py` served with the decision log on; rows of each shape sent through
    /v1/predict or /invocations (as columns), with missing values and categories never seen in training."""
    tracking_uri, names = real_models
    directory = tmp_path_factory.mktemp("shape-decisions")
    settings = Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "GRPC": "off",  # in-process apps: no gRPC port to share between them
            "MODELS": ",".join(f"{key}={name}" for key, name in names.items()),
            "PYFUNC": "allow",
            "EXTRA_FEATURES": "ignore",
            "WORKERS": "1",
            "DECISION_LOG": str(directory),
            "FRAUD_INFERENCE_HOME": str(tmp_path_factory.mktemp("shape-home")),
        }
    )
    table, _labels = make_fraud_table(60, seed=5)
    every_row = request_rows(table)
    sent: dict[str, int] = {}
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout_s=240)
        for index, key in enumerate(SHAPES):
            shape_rows = [r for r in every_row if all(r.get(c) is not None for c in COMPLETE_ONLY.get(key, []))]
            if index % 2:
                body = '{"dataframe_split": ' + frame_of(shape_rows).to_json(orient="split") + "}"
                headers = {"content-type": "application/json"}
                response = client.post(f"/invocations/{key}", content=body, headers=headers)
            else:
                response = client.post("/v1/predict", json={"model": key, "instances": shape_rows})
            assert response.status_code == 200, (key, response.text)
            sent[key] = len(shape_rows)
    return settings, directory, sent  # the app's shutdown wrote every record


@pytest.mark.parametrize("key", list(SHAPES))
def test_replay_through_the_logged_version_gives_the_logged_probabilities(
    shapes_logged: tuple[Settings, Path, dict[str, int]], key: str
) -> None:
    settings, directory, sent = shapes_logged
    summary, replayed = replay(settings, directory, key, version="1")

    assert summary.rows == sent[key]
    assert summary.logged_versions == ("1",)
    logged = replayed.column("fraud_probability").to_numpy()
    again = replayed.column("replayed_fraud_probability").to_numpy()
    difference = float(np.max(np.abs(again - logged)))
    print(f"{key}: replayed {summary.rows} rows, max |diff| {difference:.3g}")
    np.testing.assert_allclose(again, logged, rtol=0, atol=1e-6)
    assert summary.flips == 0
    assert summary.counts["legit->fraud"] == summary.counts["fraud->legit"] == 0


def test_since_and_until_select_rows_by_their_logged_time(shapes_logged: tuple[Settings, Path, dict[str, int]]) -> None:
    _settings, directory, sent = shapes_logged
    key = next(iter(SHAPES))
    logged = read_logged(directory, key)
    (answered_at,) = set(logged.column("time").to_pylist())  # one request: one time
    after = answered_at + datetime.timedelta(microseconds=1)
    assert read_logged(directory, key, since=answered_at).num_rows == sent[key]
    assert read_logged(directory, key, since=after).num_rows == 0
    assert read_logged(directory, key, until=answered_at).num_rows == 0
    assert read_logged(directory, key, since=answered_at, until=after).num_rows == sent[key]
    assert parse_time(answered_at.replace(tzinfo=None).isoformat()) == answered_at  # no offset: UTC


def test_a_version_or_alias_the_model_lacks_names_what_it_has(
    shapes_logged: tuple[Settings, Path, dict[str, int]],
) -> None:
    settings, directory, _sent = shapes_logged
    key = next(iter(SHAPES))
    with pytest.raises(ReplayError) as missing_version:
        replay(settings, directory, key, version="99")
    assert str(missing_version.value).startswith("--version 99: registered model ")
    assert "its versions: 1;" in str(missing_version.value)
    assert "MODELS" not in str(missing_version.value)  # the flag was wrong, not the service's settings
    with pytest.raises(ReplayError) as missing_alias:
        replay(settings, directory, key, alias="no-such-alias")
    assert str(missing_alias.value).startswith("--alias no-such-alias: registered model ")


def test_a_time_range_outside_the_log_says_which_dates_it_holds(
    shapes_logged: tuple[Settings, Path, dict[str, int]],
) -> None:
    settings, directory, _sent = shapes_logged
    key = next(iter(SHAPES))
    (answered_at,) = set(read_logged(directory, key).column("time").to_pylist())
    day = answered_at.date().isoformat()
    later = answered_at + datetime.timedelta(days=3)
    with pytest.raises(ReplayError) as no_file:
        replay(settings, directory, key, since=later)
    assert str(no_file.value) == (
        f"no rows of model {key!r} logged from {later.isoformat()}: its log holds the dates {day} to {day} (UTC)"
    )
    just_after = answered_at + datetime.timedelta(microseconds=1)
    with pytest.raises(ReplayError) as no_row:
        replay(settings, directory, key, since=just_after)
    held = answered_at.isoformat()
    assert str(no_row.value) == (
        f"no rows of model {key!r} logged from {just_after.isoformat()}: its rows were logged from {held} to {held}"
    )


def test_the_output_names_the_version_replayed_through(
    shapes_logged: tuple[Settings, Path, dict[str, int]],
) -> None:
    settings, directory, sent = shapes_logged
    key = next(iter(SHAPES))
    summary, replayed = replay(settings, directory, key, version="1")
    assert set(replayed.column("replayed_name").to_pylist()) == {summary.name}
    assert set(replayed.column("replayed_version").to_pylist()) == {"1"}
    assert replayed.num_rows == sent[key]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--version", "abc"], "--version 'abc': a version is a number, e.g. --version 3"),
        (["--output", "replayed.csv"], "--output replayed.csv: the output is Parquet; name it FILE.parquet"),
        (["--since", "2026-12-08", "--until", "2026-12-01"], "--since 2026-12-08T00:00:00+00:00 is not before --until"),
    ],
)
def test_a_wrong_option_is_named_before_any_work(
    demo_registry: str, tmp_path: Path, options: list[str], said: str
) -> None:
    done = run_cli(["replay", str(tmp_path), "--model", "xgboost", *options], {"MLFLOW_TRACKING_URI": demo_registry},
                   tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert f"fraud-inference: cannot replay: {said}" in done.stderr
    assert "Traceback" not in done.stderr


def test_replay_of_a_directory_that_is_not_there_says_where_logs_are(demo_registry: str, tmp_path: Path) -> None:
    done = run_cli(["replay", str(tmp_path / "decisions"), "--model", "xgboost"],
                   {"MLFLOW_TRACKING_URI": demo_registry}, tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert f"cannot replay: no directory {tmp_path / 'decisions'}: name the decision log's directory" in done.stderr


def test_replay_of_a_model_with_no_rows_exits_1_naming_where_it_looked(demo_registry: str, tmp_path: Path) -> None:
    done = run_cli(["replay", str(tmp_path), "--model", "xgboost"], {"MLFLOW_TRACKING_URI": demo_registry}, tmp_path)
    assert done.returncode == 1
    assert "cannot replay: no decision-log files for model 'xgboost'" in done.stderr
    assert str(tmp_path / "model=xgboost") in done.stderr


def test_replay_through_another_version_prints_the_decisions_of_mlflow_loader_of_that_version(
    private_registry: str, tmp_path: Path
) -> None:
    # COMPILED_TREES=off here: the shapes above replay compiled; this one is about the counts, not gcc's time.
    # Version 2 of fraud-xgboost: the demo's LightGBM model, at another threshold. Version 1 stays the champion.
    # A `models:/m-...` source is looked up through the process-wide tracking URI, which another test may have moved.
    use_registry(private_registry)
    client = mlflow.MlflowClient(tracking_uri=private_registry, registry_uri=private_registry)
    source = client.get_model_version("fraud-lightgbm", "1").source
    version = client.create_model_version("fraud-xgboost", source, tags={"threshold": "0.2"}).version
    assert str(version) == "2"
    directory = tmp_path / "decisions"
    home = tmp_path / "home"
    settings = Settings.from_env(
        {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "DECISION_LOG": str(directory),
         "FRAUD_INFERENCE_HOME": str(home), "COMPILED_TREES": "off", "GRPC": "off"}
    )  # fmt: skip
    transactions, _labels = make_transactions(300, seed=21)
    with TestClient(create_app(settings)) as app:
        wait_ready(app)
        for start in range(0, 300, 50):
            response = app.post("/v1/predict", json={"model": "xgboost", "instances": rows(transactions[start:], 50)})
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "1"

    output = tmp_path / "not-yet" / "replayed.parquet"  # its folder is made, not a traceback
    env = {"MLFLOW_TRACKING_URI": private_registry, "FRAUD_INFERENCE_HOME": str(home), "COMPILED_TREES": "off"}
    done = run_cli(["replay", str(directory), "--model", "xgboost", "--version", "2", "--output", str(output)], env,
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    print(done.stdout)

    logged = read_log(directory).sort_values(["time", "request_id", "row"])
    use_registry(private_registry)
    reference = mlflow.lightgbm.load_model("models:/fraud-xgboost/2")
    features = pd.DataFrame({name: logged[feature_column(name)].to_numpy() for name in FEATURE_NAMES})
    expected = reference.predict_proba(features)[:, 1] >= 0.2
    before = logged.is_fraud.to_numpy()
    counts = {
        (b, a): int(np.count_nonzero((before == b) & (expected == a))) for b in (False, True) for a in (False, True)
    }
    assert counts[(False, True)] > 0, "the other version should flip some decisions, or the test shows nothing"
    assert _printed_counts(done.stdout) == counts
    assert "replayed 300 rows of model 'xgboost'" in done.stdout
    assert f"decision flips: {counts[(False, True)] + counts[(True, False)]}" in done.stdout
    assert f"wrote 300 rows to {output}" in done.stdout
    assert not any(line.startswith("{") for line in done.stdout.splitlines())  # log lines go to stderr
    # Each flipped row shows both probabilities beside the thresholds that decided them (0.5 logged, 0.2 replayed).
    flipped_line = re.search(r"^\s+\S+\s+\S+\s+\d+\s+[\d.]+\s+0\.5\s+[\d.]+\s+0\.2$", done.stdout, re.M)
    assert flipped_line, done.stdout
    written = pq.read_table(output).to_pandas()
    assert len(written) == 300
    assert set(written.replayed_version) == {"2"}
    assert set(written.model) == {"xgboost"}
    assert list(written.replayed_is_fraud) == list(expected)


def _printed_counts(stdout: str) -> dict[tuple[bool, bool], int]:
    legit = re.search(r"logged legit\s+(\d+)\s+(\d+)", stdout)
    fraud = re.search(r"logged fraud\s+(\d+)\s+(\d+)", stdout)
    assert legit, stdout
    assert fraud, stdout
    return {
        (False, False): int(legit[1]), (False, True): int(legit[2]),
        (True, False): int(fraud[1]), (True, True): int(fraud[2]),
    }  # fmt: skip
