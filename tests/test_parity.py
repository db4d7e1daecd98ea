"""The parity gate: what the service serves must equal MLflow's own flavour loader, or the version is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.reading import fetch_artifact
from fraud_inference.models.scoring import ServedModel, load_model
from fraud_inference.models.trust import ModelTrust
from fraud_inference.parity import check_parity
from fraud_inference.registry import Registry
from tests.real_models import SHAPES

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def artifacts(
    real_models: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ModelArtifact]:
    tracking_uri, names = real_models
    registry = Registry(tracking_uri, alias="champion", stages=(), timeout_s=10)
    downloads = tmp_path_factory.mktemp("parity-downloads")
    trust = ModelTrust(pyfunc="allow")
    return {
        key: fetch_artifact(
            registry, registry.resolve(key, name), downloads, dependency_policy="compatible", trust=trust
        )
        for key, name in names.items()
    }


@pytest.mark.parametrize("key", list(SHAPES))
def test_every_shape_passes_the_gate_on_its_example_and_with_optional_columns_left_out(
    artifacts: dict[str, ModelArtifact], key: str
) -> None:
    report = check_parity(artifacts[key])
    assert report.ok, report.failures
    assert report.rows_from == "input example"
    optional = any(not feature.required for feature in artifacts[key].features)
    assert report.rows == (10 if optional else 5)  # the 5 example rows, again with the optional columns left out
    assert report.max_abs_diff is not None
    assert report.max_abs_diff <= 1e-6


class _OtherClass:
    """TEST DOUBLE, injected only in this test: a scorer that returns P(not fraud), the fault the gate must catch."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer
        self.needs_frame = scorer.needs_frame
        self.categories = scorer.categories
        self.takes_missing = scorer.takes_missing
        self.positive_class = scorer.positive_class

    def fraud_probability(self, batch: Any) -> Any:
        return 1.0 - self._scorer.fraud_probability(batch)


def test_the_gate_fails_on_a_deliberately_wrong_scorer_naming_model_version_row_and_both_values(
    artifacts: dict[str, ModelArtifact],
) -> None:
    def wrong(artifact: ModelArtifact) -> ServedModel:
        served = load_model(artifact)
        return ServedModel(_OtherClass(served.scorer), served.decoder)

    artifact = artifacts["xgb-numeric"]
    report = check_parity(artifact, load=wrong)
    assert not report.ok
    assert len(report.failures) == report.rows
    first = report.failures[0]
    assert first.startswith("model 'xgb-numeric' (real-xgb-numeric v1) row 0: served ")
    assert ", MLflow's loader " in first
    assert "likely cause: the other class is scored: set the version tag positive_class" in first


def test_a_version_the_service_cannot_load_fails_the_gate_whatever_parity_check_says(tmp_path: Path) -> None:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from fraud_inference.models.reading import read_artifact
    from fraud_inference.registry import ModelRef
    from tests.real_models import make_fraud_table

    table, labels = make_fraud_table(200, seed=4)
    features = table[["amount", "txn_count_24h"]]
    model = LogisticRegression().fit(features, labels.map({1: "fraud", 0: "legit"}))
    mlflow.sklearn.save_model(
        model, str(tmp_path / "model"), signature=infer_signature(features), input_example=features.head(3),
        pip_requirements=["scikit-learn"],
    )  # fmt: skip
    ref = ModelRef(key="m", name="fraud-labels", version="3", selected_by="test", run_id=None, threshold=0.5)
    artifact = read_artifact(ref, tmp_path / "model")
    for against_mlflow in (True, False):
        report = check_parity(artifact, against_mlflow=against_mlflow)
        assert not report.loaded
        assert "model 'm' (fraud-labels v3): the service cannot load it" in report.failures[0]
        assert "set the version tag positive_class" in report.failures[0]


