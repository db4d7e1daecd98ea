"""LightGBM: raw `lgb.train` Boosters (LightGBM's text format) and `LGBMClassifier`s (skops, or an allowed pickle)."""

from __future__ import annotations

import io
import json
import re
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
    binary_scores,
    check_feature_names,
    class_column,
    mlflow_loaded,
    model_path,
    positive_column,
)
from fraud_inference.models.flavors.lightgbm_explain import explained_margin, tree_contributions
from fraud_inference.models.flavors.lightgbm_text import (
    InvalidTreesError,
    check_model_text,
    check_skops_boosters,
    has_linear_trees,
    model_objective,
)
from fraud_inference.models.trust import ModelTrust, UntrustedModelError, check_serialized, load_serialized

if TYPE_CHECKING:
    from fraud_inference.models.artifact import ModelArtifact

__all__ = ["FLAVOR", "LightGBMFlavor"]

_BOOSTER = "lightgbm.basic.Booster"
_PROBABILITY_OBJECTIVES = frozenset({"binary", "multiclass", "softmax", "cross_entropy", "xentropy"})
# LightGBM invents these names for a model trained on a bare array: they say nothing about the column order.
_INVENTED_NAME = re.compile(r"Column_\d+")


class LightGBMFlavor:
    name: str = "lightgbm"
    version_key: str | None = "lgb_version"
    packages: tuple[PackageRule, ...] = (PackageRule(("lightgbm",), "same major"), NUMPY)
    pyfunc_predict_fns: tuple[str, ...] = ("predict",)

    def model_file(self, conf: Mapping[str, Any], model_dir: Path, trust: ModelTrust) -> ModelFile:
        # NOTE: decided as mlflow/lightgbm/__init__.py `_load_model` does: by model_class. MLflow 3.17 writes
        # serialization_format: skops even for a Booster saved natively; only a Booster is never unpickled, and
        # any other class without serialization_format is a cloudpickle for MLflow (older MLflow wrote exactly that).
        model_class = str(conf.get("model_class", _BOOSTER))
        file = str(conf["data"])
        if model_class == _BOOSTER:
            content = (model_dir / file).read_bytes()
            _checked_trees(content, "native", features=None)
            return ModelFile(
                file=file, format="native", model_class=model_class, objective=model_objective(content, "native"),
                linear_trees=has_linear_trees(content, "native"),
            )  # fmt: skip
        serialization_format = str(conf.get("serialization_format", "cloudpickle"))
        skops_types = check_serialized(file, serialization_format, model_dir, trust)
        objective, linear_trees = None, False  # NOTE: only a checked file is read: a pickle is never explained
        if serialization_format == "skops":
            content = (model_dir / file).read_bytes()
            _checked_trees(content, "skops", features=None)
            objective, linear_trees = model_objective(content, "skops"), has_linear_trees(content, "skops")
        return ModelFile(
            file=file, format=serialization_format, model_class=model_class, skops_types=skops_types,  # type: ignore[arg-type]
            objective=objective, linear_trees=linear_trees,
        )  # fmt: skip

    def load(self, artifact: ModelArtifact) -> LightGBMScorer:
        model_file = artifact.model_file
        # NOTE: the bytes checked are the bytes LightGBM parses: the file is read once, never opened again by path.
        content = model_path(artifact).read_bytes()
        if model_file.format in {"native", "skops"}:
            try:
                _checked_trees(content, model_file.format, features=len(artifact.features))
            except UntrustedModelError as error:
                raise ValueError(f"{artifact.ref.name} v{artifact.ref.version}: {error}") from None
        if model_file.format == "native":
            import lightgbm

            return LightGBMScorer(lightgbm.Booster(model_str=content.decode()), artifact)
        model = load_serialized(model_path(artifact), model_file.format, model_file.skops_types, content=content)
        return LightGBMScorer(model, artifact)

    def mlflow_scores(self, artifact: ModelArtifact, frame: Any, positive_class: str | None) -> Matrix:

        model = mlflow_loaded("mlflow.lightgbm", artifact.path)
        if not hasattr(model, "predict_proba"):
            return class_column(model.predict(frame), None, positive_class)
        return class_column(model.predict_proba(frame), list(model.classes_), positive_class)


