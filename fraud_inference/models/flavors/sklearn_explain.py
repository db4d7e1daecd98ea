"""Reason codes for scikit-learn Pipelines ending in XGBoost: the booster's own `pred_contribs` on the pipeline's
transformed columns, summed back to the signature's input column each came from.

The mapping of transformed columns to input columns is read from scikit-learn's own fitted objects
(`ColumnTransformer.transformers_` / `output_indices_`, `OneHotEncoder.categories_` / `drop_idx_` /
`infrequent_categories_`), each count checked against the step's `get_feature_names_out()`. A step whose mapping
cannot be known exactly (PCA, PolynomialFeatures, an unknown transformer, a fitted remainder, an imputer's missing
indicators) refuses explanations, naming the step: a reason must never name a column the value did not come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fraud_inference.models.flavors._base import Matrix
from fraud_inference.models.flavors.xgboost_explain import MARGINS

__all__ = ["PipelineExplainer", "UnmappableStepError", "column_sources", "mlflow_contributions", "pipeline_explainer"]

_ONE_TO_ONE = frozenset({
    "StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler", "PowerTransformer", "QuantileTransformer",
    "Binarizer", "OrdinalEncoder", "SimpleImputer",
})  # fmt: skip
"""scikit-learn transformers whose output column j is computed from input column j alone (elementwise)."""
_LIGHTGBM_WHY = (
    "a pipeline ending in LightGBM is not explained yet (its contributions are not traced back through the "
    "pipeline's steps); log the LightGBM model with mlflow.lightgbm to explain it"
)


class UnmappableStepError(ValueError):
    """A pipeline step whose output columns cannot be traced exactly to its input columns; the message names it."""


class PipelineExplainer:
    """Contributions of a fitted `Pipeline(preprocessing..., XGBClassifier)` per signature feature.

    `sources[j]` is the signature column (index) that the booster's input column j was computed from.
    """

    margin: str = "log_odds"

    def __init__(self, pipeline: Any, sources: Sequence[int], features: int, positive_column: int) -> None:
        self._preprocessing = pipeline[:-1]
        self._estimator = pipeline[-1]
        best = getattr(self._estimator, "best_iteration", None)
        self._iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        # [booster columns + bias, features + base value]: 1 where a booster column came from a feature.
        self._fold = np.zeros((len(sources) + 1, features + 1), dtype=np.float64)
        self._fold[np.arange(len(sources)), np.asarray(sources, dtype=np.intp)] = 1.0
        self._fold[-1, -1] = 1.0
        self._sign = 1.0 if positive_column == 1 else -1.0

    def contributions(self, batch: Any) -> Matrix:
        """Per row of `batch` (the pipeline's input), `[rows, features + 1]` float64 in signature order, last column
        the base value: XGBoost's `pred_contribs` on `pipeline[:-1].transform(batch)` (float32 sums, up to ~1e-5 from
        its `output_margin`), each column's summed into the feature it came from; the bias as it is."""
        import xgboost

        transformed = self._preprocessing.transform(batch)
        matrix = xgboost.DMatrix(transformed, missing=self._estimator.missing, nthread=1)
        booster = self._estimator.get_booster()
        raw = booster.predict(matrix, pred_contribs=True, iteration_range=self._iteration_range)
        if raw.ndim != 2 or raw.shape[1] != self._fold.shape[0]:
            raise ValueError(f"explain: {raw.shape} contributions for {self._fold.shape[0] - 1} transformed columns")
        return self._sign * (np.asarray(raw, dtype=np.float64) @ self._fold)


def pipeline_explainer(model: Any, features: int, positive_column: int) -> PipelineExplainer | str:
    """The explainer of a fitted scikit-learn model taking `features` signature columns, or why it has none."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        return f"{type(model).__name__} has no native contributions (explained: a Pipeline ending in XGBClassifier)"
    name, last = model.steps[-1]
    kind = type(last).__name__
    module = type(last).__module__
    if module.startswith("lightgbm"):
        return f"its last step {name!r} is a {kind}: {_LIGHTGBM_WHY}"
    if not module.startswith("xgboost") or kind != "XGBClassifier":
        return f"its last step {name!r} ({kind}) has no native contributions (explained: XGBClassifier)"
    objective = _objective(last)
    if objective not in MARGINS:
        return f"its XGBClassifier's objective {objective!r} is not explained (explained: binary:logistic)"
    try:
        sources = _compose(model.steps[:-1], features, "")
    except UnmappableStepError as error:
        return str(error)
    booster_columns = last.get_booster().num_features()
    if len(sources) != booster_columns:
        return f"its steps give {len(sources)} columns, its XGBClassifier takes {booster_columns}"
    return PipelineExplainer(model, sources, features, positive_column)


def column_sources(step: Any, inputs: int, where: str) -> list[int]:
    """For each output column of the fitted `step` given `inputs` columns, the input column it comes from.

    Raises `UnmappableStepError` naming the step (`where`, its path in the pipeline) when that is not exact.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if _is_identity(step):
        return list(range(inputs))
    if isinstance(step, Pipeline):
        return _compose(step.steps, inputs, where + "/")
    if isinstance(step, ColumnTransformer):
        return _column_transformer(step, inputs, where)
    kind = type(step).__name__
    if isinstance(step, OneHotEncoder):
        return _one_hot(step, inputs, where)
    if kind == "SimpleImputer" and getattr(step, "add_indicator", False):
        raise UnmappableStepError(
            f"step {where!r} (SimpleImputer with add_indicator=True) adds missing-value indicator columns, which are "
            "not mapped to their columns"
        )
    if kind in _ONE_TO_ONE and type(step).__module__.startswith("sklearn."):
        _check_count(step, inputs, inputs, where)  # an imputer drops a column that was empty in training
        return list(range(inputs))
    raise UnmappableStepError(
        f"step {where!r} ({kind}) mixes or reshapes columns, so its outputs cannot be traced to one input column "
        "each (mapped: ColumnTransformer with drop/passthrough remainder, OneHotEncoder, "
        f"{', '.join(sorted(_ONE_TO_ONE))} without indicators, passthrough, nested Pipelines)"
    )


