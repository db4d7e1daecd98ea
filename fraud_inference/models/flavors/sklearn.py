"""scikit-learn: classifiers and Pipelines of scikit-learn's own estimators, saved with skops (or an allowed pickle)."""

from __future__ import annotations

import io
import json
import zipfile
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
    pyfunc_rows,
)
from fraud_inference.models.flavors.lightgbm_text import check_skops_boosters as check_lightgbm_boosters
from fraud_inference.models.flavors.sklearn_explain import pipeline_explainer
from fraud_inference.models.flavors.xgboost_file import InvalidTreesError, check_skops_boosters
from fraud_inference.models.trust import ModelTrust, UntrustedModelError, check_serialized, load_serialized

if TYPE_CHECKING:
    from fraud_inference.models.artifact import ModelArtifact

__all__ = ["FLAVOR", "SklearnFlavor"]


class SklearnFlavor:
    name: str = "sklearn"
    version_key: str | None = "sklearn_version"
    # NOTE: scikit-learn does not support loading estimators across minor versions (their internals change and a
    # model can load yet score differently); scipy carries its numerics.
    packages: tuple[PackageRule, ...] = (
        PackageRule(("scikit-learn",), "same major.minor"),
        NUMPY,
        PackageRule(("scipy",), "same major"),
    )
    # MLflow's `pyfunc_predict_fn` choices but `score`, which needs the true labels.
    pyfunc_predict_fns: tuple[str, ...] = ("predict", "predict_proba", "predict_log_proba", "predict_joint_log_proba")

    def model_file(self, conf: Mapping[str, Any], model_dir: Path, trust: ModelTrust) -> ModelFile:
        # As mlflow/sklearn/__init__.py `_load_pyfunc`: no serialization_format means pickle.
        file = str(conf["pickled_model"])
        serialization_format = str(conf.get("serialization_format", "pickle"))
        skops_types = check_serialized(file, serialization_format, model_dir, trust)
        if serialization_format == "skops":
            _checked_trees((model_dir / file).read_bytes())
        return ModelFile(file=file, format=serialization_format, skops_types=skops_types)  # type: ignore[arg-type]

    def load(self, artifact: ModelArtifact) -> SklearnScorer:
        model_file = artifact.model_file
        content = None
        if model_file.format == "skops":
            # NOTE: the bytes checked are the bytes skops loads: the file is read once, never opened again by path.
            content = model_path(artifact).read_bytes()
            try:
                _checked_trees(content)
            except UntrustedModelError as error:
                raise ValueError(f"{artifact.ref.name} v{artifact.ref.version}: {error}") from None
        path = model_path(artifact)
        model = load_serialized(path, model_file.format, model_file.skops_types, content=content)
        return SklearnScorer(model, artifact)

    def mlflow_scores(self, artifact: ModelArtifact, frame: Any, positive_class: str | None) -> Matrix:

        model = mlflow_loaded("mlflow.sklearn", artifact.path)
        return class_column(model.predict_proba(frame), list(model.classes_), positive_class)


class SklearnScorer:
    """`predict_proba`, taking the column of the fraud class; a DataFrame where the model selects columns by name."""

    takes_missing: bool = False  # depends on the estimator: each column is probed at load
    categories: Mapping[str, Sequence[Any]] = {}

    def __init__(self, model: Any, artifact: ModelArtifact) -> None:
        where = f"{artifact.ref.name} v{artifact.ref.version}"
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"{where}: {type(model).__name__} has no predict_proba")
        check_feature_names(artifact, getattr(model, "feature_names_in_", None))
        self._column, self.positive_class = positive_column(
            list(getattr(model, "classes_", [])), artifact.ref.positive_class, where
        )
        self._model = model
        self._where = where
        self._predict_fn = artifact.pyfunc_predict_fn
        # NOTE: a ColumnTransformer selecting columns by name fails on an array ("Specifying the columns using
        # strings is only supported for dataframes"); every other estimator scores the same matrix faster.
        self.needs_frame = any(feature.type == "string" for feature in artifact.features) or _selects_by_name(model)
        explainer = pipeline_explainer(model, len(artifact.features), self._column)
        if not isinstance(explainer, str) and artifact.model_file.format != "skops":
            explainer = (
                f"its {artifact.model_file.format} file is parsed by XGBoost while it is unpickled, before this "
                "service can check its trees; log it with skops (MLflow's default) to explain it"
            )
        self._explainer = None if isinstance(explainer, str) else explainer
        self.explain_refusal: str | None = explainer if isinstance(explainer, str) else None
        """Why this model's scores cannot be explained (decided here: a pipeline's steps are known once loaded)."""
        self.margin = None if self._explainer is None else self._explainer.margin
        """The space of `contributions` (None: not explained, `explain_refusal` says why)."""

    def fraud_probability(self, batch: Any) -> Matrix:
        return np.ascontiguousarray(self._model.predict_proba(batch)[:, self._column], dtype=np.float64)

    def contributions(self, batch: Any) -> Matrix:
        """Per row, each signature feature's contribution and the base value, `[rows, features + 1]`, in `margin`
        space (`sklearn_explain`): only for a pipeline ending in XGBoost whose columns map back exactly."""
        if self._explainer is None:
            raise ValueError(f"explain: {self._where} is not explained: {self.explain_refusal}")
        return self._explainer.contributions(batch)

    def mlflow_predictions(self, batch: Any) -> tuple[Matrix, list[Any]]:
        # NOTE: the estimator's own method, not labels made of predict_proba: `predict` is not always its argmax
        # (LogisticRegression thresholds the decision function, SVC's Platt scaling can disagree with it).
        answer = getattr(self._model, self._predict_fn)(batch)
        return self.fraud_probability(batch), pyfunc_rows(answer, len(batch), self._where)


def _checked_trees(content: bytes) -> None:
    """Refuse (`UntrustedModelError`) a skops file holding an XGBoost or LightGBM model whose trees its library
    must not read: a pipeline's XGBClassifier or LGBMClassifier is parsed by its library as skops loads it
    (`xgboost_file`; `lightgbm_text`, lightgbm-org/LightGBM#7357)."""
    library = "XGBoost"
    try:
        check_skops_boosters(content)
        library = "LightGBM"
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            schema = json.loads(archive.read("schema.json"))
        check_lightgbm_boosters(schema)
    except InvalidTreesError as error:
        raise UntrustedModelError(
            f"its {library} model is not well-formed trees: {error}; refused before {library} reads it"
        ) from None
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise UntrustedModelError(f"its skops file cannot be read to check its {library} trees: {error}") from None


def _selects_by_name(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    if isinstance(model, ColumnTransformer):
        return True
    get_params = getattr(model, "get_params", None)
    if get_params is None:
        return False
    return any(isinstance(value, ColumnTransformer) for value in get_params(deep=True).values())


FLAVOR = SklearnFlavor()
