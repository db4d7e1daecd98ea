"""XGBoost's own TreeSHAP: `Booster.predict(DMatrix, pred_contribs=True)`, as the library computes it."""

from __future__ import annotations

from typing import Any

import numpy as np

from fraud_inference.models.flavors._base import Matrix

__all__ = ["MARGINS", "mlflow_contributions", "tree_contributions"]

MARGINS = {"binary:logistic": "log_odds"}
"""The space each explainable objective's contributions are in: their sum is the model's margin there."""


def tree_contributions(booster: Any, batch: Any, iteration_range: tuple[int, int]) -> Matrix:
    """Each row's contribution per feature and, in the last column, the bias (XGBoost's base value): float64
    `[rows, features + 1]`, summing to the row's margin (XGBoost sums in float32: up to ~1e-5 from `output_margin`).

    `batch` is what the scorer scores: a float64 matrix in signature order (built with the booster's own feature
    names and types, as `inplace_predict` takes it), or a DataFrame on the model's training categories.
    NOTE: the library's own booster, never the compiled trees, which compute no contributions.
    """
    import xgboost

    if hasattr(batch, "iloc"):
        matrix = xgboost.DMatrix(batch, enable_categorical=True, nthread=1)
    else:
        matrix = xgboost.DMatrix(
            batch, missing=np.nan, feature_names=booster.feature_names, feature_types=booster.feature_types, nthread=1
        )
    contributions = booster.predict(matrix, pred_contribs=True, iteration_range=iteration_range)
    if contributions.ndim != 2:  # multi:softprob gives one matrix per class: not a log-odds explanation
        raise ValueError("explain: XGBoost gives contributions per class for this objective; only binary:logistic")
    return np.asarray(contributions, dtype=np.float64)


def mlflow_contributions(path: str, frame: Any, positive_class: str | None) -> Matrix:
    """`Booster.predict(DMatrix(frame), pred_contribs=True)` of the model `mlflow.xgboost.load_model(path)` returns,
    over the trees its own probabilities use (a classifier stops at `best_iteration`), for the fraud class: the
    parity gate's reference, `[rows, features + 1]` float64.
    """
    import xgboost

    from fraud_inference.models.flavors._base import mlflow_loaded

    model = mlflow_loaded("mlflow.xgboost", path)
    is_booster = isinstance(model, xgboost.Booster)
    booster = model if is_booster else model.get_booster()
    best = None if is_booster else getattr(model, "best_iteration", None)
    iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
    contributions = booster.predict(
        xgboost.DMatrix(frame, enable_categorical=True), pred_contribs=True, iteration_range=iteration_range
    )
    labels = ["0", "1"] if is_booster else [str(label) for label in model.classes_]
    sign = -1.0 if positive_class is not None and labels.index(positive_class) == 0 else 1.0
    return sign * np.asarray(contributions, dtype=np.float64)