def test_a_version_without_an_input_example_is_gated_on_rows_from_its_signature(tmp_path: Path) -> None:
    import mlflow
    import xgboost
    from mlflow.models import infer_signature

    from fraud_inference.models.reading import read_artifact
    from fraud_inference.registry import ModelRef
    from tests.real_models import NUMERIC, make_fraud_table

    table, labels = make_fraud_table(200, seed=4)
    model = xgboost.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(table[NUMERIC], labels)
    mlflow.xgboost.save_model(
        model, str(tmp_path / "model"), signature=infer_signature(table[NUMERIC]), pip_requirements=["xgboost"]
    )
    ref = ModelRef(key="m", name="no-example", version="1", selected_by="test", run_id=None, threshold=0.5)
    report = check_parity(read_artifact(ref, tmp_path / "model"))
    assert report.ok, report.failures
    assert report.rows_from == "signature"
    assert report.example_unused == "no input example was logged"
    # up to 5 rows at the split thresholds' quantiles, then device_age_days, distance_km and both left out
    assert 2 + 3 <= report.rows <= 5 + 3
    assert "numeric columns at their split thresholds' quantiles" in (report.rows_cover or "")
    assert np.isfinite(report.max_abs_diff or 0.0)


def save_with_unreadable_example(flavor: str, directory: Path) -> tuple[Any, pd.DataFrame]:
    """A real model saved by MLflow with an input example MLflow itself cannot read back: `txn_count_24h` is a
    pandas Int64 column with a missing value, so the signature says `long` and reading the example casts NA to
    int64. Returns the model as trained and the (categorized) training frame."""
    import lightgbm
    import mlflow
    import xgboost
    from mlflow.models import infer_signature

    from tests.real_models import categorized, make_fraud_table

    table, labels = make_fraud_table(400, seed=21)
    training = categorized(table)
    example = training.head(5).copy()
    example["txn_count_24h"] = example["txn_count_24h"].astype("Int64")
    example.loc[example.index[1], "txn_count_24h"] = pd.NA
    signature = infer_signature(example)
    if flavor == "xgboost":
        model: Any = xgboost.XGBClassifier(n_estimators=12, max_depth=3, enable_categorical=True, n_jobs=1)
        model.fit(training, labels)
        mlflow.xgboost.save_model(
            model, str(directory), signature=signature, input_example=example, pip_requirements=["xgboost"]
        )
    else:
        params = {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1}
        model = lightgbm.train(params, lightgbm.Dataset(training, label=labels), num_boost_round=12)
        mlflow.lightgbm.save_model(
            model, str(directory), signature=signature, input_example=example, pip_requirements=["lightgbm"]
        )
    return model, training


@pytest.mark.parametrize("flavor", ["xgboost", "lightgbm"])
def test_an_example_mlflow_cannot_read_is_named_and_the_rows_built_instead_exercise_splits_categories_and_gaps(
    tmp_path: Path, flavor: str
) -> None:
    from fraud_inference.checks import CheckReport, ModelCheck, gate, render
    from fraud_inference.models.reading import read_artifact
    from fraud_inference.models.scoring import example_rows
    from fraud_inference.models.signature_rows import MAX_SIGNATURE_ROWS
    from fraud_inference.registry import ModelRef
    from tests.real_models import CATEGORICAL, NUMERIC

    model, training = save_with_unreadable_example(flavor, tmp_path / "model")
    ref = ModelRef(key="m", name="int64-example", version="2", selected_by="test", run_id=None, threshold=0.5)
    artifact = read_artifact(ref, tmp_path / "model")

    check = ModelCheck(name=ref.name, version=ref.version, selected_by="test")
    gate(artifact, check, "strict")
    report = check.parity
    assert report is not None
    assert report.ok, report.failures
    assert report.rows_from == "signature"
    why = report.example_unused or ""
    assert why.startswith("MLflow cannot read the logged input example (MlflowFailedTypeConversion: ")
    assert "txn_count_24h" in why
    text = render(CheckReport(ok=True, registry="r", dependency_check="compatible", models={"m": check}))
    assert f"input example not used: {why}" in text
    assert "each training category of merchant_category, country and an unseen one" in text

    rows, covers = example_rows(artifact, load_model(artifact).scorer)
    assert covers == report.rows_cover
    assert len(rows) == report.rows <= MAX_SIGNATURE_ROWS
    for column in CATEGORICAL:  # every training category, and one never seen in training
        sent = {row[column] for row in rows if column in row}
        trained = set(training[column].cat.categories)
        assert trained < sent
        assert len(sent - trained) == 1
    optional = [feature.name for feature in artifact.features if not feature.required]
    assert "txn_count_24h" in optional
    for column in optional:  # each optional column left out in some row
        assert any(column not in row for row in rows)
    # The range of each column's splits, read here through the library's other public dump of the same trees.
    thresholds = _dumped_thresholds(model)
    for column in NUMERIC:
        sent_numbers = sorted({float(row[column]) for row in rows if row.get(column) is not None})
        if column in ("is_foreign", "is_online"):
            assert sent_numbers == [0.0, 1.0]
            continue
        assert len(sent_numbers) > 1, column  # not one zero: values where the model splits
        low, high = min(thresholds[column]), max(thresholds[column])
        assert low - 1 <= min(sent_numbers) < max(sent_numbers) <= high + 1, column  # +-1: integers rounded


