"""LightGBM's own TreeSHAP: `Booster.predict(rows, pred_contrib=True)`, only on a model whose trees were checked.

NOTE: `pred_contrib` writes outside its arrays on a crafted text model (lightgbm-org/LightGBM#7357,
GHSA-wvg4-4w35-4jc9, open at 4.7.0): it runs only on a native or skops file that `lightgbm_text` checked before
LightGBM parsed it. A pickle (SKLEARN_PICKLE=allow) is parsed by LightGBM inside the unpickling, never checked:
its explanations stay refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fraud_inference.models.flavors._base import Matrix

if TYPE_CHECKING:
    from fraud_inference.models.artifact import ModelFile

__all__ = ["CHECKED_FORMATS", "explained_margin", "mlflow_contributions", "refusal", "tree_contributions"]

CHECKED_FORMATS = frozenset({"native", "skops"})
"""The files whose trees `lightgbm_text` checks before LightGBM reads them."""
_LOG_ODDS = frozenset({"cross_entropy", "xentropy"})
"""Objectives whose raw score is the log-odds as it is (p = 1 / (1 + exp(-raw)), LightGBM's xentropy_objective.hpp)."""


def explained_margin(model_file: ModelFile) -> str | None:
    """The space of the model's contributions (`log_odds`), or None when they are not explained: an unchecked file,
    or an objective whose raw score is not the log-odds (`binary` with `sigmoid` other than 1 scores
    1 / (1 + exp(-sigmoid * raw)); multiclass gives one score per class), or linear trees (no contributions)."""
    if model_file.format not in CHECKED_FORMATS or model_file.objective is None or model_file.linear_trees:
        return None
    name, *options = model_file.objective.split()
    if name in _LOG_ODDS and not options:
        return "log_odds"
    if name == "binary" and options == ["sigmoid:1"]:
        return "log_odds"
    return None


def refusal(model_file: ModelFile) -> str | None:
    """Why this LightGBM file's scores cannot be explained; None when they can."""
    if model_file.format not in CHECKED_FORMATS:
        return (
            f"its {model_file.format} file is parsed by LightGBM while it is unpickled, before this service can check "
            "its trees, and LightGBM's pred_contrib writes out of bounds on a crafted model (lightgbm-org/LightGBM"
            "#7357, GHSA-wvg4-4w35-4jc9, no fixed release); log it as a native Booster or with skops to explain it"
        )
    if model_file.linear_trees:
        return "its trees have linear leaves (linear_tree), for which LightGBM computes no contributions"
    if explained_margin(model_file) is None:
        return (
            f"its objective {model_file.objective!r} has no log-odds contributions (explained: binary with sigmoid 1, "
            "cross_entropy)"
        )
    return None


def tree_contributions(booster: Any, batch: Any) -> Matrix:
    """Each row's contribution per feature and, in the last column, the base value: float64 `[rows, features + 1]`,
    summing to the row's raw score (`raw_score=True`, in float64). `batch` is what the scorer scores (a float64
    matrix in signature order, or a DataFrame on the training categories); one thread, as scoring."""
    contributions = np.asarray(booster.predict(batch, pred_contrib=True, num_threads=1), dtype=np.float64)
    if contributions.ndim != 2 or contributions.shape[1] != booster.num_feature() + 1:
        raise ValueError("explain: LightGBM gives contributions per class for this objective; only binary ones")
    return contributions


def mlflow_contributions(path: str, frame: Any, positive_class: str | None) -> Matrix:
    """`predict(frame, pred_contrib=True)` of the model `mlflow.lightgbm.load_model(path)` returns (a Booster, or an
    LGBMClassifier), for the fraud class: the parity gate's reference, `[rows, features + 1]` float64."""
    from fraud_inference.models.flavors._base import mlflow_loaded

    model = mlflow_loaded("mlflow.lightgbm", path)
    is_booster = not hasattr(model, "booster_")
    contributions = np.asarray(model.predict(frame, pred_contrib=True), dtype=np.float64)
    labels = ["0", "1"] if is_booster else [str(label) for label in model.classes_]
    sign = -1.0 if positive_class is not None and labels.index(positive_class) == 0 else 1.0
    return sign * contributions
