"""The small interface every flavour module implements, and the rules the flavours share."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fraud_inference.consistency import PackageRule
from fraud_inference.models.artifact import ModelArtifact, ModelFile

if TYPE_CHECKING:
    from fraud_inference.models.trust import ModelTrust

__all__ = [
    "NUMPY",
    "Matrix",
    "ModelFile",
    "ModelFlavor",
    "PackageRule",
    "RecordsSplits",
    "Scorer",
    "binary_scores",
    "check_feature_names",
    "class_column",
    "positive_column",
    "pyfunc_rows",
]

Matrix = npt.NDArray[np.float64]


NUMPY = PackageRule(("numpy",), "same major")
"""numpy 1 and 2 differ in ABI and numerics: every flavour checks it."""


class Scorer(Protocol):
    """A loaded model, as the workers score it."""

    @property
    def needs_frame(self) -> bool:
        """Rows go as a pandas DataFrame (names, strings, categories) instead of one float64 matrix."""

    @property
    def categories(self) -> Mapping[str, Sequence[Any]]:
        """Per categorical column, the categories the model was trained with (an unseen value is a missing one)."""

    @property
    def takes_missing(self) -> bool:
        """True when every column may be NaN (XGBoost, LightGBM); else the columns are probed at load."""

    @property
    def positive_class(self) -> str | None:
        """The label whose probability is scored (None for a custom model, whose output is the probability)."""

    def fraud_probability(self, batch: Any) -> Matrix:
        """The fraud probability of each row of `batch` (a matrix, or a DataFrame when `needs_frame`)."""
        ...

    def mlflow_predictions(self, batch: Any) -> tuple[Matrix, list[Any]]:
        """The fraud probability of each row of `batch`, and what MLflow's pyfunc wrapper of the version returns for
        the same rows (`mlflow.pyfunc.load_model(uri).predict`), one JSON-able value per row (`pyfunc_rows`)."""
        ...


@runtime_checkable
class RecordsSplits(Protocol):
    """A scorer whose model records the thresholds it splits numeric columns on (XGBoost's, LightGBM's trees)."""

    def split_thresholds(self) -> dict[str, list[float]]:
        """Per feature name, the thresholds of the model's numeric splits on it (the parity gate's rows use them)."""
        ...


class ModelFlavor(Protocol):
    """What the service knows about one model library: its MLmodel keys, files, trust, dependencies, scoring."""

    name: str
    """The flavour's key in MLmodel's `flavors`."""
    version_key: str | None
    """The MLmodel key recording the library's version (the fallback when requirements.txt has no pin)."""
    packages: tuple[PackageRule, ...]
    """The packages whose installed versions must match training, with their `compatible` rule."""
    pyfunc_predict_fns: tuple[str, ...]
    """The MLmodel `python_function.predict_fn`s whose answer `/invocations` gives (MLflow's wrapper has them)."""

    def model_file(self, conf: Mapping[str, Any], model_dir: Path, trust: ModelTrust) -> ModelFile:
        """Decide which file and format to load, as MLflow's loader does; raise `UntrustedModelError` if refused.

        Runs where the version is fetched (server, `check`): it must never run code from the model.
        """
        ...

    def load(self, artifact: ModelArtifact) -> Scorer:
        """Load the version in this process (a worker, or the parity gate) and return its scorer."""
        ...

    def mlflow_scores(self, artifact: ModelArtifact, frame: Any, positive_class: str | None) -> Matrix:
        """What MLflow's own flavour loader (`mlflow.<flavour>.load_model`) gives for the rows of `frame`.

        The parity gate's reference: `predict_proba[:, positive_class]` for classifiers and pipelines,
        `predict` for raw Boosters, `predict` for custom models. Runs only for a version the trust rules passed.
        """
        ...


_NEGATIVE = frozenset({"0", "0.0", "false"})
_POSITIVE = frozenset({"1", "1.0", "true"})