def _dumped_thresholds(model: Any) -> dict[str, list[float]]:
    """Per column, the numeric split thresholds: LightGBM's `trees_to_dataframe`, XGBoost's JSON text dump
    (its `trees_to_dataframe` cannot parse a model with categorical splits)."""
    import json

    if hasattr(model, "trees_to_dataframe") and not hasattr(model, "get_booster"):
        trees = model.trees_to_dataframe()
        numeric = trees[trees["decision_type"] == "<="]
        return {str(name): list(group) for name, group in numeric.groupby("split_feature")["threshold"]}
    found: dict[str, list[float]] = {}
    stack = [json.loads(tree) for tree in model.get_booster().get_dump(dump_format="json")]
    while stack:
        node = stack.pop()
        if not isinstance(node.get("split_condition", []), list):  # a list: a categorical split
            found.setdefault(node["split"], []).append(float(node["split_condition"]))
        stack.extend(node.get("children", []))
    return found


def log_labelled_classifier(tracking_uri: str, workdir: Path, name: str, labels: dict[int, Any]) -> str:
    """Register a LogisticRegression whose classes are `labels` (no positive_class tag) as `name`@champion."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from tests.real_models import make_fraud_table, untrusted

    table, target = make_fraud_table(200, seed=4)
    features = table[["amount", "txn_count_24h"]]
    model = LogisticRegression().fit(features, target.map(labels))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if mlflow.get_experiment_by_name("labels") is None:
        mlflow.create_experiment("labels", artifact_location=(workdir / "artifacts").as_uri())
    mlflow.set_experiment("labels")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(features), input_example=features.head(3),
            pip_requirements=["scikit-learn"], skops_trusted_types=untrusted(model), registered_model_name=name,
        )  # fmt: skip
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, "champion", version
    )
    return version


@pytest.mark.slow
def test_serve_exits_1_before_traffic_on_a_model_its_workers_cannot_load(tmp_path: Path) -> None:
    from tests.conftest import free_port, run_cli

    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_labelled_classifier(registry, tmp_path, "fraud-labels", {1: "fraud", 0: "legit"})
    env = {"MLFLOW_TRACKING_URI": registry, "MODELS": "fraud=fraud-labels", "PORT": str(free_port()),
           "GRPC_PORT": str(free_port())}  # fmt: skip
    checked = run_cli(["check"], env, tmp_path, timeout_s=120)
    served = run_cli(["serve"], env, tmp_path, timeout_s=120)  # the bound: it must exit, not retry forever
    assert checked.returncode == 1
    assert served.returncode == 1, served.stdout[-2000:] + served.stderr[-2000:]
    for output in (checked.stdout, served.stderr):
        assert "model 'fraud' (fraud-labels v1): the service cannot load it" in output
        assert "set the version tag positive_class" in output


@pytest.mark.slow
def test_a_refresh_to_a_version_failing_the_gate_is_a_422_and_the_active_one_keeps_serving(tmp_path: Path) -> None:
    import structlog
    from litestar.testing import TestClient

    from fraud_inference.api.app import create_app
    from fraud_inference.settings import Settings
    from tests.api.conftest import wait_ready

    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_labelled_classifier(registry, tmp_path, "fraud-labels", {1: 1, 0: 0})
    settings = Settings.from_env(
        {
            "GRPC": "off",
            "MLFLOW_TRACKING_URI": registry,
            "MODELS": "fraud=fraud-labels",
            "WORKERS": "1",
            "API_KEYS": "admin-key",
        }
    )
    row = {"amount": 120.0, "txn_count_24h": 2}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        log_labelled_classifier(registry, tmp_path, "fraud-labels", {1: "fraud", 0: "legit"})
        with structlog.testing.capture_logs() as logs:
            refused = client.post("/admin/refresh-models", headers={"X-API-Key": "admin-key"})
        still = client.post("/v1/predict", json={"instances": [row]})
    assert refused.status_code == 422, refused.text
    assert "set the version tag positive_class" in refused.text
    # The cause is in the logs too, where an on-call engineer looks first.
    (line,) = [line for line in logs if line["event"] == "refresh.refused"]
    assert "set the version tag positive_class" in line["errors"]["fraud"]
    assert still.status_code == 200
    assert still.json()["model_version"] == "1"


def test_the_early_stopped_booster_really_stopped_early_so_its_parity_means_every_tree(
    artifacts: dict[str, ModelArtifact],
) -> None:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(Path(artifacts["xgb-booster"].path) / artifacts["xgb-booster"].model_file.file))
    assert booster.best_iteration + 1 < booster.num_boosted_rounds()  # best_iteration trees would score otherwise
    assert check_parity(artifacts["xgb-booster"]).ok


def test_the_early_stopped_classifier_stops_at_best_iteration_as_its_predict_proba(
    artifacts: dict[str, ModelArtifact],
) -> None:
    import xgboost

    from tests.real_models import NUMERIC, make_fraud_table

    artifact = artifacts["xgb-early-stopped"]
    model = xgboost.XGBClassifier()
    model.load_model(str(Path(artifact.path) / artifact.model_file.file))
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    table, _labels = make_fraud_table(30, seed=6)
    served = load_model(artifact).score(table[NUMERIC].to_json(orient="records").encode())
    every_tree = model.get_booster().inplace_predict(table[NUMERIC], iteration_range=(0, 0))
    np.testing.assert_allclose(served, model.predict_proba(table[NUMERIC])[:, 1], rtol=0, atol=1e-6)
    assert np.abs(served - every_tree).max() > 1e-3  # the two readings differ: the parity above means something
    assert check_parity(artifact).ok


def test_with_parity_check_off_a_row_the_service_refuses_as_a_request_is_no_failure(
    artifacts: dict[str, ModelArtifact],
) -> None:
    import msgspec

    from fraud_inference.models.artifact import FeatureSpec

    # The logistic model cannot take a missing amount; declared optional, the gate also sends rows without it.
    artifact = artifacts["sklearn-logistic"]
    optional_amount = tuple(FeatureSpec(f.name, f.type, required=f.name != "amount") for f in artifact.features)
    artifact = msgspec.structs.replace(artifact, features=optional_amount)
    off = check_parity(artifact, against_mlflow=False)
    assert off.ok, off.failures
    assert off.loaded
    assert off.rows == 10
    strict = check_parity(artifact)
    assert strict.ok, strict.failures  # MLflow's loader cannot score those rows either


@pytest.mark.slow
def test_serve_exits_1_on_a_model_that_crashes_the_process_loading_it(private_registry: str, tmp_path: Path) -> None:
    from tests.conftest import free_port, run_cli
    from tests.e2e.test_crash_loop import log_crashing_champion

    log_crashing_champion(private_registry)
    env = {
        "MLFLOW_TRACKING_URI": private_registry, "MODELS": "sklearn=fraud-sklearn", "SKLEARN_PICKLE": "allow",
        "PORT": str(free_port()), "GRPC_PORT": str(free_port()),
    }  # fmt: skip
    served = run_cli(["serve"], env, tmp_path, timeout_s=120)
    assert served.returncode == 1
    assert "the process loading the models for the parity gate died" in served.stderr
