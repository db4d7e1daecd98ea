"""A fraud team's own scorecard as a custom `mlflow.pyfunc.PythonModel`, logged as code ("models from code").

`benchmarks.pyfunc` logs this file with `mlflow.pyfunc.log_model(python_model=<this file>, model_config=...)`;
MLflow stores it in the model's directory and runs it at load. So it imports nothing from this project: the
service's workers and `mlflow models serve` load it without `benchmarks` on their path.

The weights come from `model_config` (a logistic regression fitted on standardized demo features):
`features` (column names), `mean` and `scale` (one per feature), `coef` (one per feature), `intercept`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext


class FraudScorecard(PythonModel):
    """Fraud probability = logistic(standardized features . coef + intercept), one per row."""

    def load_context(self, context: PythonModelContext) -> None:
        config: dict[str, Any] = context.model_config or {}
        self.features: list[str] = list(config["features"])
        self.mean = np.asarray(config["mean"], dtype=np.float64)
        self.scale = np.asarray(config["scale"], dtype=np.float64)
        self.coef = np.asarray(config["coef"], dtype=np.float64)
        self.intercept = float(config["intercept"])

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """[rows, features] DataFrame -> DataFrame with one `fraud_probability` column in [0, 1], one per row."""
        matrix = model_input[self.features].to_numpy(dtype=np.float64)
        logits = ((matrix - self.mean) / self.scale) @ self.coef + self.intercept
        # The service reads the `fraud_probability` column of a DataFrame answer (its default probability_column).
        return pd.DataFrame({"fraud_probability": 1.0 / (1.0 + np.exp(-logits))})


mlflow.models.set_model(FraudScorecard())
