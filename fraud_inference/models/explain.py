"""Which served models can explain their scores, and the explainer of a loaded one (the library's own TreeSHAP).

Runs where the version is known: `explain_refusal` in the HTTP process (from the version's flavour, before any
row is sent), `explainer_of` in the workers and the parity gate (on the loaded scorer).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.flavors._base import Matrix

__all__ = ["EXPLAINABLE", "Explainer", "explain_refusal", "explainer_of", "library_contributions"]

EXPLAINABLE = (
    "XGBoost models (XGBClassifier, raw Boosters, native categorical columns; objective binary:logistic) and "
    "LightGBM models logged natively or with skops (LGBMClassifier, raw Boosters, native categorical columns; "
    "objective binary or cross_entropy)"
)
"""What can be explained, as refusals name it."""

_WHY_NOT = {
    "sklearn": (
        "scikit-learn models are not explained: its own estimators have no native contributions, and a pipeline "
        "ending in XGBoost or LightGBM is not yet (its booster's trees are not checked inside a scikit-learn file)"
    ),
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


def explain_refusal(artifact: ModelArtifact) -> str | None:
    """Why the version cannot explain its scores, naming what can be explained; None when it can."""
    if artifact.flavor == "xgboost":
        return None
    if artifact.flavor == "lightgbm":
        from fraud_inference.models.flavors.lightgbm_explain import refusal

        why = refusal(artifact.model_file)
    else:
        why = _WHY_NOT.get(artifact.flavor, f"its flavour {artifact.flavor!r} has no native contributions")
    if why is None:
        return None
    ref = artifact.ref
    return f"cannot explain {ref.name} v{ref.version} ({artifact.flavor}): {why}; explained: {EXPLAINABLE}"


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
    raise ValueError(f"{artifact.flavor} models explain nothing")
