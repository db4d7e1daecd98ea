"""Load a model version's native flavour and score the fraud-class probability (runs in workers)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.trust import load_skops

__all__ = ["Scorer", "load_scorer"]

Matrix = npt.NDArray[np.float64]

# Rows reach the models as arrays in signature order, checked against the model's own feature names at
# load time (`_check_feature_order`); the per-call warning about missing names would only be noise.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


class Scorer(Protocol):
    """Scores a row-major float64 matrix in training column order."""

    def fraud_probability(self, features: Matrix) -> Matrix: ...


class XGBoostScorer:
    """`Booster.inplace_predict`: no DMatrix, no DataFrame, one thread."""

    def __init__(self, model: Any) -> None:
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.set_param({"nthread": 1})
        objective = _xgboost_objective(booster)
        if objective not in {"binary:logistic", "multi:softprob"}:
            raise ValueError(f"XGBoost objective {objective!r} does not give probabilities")
        self._booster = booster
        # NOTE: predict_proba stops at best_iteration when the model was early-stopped; so must we.
        best = getattr(model, "best_iteration", None)
        self._iteration_range = (0, int(best) + 1) if best is not None else (0, 0)

    def fraud_probability(self, features: Matrix) -> Matrix:
        margin = self._booster.inplace_predict(features, iteration_range=self._iteration_range)
        return _positive_column(np.asarray(margin, dtype=np.float64))


class LightGBMScorer:
    """`Booster.predict` on the raw booster, one thread."""

    def __init__(self, model: Any) -> None:
        self._booster = model.booster_ if hasattr(model, "booster_") else model
        objective = str(self._booster.params.get("objective", "binary"))
        if objective not in {"binary", "multiclass", "softmax", "cross_entropy", "xentropy"}:
            raise ValueError(f"LightGBM objective {objective!r} does not give probabilities")

    def fraud_probability(self, features: Matrix) -> Matrix:
        scores = self._booster.predict(features, num_threads=1)
        return _positive_column(np.asarray(scores, dtype=np.float64))


class SklearnScorer:
    """`predict_proba`, taking the column of the fraud class (the last of `classes_`, i.e. 1 for 0/1 labels)."""

    def __init__(self, model: Any) -> None:
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"{type(model).__name__} has no predict_proba")
        classes = list(getattr(model, "classes_", []))
        if len(classes) != 2:
            raise ValueError(f"expected a binary classifier, got classes {classes}")
        self._model = model
        self._column = 1

    def fraud_probability(self, features: Matrix) -> Matrix:
        return np.asarray(self._model.predict_proba(features)[:, self._column], dtype=np.float64)


def load_scorer(artifact: ModelArtifact) -> Scorer:
    """Load the version with MLflow's own flavour loader and wrap its native fast path."""
    if artifact.flavor == "xgboost":
        import mlflow.xgboost

        model = mlflow.xgboost.load_model(artifact.path)
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        _check_feature_order(artifact, booster.feature_names)
        return XGBoostScorer(model)
    if artifact.flavor == "lightgbm":
        import mlflow.lightgbm

        model = _load_estimator(artifact) or mlflow.lightgbm.load_model(artifact.path)
        booster = model.booster_ if hasattr(model, "booster_") else model
        _check_feature_order(artifact, booster.feature_name())
        return LightGBMScorer(model)
    import mlflow.sklearn

    model = _load_estimator(artifact) or mlflow.sklearn.load_model(artifact.path)
    _check_feature_order(artifact, getattr(model, "feature_names_in_", None))
    return SklearnScorer(model)


def _load_estimator(artifact: ModelArtifact) -> Any:
    """A skops file loads trusting only the types checked at `read_artifact`, never the list in its MLmodel."""
    if artifact.estimator is None or artifact.estimator.serialization_format != "skops":
        return None  # a native format, or a pickle that SKLEARN_PICKLE=allow lets MLflow load
    return load_skops(Path(artifact.path), artifact.estimator)


def _check_feature_order(artifact: ModelArtifact, trained: Any) -> None:
    """Refuse a model whose own feature names disagree with its signature: rows go in signature order.

    A model trained without names (on a bare array) records none; then the signature is the only order.
    """
    if trained is None:
        return
    trained_names = [str(name) for name in trained]
    signature_names = [feature.name for feature in artifact.features]
    if trained_names != signature_names:
        raise ValueError(
            f"{artifact.ref.name} v{artifact.ref.version}: the model was trained on features {trained_names} "
            f"but its MLflow signature lists {signature_names}; log it again with "
            "signature=infer_signature(X_train) so rows can be put in training order"
        )


def _xgboost_objective(booster: Any) -> str:
    import json

    config = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"])


def _positive_column(scores: Matrix) -> Matrix:
    if scores.ndim == 2:
        if scores.shape[1] != 2:
            raise ValueError(f"expected two classes, the model gives {scores.shape[1]} scores per row")
        return np.ascontiguousarray(scores[:, 1])
    return scores
