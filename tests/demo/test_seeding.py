"""The demo data set and `seed_demo` against a real SQLite MLflow registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fraud_inference.demo import (
    DEMO_MODELS,
    FEATURES,
    SKOPS_TRUSTED_TYPES,
    ModelFlavor,
    SeededModel,
    embedded_registry,
    log_fraud_model,
    make_transactions,
    seed_demo,
    train_model,
)

N_ROWS = 20_000  # fewer leave too few frauds in the held-out quarter for a stable ROC AUC
FLAVOR_DISTRIBUTION = {"xgboost": "xgboost-cpu", "lightgbm": "lightgbm", "sklearn": "scikit-learn"}


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_uris() -> Iterator[None]:
    """Undo the process-wide tracking and registry URIs (and their variables) that seeding sets."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield
        # None resets MLflow to its defaults; the type hints say str but the code handles None.
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The (tracking_uri, artifact_location) of an embedded registry shared by the module."""
    return embedded_registry(tmp_path_factory.mktemp("mlflow-home"))


@pytest.fixture(scope="module")
def seed_progress() -> list[str]:
    """The progress lines of the first `seed_demo` into `registry`."""
    return []


@pytest.fixture(scope="module")
def seeded(registry: tuple[str, str], seed_progress: list[str]) -> dict[ModelFlavor, SeededModel]:
    """The demo models, seeded once into `registry`."""
    tracking_uri, artifact_location = registry
    return seed_demo(tracking_uri, artifact_location=artifact_location, progress=seed_progress.append, n_rows=N_ROWS)


def test_make_transactions_is_deterministic_with_about_one_percent_fraud() -> None:
    features, labels = make_transactions(20_000, seed=3)
    again, labels_again = make_transactions(20_000, seed=3)
    other, _ = make_transactions(20_000, seed=4)

    assert features.equals(again)
    assert np.array_equal(labels, labels_again)
    assert not features.equals(other)
    assert 0.007 < labels.mean() < 0.013


def test_make_transactions_types_columns_as_the_features_say() -> None:
    features, labels = make_transactions(100)

    assert list(features.columns) == [feature.name for feature in FEATURES]
    for feature in FEATURES:
        expected = np.int64 if feature.kind == "long" else np.float64
        assert features[feature.name].dtype == expected, feature.name
    assert labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1}


def test_seed_demo_registers_each_model_as_champion_with_a_threshold(
    registry: tuple[str, str], seeded: dict[ModelFlavor, SeededModel], seed_progress: list[str]
) -> None:
    client = MlflowClient(tracking_uri=registry[0], registry_uri=registry[0])

    for key, name in DEMO_MODELS.items():
        assert f"training {key}..." in seed_progress
        assert f"{name} v1 -> alias champion (ROC AUC {seeded[key].roc_auc:.3f})" in seed_progress

    assert list(seeded) == list(DEMO_MODELS)
    for key, name in DEMO_MODELS.items():
        model = seeded[key]
        assert (model.key, model.name, model.version) == (key, name, 1)
        assert model.roc_auc is not None
        assert model.roc_auc > 0.9, key
        champion = client.get_model_version_by_alias(name, "champion")
        assert int(champion.version) == 1
        assert champion.tags["threshold"] == "0.5"


@pytest.mark.parametrize("key", list(DEMO_MODELS))
def test_champion_loads_back_with_its_flavor_and_scores_fraud(
    registry: tuple[str, str], seeded: dict[ModelFlavor, SeededModel], key: ModelFlavor
) -> None:
    features, labels = make_transactions(2_000, seed=11)
    uri = f"models:/{seeded[key].name}@champion"
    flavor_module: Any = getattr(mlflow, key)

    model = flavor_module.load_model(uri)
    fraud_probability = model.predict_proba(features)[:, 1]

    assert fraud_probability.shape == (len(features),)
    assert np.all((fraud_probability >= 0.0) & (fraud_probability <= 1.0))
    assert fraud_probability[labels == 1].mean() > 5 * fraud_probability[labels == 0].mean()


def test_champion_records_signature_and_trusted_types(
    registry: tuple[str, str], seeded: dict[ModelFlavor, SeededModel]
) -> None:
    for key, model in seeded.items():
        info = mlflow.models.get_model_info(f"models:/{model.name}@champion")
        inputs = info.signature.inputs.to_dict()
        assert [(column["name"], column["type"]) for column in inputs] == [
            (feature.name, feature.kind) for feature in FEATURES
        ]
        flavor = info.flavors[key]
        if key != "xgboost":
            assert flavor["serialization_format"] == "skops"
            assert set(flavor["skops_trusted_types"]) == SKOPS_TRUSTED_TYPES
        requirements = Path(
            mlflow.artifacts.download_artifacts(f"models:/{model.name}@champion/requirements.txt")
        ).read_text()
        assert f"{FLAVOR_DISTRIBUTION[key]}==" in requirements


def test_seed_demo_again_creates_no_new_version(
    registry: tuple[str, str], seeded: dict[ModelFlavor, SeededModel]
) -> None:
    tracking_uri, artifact_location = registry
    lines: list[str] = []

    again = seed_demo(tracking_uri, artifact_location=artifact_location, progress=lines.append, n_rows=N_ROWS)

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for key, name in DEMO_MODELS.items():
        # The ROC AUC measured when it was trained, read back from its run: the README promises it every time.
        assert again[key] == SeededModel(key=key, name=name, version=seeded[key].version, roc_auc=seeded[key].roc_auc)
        assert [int(version.version) for version in client.search_model_versions(f"name='{name}'")] == [1]
    assert lines == [
        f"{name} v1 already has alias champion (ROC AUC {seeded[key].roc_auc:.3f})" for key, name in DEMO_MODELS.items()
    ]


def test_seed_demo_retrains_only_the_model_that_lost_its_champion(tmp_path: Path) -> None:
    # No artifact_location: for SQLite, artifacts go to artifacts/ beside the database.
    tracking_uri, _ = embedded_registry(tmp_path)
    first = seed_demo(tracking_uri, artifact_location=None, progress=lambda line: None, n_rows=5_000)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.delete_registered_model_alias("fraud-lightgbm", "champion")

    again = seed_demo(tracking_uri, artifact_location=None, progress=lambda line: None, n_rows=5_000)

    assert {key: model.version for key, model in again.items()} == {"xgboost": 1, "lightgbm": 2, "sklearn": 1}
    assert again["xgboost"] == first["xgboost"]
    assert again["sklearn"] == first["sklearn"]
    assert int(client.get_model_version_by_alias("fraud-lightgbm", "champion").version) == 2


def test_log_fraud_model_sets_version_tags_and_can_omit_the_signature(registry: tuple[str, str]) -> None:
    features, labels = make_transactions(2_000, seed=5)
    model = train_model("xgboost", features, labels, seed=5)

    version = log_fraud_model(
        registry[0],
        flavor="xgboost",
        model=model,
        X_example=features,
        registered_name="fraud-unsigned",
        tags={"threshold": "0.7", "purpose": "test"},
        with_signature=False,
    )

    assert version.name == "fraud-unsigned"
    assert version.tags == {"threshold": "0.7", "purpose": "test"}
    assert mlflow.models.get_model_info(f"models:/fraud-unsigned/{version.version}").signature is None


def test_embedded_registry_keeps_database_and_artifacts_under_home(tmp_path: Path) -> None:
    tracking_uri, artifact_location = embedded_registry(tmp_path / "home")

    assert tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert artifact_location == (tmp_path / "home" / "artifacts").as_uri()
    assert (tmp_path / "home").is_dir()