def mlflow_contributions(path: str, frame: Any, positive_class: str | None) -> Matrix:
    """The same computation on the pipeline `mlflow.sklearn.load_model(path)` returns, for the fraud class: the
    parity gate's reference, `[rows, features + 1]` float64. Raises `ValueError` when it is not explained."""
    from fraud_inference.models.flavors._base import mlflow_loaded

    model = mlflow_loaded("mlflow.sklearn", path)
    labels = [str(label) for label in model.classes_]
    column = labels.index(positive_class) if positive_class in labels else 1
    explainer = pipeline_explainer(model, frame.shape[1], column)
    if isinstance(explainer, str):
        raise ValueError(explainer)
    return explainer.contributions(frame)


def _is_identity(step: Any) -> bool:
    """`passthrough` (or None), as given or as fitted: a fitted ColumnTransformer holds it as a
    `FunctionTransformer` without a function, which returns its input as it is."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return True
    return type(step).__name__ == "FunctionTransformer" and getattr(step, "func", False) is None


def _objective(estimator: Any) -> str:
    import json

    config = json.loads(estimator.get_booster().save_config())
    return str(config["learner"]["objective"]["name"])


def _compose(steps: Sequence[tuple[str, Any]], inputs: int, prefix: str) -> list[int]:
    """The sources of a chain of steps: each step's outputs traced through the steps before it."""
    sources = list(range(inputs))
    for name, step in steps:
        sources = [sources[column] for column in column_sources(step, len(sources), prefix + name)]
    return sources


def _column_transformer(transformer: Any, inputs: int, where: str) -> list[int]:
    names = [str(name) for name in getattr(transformer, "feature_names_in_", [])]
    outputs = len(transformer.get_feature_names_out())
    sources: list[int | None] = [None] * outputs
    for name, step, columns in transformer.transformers_:
        chosen = _input_columns(columns, names, inputs, f"{where}/{name}")
        span = transformer.output_indices_[name]
        if isinstance(step, str) and step == "drop":
            continue
        if name == "remainder" and not _is_identity(step):
            raise UnmappableStepError(f"step {where!r} has a fitted remainder ({type(step).__name__}); only drop or "
                                      "passthrough are mapped")  # fmt: skip
        inner = column_sources(step, len(chosen), f"{where}/{name}")
        if span.stop - span.start != len(inner):
            raise UnmappableStepError(f"step {where}/{name} gives {span.stop - span.start} columns, {len(inner)} "
                                      "were traced")  # fmt: skip
        sources[span] = [chosen[column] for column in inner]
    if any(source is None for source in sources):
        raise UnmappableStepError(f"step {where!r}: some of its {outputs} output columns come from no transformer")
    return [int(source) for source in sources if source is not None]


def _input_columns(columns: Any, names: Sequence[str], inputs: int, where: str) -> list[int]:
    """A ColumnTransformer's column selection as input indices: names, indices, a slice or a boolean mask."""
    if isinstance(columns, str):
        columns = [columns]
    elif isinstance(columns, (int, np.integer)):
        columns = [int(columns)]
    elif isinstance(columns, slice) and not isinstance(columns.start, str) and not isinstance(columns.stop, str):
        return list(range(inputs))[columns]
    if callable(columns) or isinstance(columns, slice):
        raise UnmappableStepError(f"step {where!r} selects its columns with {columns!r}, which is not mapped")
    selection = np.asarray(columns)
    if selection.dtype == bool:
        return [int(index) for index in np.flatnonzero(selection)]
    chosen = []
    for column in selection.tolist():
        if isinstance(column, str):
            if column not in names:
                raise UnmappableStepError(f"step {where!r} selects {column!r}, which is not an input column")
            chosen.append(names.index(column))
        else:
            chosen.append(int(column))
    return chosen


def _one_hot(encoder: Any, inputs: int, where: str) -> list[int]:
    """Each input's outputs, as scikit-learn counts them: its categories, the infrequent ones grouped into one,
    less the dropped one (`OneHotEncoder._compute_n_features_outs`)."""
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * inputs
    dropped = encoder.drop_idx_ if encoder.drop_idx_ is not None else [None] * inputs
    counts = []
    for categories, rare, drop in zip(encoder.categories_, infrequent, dropped, strict=True):
        count = len(categories) - (0 if rare is None else len(rare) - 1) - (0 if drop is None else 1)
        counts.append(count)
    _check_count(encoder, inputs, sum(counts), where)
    return [column for column, count in enumerate(counts) for _ in range(count)]


def _check_count(step: Any, inputs: int, expected: int, where: str) -> None:
    """Refuse when the step's own output names disagree with the count traced (a miscount is never served)."""
    try:
        got = len(step.get_feature_names_out())
    except Exception as error:
        raise UnmappableStepError(f"step {where!r} cannot name its output columns: {error}") from None
    if got != expected:
        raise UnmappableStepError(
            f"step {where!r} ({type(step).__name__}) gives {got} columns for {inputs} inputs, {expected} were traced"
        )
