"""Serialized estimators load only through the service's own trust rules, never the list a model carries."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.models import infer_signature
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from fraud_inference.demo import make_transactions
from fraud_inference.models.artifact import UnservableModelError, read_artifact
from fraud_inference.models.scoring import load_scorer
from fraud_inference.models.trust import ModelTrust
from fraud_inference.registry import ModelRef
from tests.conftest import use_registry

# The demo features never miss values, so MLflow's hint about integer columns is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column:UserWarning")

REF = ModelRef(key="sklearn", name="fraud-sklearn", version="1", selected_by="test", run_id=None, threshold=0.5)


@pytest.fixture(scope="module")
def demo_sklearn_dir(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.artifacts import download_artifacts

    use_registry(demo_registry)
    destination = tmp_path_factory.mktemp("sklearn-model")
    return Path(download_artifacts(artifact_uri="models:/fraud-sklearn@champion", dst_path=str(destination)))


@pytest.fixture(scope="module")
def small_data() -> tuple[pd.DataFrame, np.ndarray]:
    features, labels = make_transactions(400, seed=3)
    return features, np.asarray(labels)


def save(model: object, path: Path, features: pd.DataFrame, fmt: str, trusted: list[str] | None = None) -> Path:
    import mlflow.sklearn

    mlflow.sklearn.save_model(
        model, str(path), serialization_format=fmt, skops_trusted_types=trusted, signature=infer_signature(features),
        pip_requirements=["scikit-learn"],
    )  # fmt: skip
    return path


def test_the_demo_sklearn_model_is_skops_and_scores_as_mlflow_loads_it(
    demo_sklearn_dir: Path, transactions: pd.DataFrame
) -> None:
    import mlflow.sklearn

    flavor = yaml.safe_load((demo_sklearn_dir / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops"
    artifact = read_artifact(REF, demo_sklearn_dir)
    assert artifact.model_file.format == "skops"
    assert artifact.model_file.skops_types == ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
    rows = transactions[[f.name for f in artifact.features]].to_numpy(dtype=np.float64)
    expected = mlflow.sklearn.load_model(str(demo_sklearn_dir)).predict_proba(rows)[:, 1]
    np.testing.assert_array_equal(load_scorer(artifact).fraud_probability(rows), expected)


def test_a_pickled_model_is_refused_unless_sklearn_pickle_allows_it(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    features, labels = small_data
    path = save(DecisionTreeClassifier(max_depth=3).fit(features, labels), tmp_path / "model", features, "pickle")
    with pytest.raises(UnservableModelError, match=r"saved as pickle.*SKLEARN_PICKLE=allow"):
        read_artifact(REF, path)
    artifact = read_artifact(REF, path, trust=ModelTrust(pickle="allow"))
    rows = features.to_numpy(dtype=np.float64)
    assert load_scorer(artifact).fraud_probability(rows).shape == (len(rows),)


def test_a_skops_model_with_a_type_the_service_does_not_trust_is_refused_even_if_its_mlmodel_trusts_it(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    features, _labels = small_data
    model = make_pipeline(FunctionTransformer(math.fabs), DecisionTreeClassifier())  # loaded, never fitted or run
    path = save(model, tmp_path / "model", features, "skops", trusted=["math.fabs"])
    with pytest.raises(UnservableModelError, match=r"does not trust: math\.fabs.*SKOPS_TRUSTED_TYPES"):
        read_artifact(REF, path)
    artifact = read_artifact(REF, path, trust=ModelTrust(extra_types=("math.fabs",)))
    assert artifact.model_file.format == "skops"
    assert artifact.model_file.skops_types == ("math.fabs",)
