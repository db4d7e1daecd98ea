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
    binary_scores,
    check_feature_names,
    class_column,
    mlflow_loaded,
    model_path,
    positive_column,
)
from fraud_inference.models.flavors.xgboost_explain import MARGINS, tree_contributions
from fraud_inference.models.flavors.xgboost_file import InvalidTreesError, check_model_file
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
    pyfunc_predict_fns: tuple[str, ...] = ("predict",)

    def model_file(self, conf: Mapping[str, Any], model_dir: Path, trust: ModelTrust) -> ModelFile:
        # MLflow >= 1.22 records model_class; older models are raw Boosters (mlflow/xgboost/__init__.py `_load_model`).
        model_class = str(conf.get("model_class", _BOOSTER))
        if model_class not in _CLASSES:
            raise UntrustedModelError(
                f"its XGBoost model_class is {model_class}; this service scores {', '.join(_CLASSES)} "
                "(a fraud model must give probabilities)"
            )
        file = str(conf["data"])
        _checked_trees((model_dir / file).read_bytes(), features=None)
        return ModelFile(file=file, format="native", model_class=model_class)

    def load(self, artifact: ModelArtifact) -> XGBoostScorer:
        import xgboost

        # NOTE: the bytes checked are the bytes XGBoost parses: the file is read once, never opened again by path.
        content = model_path(artifact).read_bytes()
        try:
            _checked_trees(content, features=len(artifact.features))
        except UntrustedModelError as error:
            raise ValueError(f"{artifact.ref.name} v{artifact.ref.version}: {error}") from None
        model_class = artifact.model_file.model_class
        model: Any = (
            xgboost.Booster() if model_class == _BOOSTER else getattr(xgboost, str(model_class).split(".")[-1])()
        )
        model.load_model(bytearray(content))
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
    native_from_rows: int = 160
    """COMPILED_TREES: batches this large score natively. NOTE: XGBoost's own predictor walks blocks of rows and
    beats the compiled trees past ~170 rows (demo model on distinct rows, `python -m benchmarks.compiled_trees`:
    100 rows 409 us native, 335 compiled; 200 rows 620 and 653; 1,000 rows 2.3 ms and 3.3 ms)."""

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
        self._n_classes: int | None = None if is_booster else int(model.n_classes_)
        # NOTE: as MLflow's loaded object predicts: XGBClassifier.predict_proba stops at best_iteration when the
        # model was early-stopped, a raw Booster's predict uses every tree (its best_iteration is only a record).
        best = None if is_booster else getattr(model, "best_iteration", None)
        self._iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self.categories = _training_categories(booster, artifact)
        self.needs_frame = bool(self.categories)
        self._features = artifact.features
        self.margin = MARGINS.get(objective)
        """The space of `contributions` (None: this objective is not explained)."""

    def fraud_probability(self, batch: Any) -> Matrix:
        return binary_scores(self._scores(batch), self._column)

    def mlflow_predictions(self, batch: Any) -> tuple[Matrix, list[Any]]:
        scores = self._scores(batch)
        return binary_scores(scores, self._column), self.pyfunc_answer(scores)

    def _scores(self, batch: Any) -> Matrix:
        return np.asarray(self._booster.inplace_predict(batch, iteration_range=self._iteration_range), np.float64)

    def contributions(self, batch: Any) -> Matrix:
        """TreeSHAP of the fraud class per row, `[rows, features + 1]` (last column: the base value), in `margin`
        space over the trees `fraud_probability` uses (`xgboost_explain`); negated when the fraud class is label 0."""
        contributions = tree_contributions(self._booster, batch, self._iteration_range)
        return contributions if self._column == 1 else -contributions

    def fraud_column(self, scores: Matrix) -> Matrix:
        """The fraud probabilities from output shaped as `Booster.predict`'s (for COMPILED_TREES)."""
        return binary_scores(scores, self._column)

    def split_thresholds(self) -> dict[str, list[float]]:
        """Per feature, the `split_conditions` of the trees' numerical splits, read from the model's JSON.

        NOTE: not `trees_to_dataframe`: XGBoost 3.2 fails on it ("Failed to parse model text dump.") for a model
        with categorical splits.
        """
        model = json.loads(self._booster.save_raw(raw_format="json"))
        names = [feature.name for feature in self._features]
        found: dict[str, set[float]] = {}
        for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
            nodes = zip(
                tree["left_children"], tree["split_indices"], tree["split_conditions"], tree["split_type"], strict=True
            )
            for left, feature, condition, kind in nodes:
                if left != -1 and kind == 0 and 0 <= feature < len(names):
                    found.setdefault(names[feature], set()).add(float(condition))
        return {name: sorted(values) for name, values in found.items()}

    def pyfunc_answer(self, scores: Matrix) -> list[Any]:
        """What MLflow's pyfunc wrapper returns, from output shaped as `Booster.predict`'s: a raw Booster's
        `predict` itself (float32 probabilities), or the labels `XGBClassifier.predict` makes of them.

        NOTE: the same rule as xgboost/sklearn.py `XGBClassifier.predict` (3.x), so one model call gives both the
        fraud probabilities and the labels: class 1 exactly when p > 0.5 (ties to 0), labels are the class indices.
        """
        answer: Any
        if self._n_classes is None:
            answer = scores.astype(np.float32)
        elif scores.ndim > 1 and self._n_classes != 2:
            answer = np.argmax(scores, axis=1)
        else:
            two_columns = scores.ndim > 1 and scores.shape[1] != 1  # XGBoost's "multi-label" case: 0.0/1.0 per column
            answer = np.zeros(scores.shape) if two_columns else np.repeat(0, scores.shape[0])
            answer[scores > 0.5] = 1
        rows: list[Any] = answer.tolist()
        return rows

    def treelite_model(self) -> Any:
        """The trees `fraud_probability` uses, as treelite reads them (for COMPILED_TREES)."""
        import treelite

        start, stop = self._iteration_range
        booster = self._booster[start:stop] if stop else self._booster
        if _objective(booster) != "binary:logistic":
            return treelite.frontend.from_xgboost(booster)
        return treelite.frontend.from_xgboost_json(_base_margin_first(booster))


