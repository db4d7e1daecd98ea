"""XGBoost: scikit-learn-API classifiers and raw `xgb.train` Boosters, saved in XGBoost's own format."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraud_inference.models.flavors._base import (
    NUMPY,
    Matrix,
    ModelFile,
    PackageRule,
    check_feature_names,
    class_column,
    mlflow_loaded,
    model_path,
    positive_column,
)
from fraud_inference.models.trust import ModelTrust, UntrustedModelError

if TYPE_CHECKING:
    from fraud_inference.models.artifact import ModelArtifact

__all__ = ["FLAVOR", "XGBoostFlavor"]

_BOOSTER = "xgboost.core.Booster"
# MLflow instantiates whatever `model_class` names; this service only the classes that give probabilities.
_CLASSES = (_BOOSTER, "xgboost.sklearn.XGBClassifier", "xgboost.sklearn.XGBRFClassifier")
_PROBABILITY_OBJECTIVES = frozenset({"binary:logistic", "multi:softprob"})


class XGBoostFlavor:
    name: str = "xgboost"
    version_key: str | None = "xgb_version"
    packages: tuple[PackageRule, ...] = (PackageRule(("xgboost", "xgboost-cpu"), "same major"), NUMPY)

    def model_file(self, conf: Mapping[str, Any], model_dir: Path, trust: ModelTrust) -> ModelFile:
        # MLflow >= 1.22 records model_class; older models are raw Boosters (mlflow/xgboost/__init__.py `_load_model`).
        model_class = str(conf.get("model_class", _BOOSTER))
        if model_class not in _CLASSES:
            raise UntrustedModelError(
                f"its XGBoost model_class is {model_class}; this service scores {', '.join(_CLASSES)} "
                "(a fraud model must give probabilities)"
            )
        return ModelFile(file=str(conf["data"]), format="native", model_class=model_class)

    def load(self, artifact: ModelArtifact) -> XGBoostScorer:
        import xgboost

        model_class = artifact.model_file.model_class
        model: Any = (
            xgboost.Booster() if model_class == _BOOSTER else getattr(xgboost, str(model_class).split(".")[-1])()
        )
        model.load_model(str(model_path(artifact)))
        return XGBoostScorer(model, artifact)

    def mlflow_scores(self, artifact: ModelArtifact, frame: Any, positive_class: str | None) -> Matrix:
        import xgboost

        model = mlflow_loaded("mlflow.xgboost", artifact.path)
        if isinstance(model, xgboost.Booster):
            return class_column(model.predict(xgboost.DMatrix(frame, enable_categorical=True)), None, positive_class)
        return class_column(model.predict_proba(frame), list(model.classes_), positive_class)


class XGBoostScorer:
    """`Booster.inplace_predict`: no DMatrix, one thread; a DataFrame only for categorical features."""

    takes_missing: bool = True

    def __init__(self, model: Any, artifact: ModelArtifact) -> None:
        is_booster = not hasattr(model, "get_booster")
        booster = model if is_booster else model.get_booster()
        booster.set_param({"nthread": 1})
        where = f"{artifact.ref.name} v{artifact.ref.version}"
        objective = _objective(booster)
        if objective not in _PROBABILITY_OBJECTIVES:
            raise ValueError(f"{where}: XGBoost objective {objective!r} does not give probabilities")
        check_feature_names(artifact, booster.feature_names)
        # A raw Booster has no classes_: binary:logistic gives P(label 1).
        classes = [0, 1] if is_booster else list(model.classes_)
        self._column, self.positive_class = positive_column(classes, artifact.ref.positive_class, where)
        self._booster = booster
        # NOTE: as MLflow's loaded object predicts: XGBClassifier.predict_proba stops at best_iteration when the
        # model was early-stopped, a raw Booster's predict uses every tree (its best_iteration is only a record).
        best = None if is_booster else getattr(model, "best_iteration", None)
        self._iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self.categories = _training_categories(booster, artifact)
        self.needs_frame = bool(self.categories)

    def fraud_probability(self, batch: Any) -> Matrix:
        scores = np.asarray(self._booster.inplace_predict(batch, iteration_range=self._iteration_range), np.float64)
        if scores.ndim == 2:
            if scores.shape[1] != 2:
                raise ValueError(f"expected two classes, the model gives {scores.shape[1]} scores per row")
            return np.ascontiguousarray(scores[:, self._column])
        return scores if self._column == 1 else 1.0 - scores


def _objective(booster: Any) -> str:
    config = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"])


def _training_categories(booster: Any, artifact: ModelArtifact) -> dict[str, Sequence[Any]]:
    """The categories XGBoost (>= 3.1) recorded for each categorical feature, from the model's JSON.

    Every request's categorical column is built on them, so an unseen value is a missing one: a column built
    from the request's own values would be re-coded, and an unseen value fails (or, on older models, lands on
    a known category).
    """
    types = booster.feature_types or []
    if "c" not in types:
        return {}
    where = f"{artifact.ref.name} v{artifact.ref.version}"
    model = json.loads(booster.save_raw(raw_format="json"))
    encodings = model["learner"]["gradient_booster"]["model"].get("cats", {}).get("enc", [])
    names = booster.feature_names or [feature.name for feature in artifact.features]
    categories: dict[str, Sequence[Any]] = {}
    for index, (name, kind) in enumerate(zip(names, types, strict=True)):
        if kind != "c":
            continue
        encoding = encodings[index] if index < len(encodings) else {"offsets": [], "values": []}
        offsets, values = encoding.get("offsets", []), encoding.get("values", [])
        if not offsets:
            raise ValueError(
                f"{where}: categorical feature {name!r} has no string categories recorded in the model "
                "(XGBoost >= 3.1 records them when trained on a pandas category column): train it again with it"
            )
        raw = bytes(values)
        categories[name] = [raw[start:end].decode() for start, end in itertools.pairwise(offsets)]
    return categories


FLAVOR = XGBoostFlavor()