def positive_column(classes: Sequence[Any], tag: str | None, where: str) -> tuple[int, str]:
    """The index in `classes` of the fraud class, and its label.

    Classes 0/1 or False/True (or their string forms): 1/True. Any other labels need the version tag
    `positive_class`; the fraud class is never guessed.
    """
    labels = [str(label) for label in classes]
    if len(labels) != 2:
        raise ValueError(f"{where}: expected a binary fraud classifier, its classes are {labels}")
    if tag is not None:
        if tag not in labels:
            raise ValueError(f"{where}: version tag positive_class={tag!r} names no class of the model {labels}")
        return labels.index(tag), tag
    lowered = [label.lower() for label in labels]
    if lowered[0] in _NEGATIVE | _POSITIVE and lowered[1] in _NEGATIVE | _POSITIVE and lowered[0] != lowered[1]:
        index = 0 if lowered[0] in _POSITIVE else 1
        return index, labels[index]
    raise ValueError(
        f"{where}: its classes are {labels}, so the fraud class cannot be guessed; set the version tag "
        "positive_class to the fraud label: MlflowClient().set_model_version_tag(name, version, 'positive_class', "
        "'<fraud label>')"
    )


def check_feature_names(artifact: ModelArtifact, trained: Sequence[Any] | None) -> None:
    """Refuse a model whose own feature names disagree with its signature: rows go in signature order.

    A model trained without names (on a bare array) records none; then the signature is the only order.
    """
    if trained is None:
        return
    trained_names = [str(name) for name in trained]
    signature_names = [feature.name for feature in artifact.features]
    if trained_names != signature_names:
        raise ValueError(
            f"{artifact.ref.name} v{artifact.ref.version}: the model was trained on features {trained_names} "
            f"but its MLflow signature lists {signature_names}; log it again with "
            "signature=infer_signature(X_train) so rows can be put in training order"
        )


def class_column(probabilities: Any, classes: Sequence[Any] | None, positive_class: str | None) -> Matrix:
    """The fraud class's probabilities from a library's own output: 2-D by `classes`, or 1-D P(label 1)."""
    scores = np.asarray(probabilities, dtype=np.float64)
    labels = [str(label) for label in (classes if classes is not None else [0, 1])]
    index = labels.index(positive_class) if positive_class in labels else 1
    if scores.ndim == 2:
        return np.ascontiguousarray(scores[:, index])
    return scores if index == 1 else 1.0 - scores


def binary_scores(scores: Matrix, column: int) -> Matrix:
    """The fraud class's probabilities from a booster's raw output: one column per class, or 1-D P(label 1)."""
    if scores.ndim == 2:
        if scores.shape[1] != 2:
            raise ValueError(f"expected two classes, the model gives {scores.shape[1]} scores per row")
        return np.ascontiguousarray(scores[:, column])
    return scores if column == 1 else 1.0 - scores


def model_path(artifact: ModelArtifact) -> Path:
    """The local path of the version's model file."""
    return Path(artifact.path) / artifact.model_file.file


def pyfunc_rows(output: Any, rows: int, where: str) -> list[Any]:
    """A pyfunc `predict` output as MLflow's scoring server lays it out, one value per row.

    As `mlflow.utils.proto_json_utils._get_jsonable_obj(output, pandas_orient="records")`: an array as
    `tolist()`, a DataFrame as its records, a Series as the records of a one-column DataFrame (keyed by the
    Series' name, or 0). Anything that is not one value per row cannot be split between the requests of a batch.
    """
    import pandas as pd

    if isinstance(output, np.ndarray):
        values: Any = output.tolist()
    elif isinstance(output, pd.DataFrame):
        values = output.to_dict(orient="records")
    elif isinstance(output, pd.Series):
        values = pd.DataFrame(output).to_dict(orient="records")
    else:
        values = output
    if not isinstance(values, list) or len(values) != rows:
        raise ValueError(
            f"{where}: predict returned {type(output).__name__} that is not one value per row for {rows} rows; "
            "MLflow's scoring protocol answers one prediction per row here"
        )
    return values


@functools.lru_cache(maxsize=8)
def mlflow_loaded(loader_module: str, path: str) -> Any:
    """MLflow's own flavour loader (`mlflow.xgboost`, ...) on the model directory `path`, once per directory.

    NOTE: the parity gate scores each example row on its own (a row MLflow cannot score is that row's failure);
    loading the model again for each was most of the gate's time (0.08-0.86 s per model, at startup and refresh).
    """
    return importlib.import_module(loader_module).load_model(path)
