"""Custom `python_function` models (an `mlflow.pyfunc.PythonModel`): opt-in, since loading one runs its code.

Output contract: `predict` on a DataFrame of the signature's columns returns a 1-D array or Series of fraud
probabilities, or a DataFrame whose column named by the version tag `probability_column` (default
`fraud_probability`) holds them. Anything else refuses the version at load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraud_inference.models.flavors._base import NUMPY, Matrix, ModelFile, PackageRule, pyfunc_rows
from fraud_inference.models.trust import ModelTrust, UntrustedModelError

if TYPE_CHECKING:
    from fraud_inference.models.artifact import ModelArtifact

__all__ = ["CUSTOM_LOADERS", "DEFAULT_PROBABILITY_COLUMN", "FLAVOR", "PyfuncFlavor"]

DEFAULT_PROBABILITY_COLUMN = "fraud_probability"
# A PythonModel logged as an object (cloudpickled), or as code ("models from code", MLflow >= 2.12).
CUSTOM_LOADERS = frozenset({"mlflow.pyfunc.model", "mlflow.pyfunc.loaders.code_model"})


class PyfuncFlavor:
    name: str = "python_function"
    version_key: str | None = None
    packages: tuple[PackageRule, ...] = (NUMPY,)
    pyfunc_predict_fns: tuple[str, ...] = ("predict",)

    def model_file(self, conf: Mapping[str, Any], model_dir: Path, trust: ModelTrust) -> ModelFile:
        loader = conf.get("loader_module")
        if loader not in CUSTOM_LOADERS:
            raise UntrustedModelError(
                f"its only flavour is python_function with loader {loader!r}; this service serves XGBoost, "
                "LightGBM and scikit-learn models, and custom mlflow.pyfunc.PythonModel ones"
            )
        if trust.pyfunc == "refuse":
            raise UntrustedModelError(
                "it is a custom python_function model, and loading one runs the code it carries: set PYFUNC=allow "
                "if only trusted people can write to the registry"
            )
        return ModelFile(file=".", format="pyfunc")

    def load(self, artifact: ModelArtifact) -> PyfuncScorer:
        import mlflow.pyfunc

        return PyfuncScorer(mlflow.pyfunc.load_model(artifact.path), artifact)

    def mlflow_scores(self, artifact: ModelArtifact, frame: Any, positive_class: str | None) -> Matrix:
        # The custom model's own predict is MLflow's loader's answer; the contract is checked in PyfuncScorer.
        return self.load(artifact).fraud_probability(frame)


class PyfuncScorer:
    """The model's own `predict` on a DataFrame built from the signature; its output checked against the contract."""

    needs_frame: bool = True
    takes_missing: bool = False  # the model's code decides: each column is probed at load
    categories: Mapping[str, Sequence[Any]] = {}
    positive_class: str | None = None

    def __init__(self, model: Any, artifact: ModelArtifact) -> None:
        self._model = model
        self._column = artifact.ref.probability_column or DEFAULT_PROBABILITY_COLUMN
        self._where = f"{artifact.ref.name} v{artifact.ref.version}"

    def fraud_probability(self, batch: Any) -> Matrix:
        return self._probabilities(self._model.predict(batch), len(batch))

    def mlflow_predictions(self, batch: Any) -> tuple[Matrix, list[Any]]:
        # One call: the probabilities the contract reads, and the whole output (every column), as MLflow answers.
        output = self._model.predict(batch)
        return self._probabilities(output, len(batch)), pyfunc_rows(output, len(batch), self._where)

    def _probabilities(self, output: Any, rows: int) -> Matrix:
        import pandas as pd

        if isinstance(output, pd.DataFrame):
            if self._column not in output.columns:
                raise ValueError(
                    f"{self._where}: predict returned a DataFrame without column {self._column!r} "
                    f"(its columns: {[str(c) for c in output.columns]}); return the fraud probabilities in a column "
                    "named by the version tag probability_column (default fraud_probability), or as a 1-D array"
                )
            output = output[self._column]
        scores = np.asarray(output, dtype=np.float64)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.shape != (rows,):
            raise ValueError(
                f"{self._where}: predict returned shape {scores.shape} for {rows} rows; the output contract is "
                "one fraud probability per row (a 1-D array or Series, or a DataFrame column named by the version "
                "tag probability_column)"
            )
        if not ((scores >= 0) & (scores <= 1)).all():
            raise ValueError(f"{self._where}: predict returned values outside [0, 1]; they must be fraud probabilities")
        return np.ascontiguousarray(scores)


FLAVOR = PyfuncFlavor()
