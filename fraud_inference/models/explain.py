"""Which served models can explain their scores, and the explainer of a loaded one (the library's own TreeSHAP).

Runs where the version is known: `explain_refusal` in the HTTP process (from the version's flavour, before any
row is sent; for scikit-learn from what the workers' load found, `load_refusal`), `explainer_of` in the workers and
the parity gate (on the loaded scorer).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.flavors._base import Matrix

__all__ = ["EXPLAINABLE", "Explainer", "explain_refusal", "explainer_of", "library_contributions", "load_refusal"]

EXPLAINABLE = (
    "XGBoost models (XGBClassifier, raw Boosters, native categorical columns; objective binary:logistic), "
    "LightGBM models logged natively or with skops (LGBMClassifier, raw Boosters, native categorical columns; "
    "objective binary or cross_entropy), and scikit-learn Pipelines ending in an XGBClassifier (binary:logistic) "
    "whose steps map each column to one input column"
)
"""What can be explained, as refusals name it."""

_WHY_NOT = {
    "python_function": "a custom pyfunc model's output cannot be attributed to its features",
}


@runtime_checkable
class Explainer(Protocol):
    """A scorer that computes its own contributions (XGBoost's `XGBoostScorer`)."""

    @property
    def margin(self) -> str | None:
        """The space of the contributions (`log_odds`); None when this model's objective is not explained."""

    def contributions(self, batch: Any) -> Matrix:
        """Per row of `batch` (as the scorer scores it): `[rows, features + 1]` float64, last column the base value."""
        ...


def explain_refusal(artifact: ModelArtifact, *, at_load: str | None = None) -> str | None:
    """Why the version cannot explain its scores, naming what can be explained; None when it can.

    `at_load` is what the workers found when they loaded it (`load_refusal`): a scikit-learn model's steps are known
    only once loaded, so its refusal is decided there and carried by the generation.
    """
    if artifact.flavor == "xgboost":
        return None
    if artifact.flavor == "sklearn":
        why = at_load
    elif artifact.flavor == "lightgbm":
        from fraud_inference.models.flavors.lightgbm_explain import refusal

        why = refusal(artifact.model_file)
    else:
        why = _WHY_NOT.get(artifact.flavor, f"its flavour {artifact.flavor!r} has no native contributions")
    if why is None:
        return None
    ref = artifact.ref
    return f"cannot explain {ref.name} v{ref.version} ({artifact.flavor}): {why}; explained: {EXPLAINABLE}"


def load_refusal(scorer: Any) -> str | None:
    """Why a loaded model cannot be explained, when only its loaded form says (a scikit-learn pipeline's steps)."""
    why = getattr(scorer, "explain_refusal", None)
    return why if isinstance(why, str) else None


def explainer_of(scorer: Any) -> Explainer | None:
    """The scorer that computes contributions for `scorer`: itself, or the library's own behind compiled trees."""
    native = getattr(scorer, "native", scorer)  # CompiledTreesScorer: the same trees, in the library
    if isinstance(native, Explainer) and native.margin is not None:
        return native
    return None


def library_contributions(artifact: ModelArtifact, frame: Any, positive_class: str | None) -> Matrix:
    """The library's own contributions for the fraud class on MLflow's loaded model (`mlflow.<flavour>.load_model`)
    for the rows of `frame`, `[rows, features + 1]` float64: the parity gate's reference. Raises `ValueError` for a
    flavour that explains nothing."""
    if artifact.flavor == "xgboost":
        from fraud_inference.models.flavors import xgboost_explain

        return xgboost_explain.mlflow_contributions(artifact.path, frame, positive_class)
    if artifact.flavor == "lightgbm":
        from fraud_inference.models.flavors import lightgbm_explain

        return lightgbm_explain.mlflow_contributions(artifact.path, frame, positive_class)
    if artifact.flavor == "sklearn":
        from fraud_inference.models.flavors import sklearn_explain

        return sklearn_explain.mlflow_contributions(artifact.path, frame, positive_class)
    raise ValueError(f"{artifact.flavor} models explain nothing")