class LightGBMScorer:
    """`Booster.predict` on the raw booster, one thread (what `LGBMClassifier.predict_proba` calls)."""

    takes_missing: bool = True

    def __init__(self, model: Any, artifact: ModelArtifact) -> None:
        where = f"{artifact.ref.name} v{artifact.ref.version}"
        is_booster = not hasattr(model, "booster_")
        booster = model if is_booster else model.booster_
        objective = str(booster.params.get("objective", "binary"))
        if objective not in _PROBABILITY_OBJECTIVES:
            raise ValueError(f"{where}: LightGBM objective {objective!r} does not give probabilities")
        names = booster.feature_name()
        invented = all(_INVENTED_NAME.fullmatch(name) for name in names)
        check_feature_names(artifact, None if invented else names)
        classes = [0, 1] if is_booster else list(model.classes_)
        self._column, self.positive_class = positive_column(classes, artifact.ref.positive_class, where)
        self._booster = booster
        self._classes: np.ndarray[Any, Any] | None = None if is_booster else np.asarray(model.classes_)
        self.categories = _training_categories(booster, artifact)
        self.needs_frame = bool(self.categories)
        self._features = artifact.features
        self.margin = explained_margin(artifact.model_file)
        """The space of `contributions` (None: this file or objective is not explained)."""

    def fraud_probability(self, batch: Any) -> Matrix:
        return binary_scores(self._scores(batch), self._column)

    def mlflow_predictions(self, batch: Any) -> tuple[Matrix, list[Any]]:
        scores = self._scores(batch)
        return binary_scores(scores, self._column), self.pyfunc_answer(scores)

    def _scores(self, batch: Any) -> Matrix:
        return np.asarray(self._booster.predict(batch, num_threads=1), dtype=np.float64)

    def pyfunc_answer(self, scores: Matrix) -> list[Any]:
        """What MLflow's pyfunc wrapper returns, from output shaped as `Booster.predict`'s: a raw Booster's
        `predict` itself, or the labels `LGBMClassifier.predict` makes of it, in the model's own label type.

        NOTE: the same rule as lightgbm/sklearn.py `LGBMClassifier.predict` (4.x): argmax over `predict_proba`
        (`[1 - p, p]` for a binary objective), then the class of that index; one model call gives both answers.
        """
        if self._classes is None:
            answer = scores
        else:
            probabilities = scores if scores.ndim > 1 else np.vstack((1.0 - scores, scores)).transpose()
            answer = self._classes[np.argmax(probabilities, axis=1)]
        rows: list[Any] = answer.tolist()
        return rows

    def contributions(self, batch: Any) -> Matrix:
        """TreeSHAP of the fraud class per row, `[rows, features + 1]` (last column: the base value), in `margin`
        space (`lightgbm_explain`); negated when the fraud class is label 0. Only a checked file gets here."""
        if self.margin is None:
            raise ValueError("explain: this LightGBM model's contributions are not explained (explain_refusal)")
        contributions = tree_contributions(self._booster, batch)
        return contributions if self._column == 1 else -contributions

    def fraud_column(self, scores: Matrix) -> Matrix:
        """The fraud probabilities from output shaped as `Booster.predict`'s (for COMPILED_TREES)."""
        return binary_scores(scores, self._column)

    def split_thresholds(self) -> dict[str, list[float]]:
        """Per feature, the thresholds of the trees' numerical (`<=`) splits, from `dump_model`."""
        names = [feature.name for feature in self._features]
        found: dict[str, set[float]] = {}
        stack = [tree["tree_structure"] for tree in self._booster.dump_model()["tree_info"]]
        while stack:
            node = stack.pop()
            if "split_feature" not in node:
                continue
            feature = int(node["split_feature"])
            if node.get("decision_type") == "<=" and 0 <= feature < len(names):
                found.setdefault(names[feature], set()).add(float(node["threshold"]))
            stack.extend((node["left_child"], node["right_child"]))
        return {name: sorted(values) for name, values in found.items()}

    def treelite_model(self) -> Any:
        """The trees `fraud_probability` uses, as treelite reads them (for COMPILED_TREES)."""
        import treelite

        return treelite.frontend.from_lightgbm(self._booster)


def _checked_trees(content: bytes, file_format: str, *, features: int | None) -> None:
    """Refuse (`UntrustedModelError`) a LightGBM model whose trees LightGBM's parser must not read
    (`lightgbm_text`); a skops file's Boosters are checked in its schema, without loading it."""
    try:
        if file_format == "native":
            check_model_text(content, features=features)
            return
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            schema = json.loads(archive.read("schema.json"))
        check_skops_boosters(schema, features=features)
    except InvalidTreesError as error:
        raise UntrustedModelError(
            f"its LightGBM model is not well-formed trees: {error}; refused before LightGBM reads it (a crafted "
            "model file can make LightGBM read and write outside its arrays: lightgbm-org/LightGBM#7357)"
        ) from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise UntrustedModelError(f"its skops file cannot be read to check its LightGBM trees: {error}") from None


def _training_categories(booster: Any, artifact: ModelArtifact) -> dict[str, Sequence[Any]]:
    """The categories LightGBM recorded (`pandas_categorical`), one list per categorical column in column order.

    LightGBM re-codes a pandas category column onto them itself; they are given to the column anyway so an
    unseen value is a missing one whatever the library version does.
    """
    recorded = booster.pandas_categorical or []
    strings = [feature.name for feature in artifact.features if feature.type == "string"]
    if len(recorded) != len(strings):
        raise ValueError(
            f"{artifact.ref.name} v{artifact.ref.version}: the signature has {len(strings)} string columns "
            f"({', '.join(strings) or 'none'}) but LightGBM recorded {len(recorded)} categorical ones; train it "
            "on a DataFrame whose string columns are pandas 'category' columns, and log the same frame's signature"
        )
    return {name: list(values) for name, values in zip(strings, recorded, strict=True)}


FLAVOR = LightGBMFlavor()
