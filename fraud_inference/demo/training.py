"""Train the three demo fraud classifiers: XGBoost, LightGBM and scikit-learn.

The models are fitted on pandas DataFrames, so each remembers the feature names and order of
`fraud_inference.demo.dataset.FEATURES`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import lightgbm
import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

__all__ = ["FLAVORS", "FraudClassifier", "Labels", "ModelFlavor", "roc_auc", "train_model", "train_models"]

ModelFlavor = Literal["xgboost", "lightgbm", "sklearn"]
"""The MLflow flavour a demo model is logged with, also its key in the demo."""

FLAVORS: tuple[ModelFlavor, ...] = get_args(ModelFlavor)

Labels = npt.NDArray[np.integer[Any]]
"""Fraud labels, one per row: 1 for fraud, 0 for a legitimate transaction."""

# Shallow, few-tree ensembles: enough for the demo data's interactions, and all three train on
# 37,500 rows in about 3.5 s on 2 cores with one thread each.
_N_TREES = 200
_MAX_DEPTH = 6
_LEARNING_RATE = 0.1


class FraudClassifier(Protocol):
    """A fitted binary classifier with scikit-learn's `predict_proba`."""

    def predict_proba(self, features: Any, /) -> Any:
        """Return an (n_rows, 2) array of class probabilities; column 1 is fraud."""


class _Estimator(FraudClassifier, Protocol):
    def fit(self, features: Any, labels: Any, /) -> Any:
        """Fit the model in place."""


def train_model(
    flavor: ModelFlavor, features: pd.DataFrame, labels: Labels, *, seed: int, n_jobs: int = 1
) -> FraudClassifier:
    """Fit one gradient-boosted tree classifier of the given flavour.

    `n_jobs` is the number of threads to train with; XGBoost and LightGBM keep it for predictions.
    """
    model: _Estimator
    if flavor == "xgboost":
        model = xgboost.XGBClassifier(
            n_estimators=_N_TREES,
            max_depth=_MAX_DEPTH,
            learning_rate=_LEARNING_RATE,
            tree_method="hist",
            n_jobs=n_jobs,
            random_state=seed,
        )
    elif flavor == "lightgbm":
        model = lightgbm.LGBMClassifier(
            n_estimators=_N_TREES,
            max_depth=_MAX_DEPTH,
            num_leaves=31,
            learning_rate=_LEARNING_RATE,
            n_jobs=n_jobs,
            random_state=seed,
            verbose=-1,
        )
    elif flavor == "sklearn":
        model = HistGradientBoostingClassifier(
            max_iter=_N_TREES,
            max_depth=_MAX_DEPTH,
            learning_rate=_LEARNING_RATE,
            early_stopping=False,
            random_state=seed,
        )
    else:
        raise ValueError(f"unknown model flavor {flavor!r}: use one of {', '.join(FLAVORS)}")
    # NOTE: HistGradientBoosting takes its threads from OpenMP, hence the limit. On these 2 vCPUs its
    # 2-thread fit sometimes took 26 s instead of 1.1 s; one thread reliably takes 1.4 s.
    with threadpool_limits(limits=n_jobs, user_api="openmp"):
        model.fit(features, labels)
    return model


def train_models(
    features: pd.DataFrame, labels: Labels, *, seed: int, n_jobs: int = 1
) -> dict[ModelFlavor, FraudClassifier]:
    """Fit the XGBoost, LightGBM and scikit-learn classifiers, keyed by flavour."""
    return {flavor: train_model(flavor, features, labels, seed=seed, n_jobs=n_jobs) for flavor in FLAVORS}


def roc_auc(model: FraudClassifier, features: pd.DataFrame, labels: Labels) -> float:
    """Return the area under the ROC curve of `model`'s fraud probabilities against `labels`."""
    with threadpool_limits(limits=1, user_api="openmp"):
        fraud_probability = np.asarray(model.predict_proba(features))[:, 1]
    return float(roc_auc_score(labels, fraud_probability))