def _checked_trees(content: bytes, *, features: int | None) -> None:
    """Refuse (`UntrustedModelError`) an XGBoost model whose trees XGBoost's loader must not read (`xgboost_file`)."""
    try:
        check_model_file(content, features=features)
    except InvalidTreesError as error:
        raise UntrustedModelError(
            f"its XGBoost model is not well-formed trees: {error}; refused before XGBoost reads it (XGBoost 3.2 "
            "checks its arrays' lengths, not the indices in them)"
        ) from None


def _objective(booster: Any) -> str:
    config = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"])


def _base_margin_first(booster: Any) -> str:
    """The model's JSON with its base margin moved into a first one-leaf tree, and base_score 0.5 (margin 0).

    NOTE: XGBoost sums in float32 from the base margin, tree after tree; treelite adds the base margin after the
    trees, which rounds differently (up to ~1e-6 in probability over 200 trees). As the first tree's leaf, the
    base margin (read from XGBoost itself, not recomputed) is added first, as XGBoost adds it.
    """
    import xgboost

    model = json.loads(booster.save_raw(raw_format="json"))
    trees_model = model["learner"]["gradient_booster"]["model"]
    template = trees_model["trees"][0]

    def one_leaf(value: float) -> dict[str, Any]:
        tree = {key: value[:1] if isinstance(value, list) else value for key, value in template.items()}
        return tree | {
            "left_children": [-1], "right_children": [-1], "parents": [2147483647], "split_indices": [0],
            "split_conditions": [value], "base_weights": [value], "default_left": [0], "split_type": [0],
            "sum_hessian": [1.0], "loss_changes": [0.0], "categories": [], "categories_nodes": [],
            "categories_segments": [], "categories_sizes": [],
            "tree_param": {**template["tree_param"], "num_nodes": "1", "num_deleted": "0"},
        }  # fmt: skip

    def with_trees(trees: list[dict[str, Any]], base_score: str | None) -> dict[str, Any]:
        changed: dict[str, Any] = json.loads(json.dumps(model))
        part = changed["learner"]["gradient_booster"]["model"]
        part["trees"] = [{**tree, "id": index} for index, tree in enumerate(trees)]
        part["tree_info"] = [0] * len(trees)
        part["iteration_indptr"] = list(range(len(trees) + 1))
        part["gbtree_model_param"]["num_trees"] = str(len(trees))
        if base_score is not None:
            recorded = changed["learner"]["learner_model_param"]["base_score"]
            changed["learner"]["learner_model_param"]["base_score"] = (
                f"[{base_score}]" if recorded.startswith("[") else base_score
            )
        return changed

    # The base margin as XGBoost computes it: its margin for any row with one tree of a zero leaf.
    empty = xgboost.Booster()
    empty.load_model(bytearray(json.dumps(with_trees([one_leaf(0.0)], None)).encode()))
    row = np.full((1, booster.num_features()), np.nan, dtype=np.float32)
    base_margin = float(np.asarray(empty.inplace_predict(row, predict_type="margin")).reshape(-1)[0])
    return json.dumps(with_trees([one_leaf(base_margin), *trees_model["trees"]], "5E-1"))


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
