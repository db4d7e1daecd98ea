"""The custom pyfunc path of `--pyfunc`: a fraud team's scorecard, fitted, logged and registered as `champion`.

The model is `benchmarks/pyfunc_model.py` logged as code with its weights in `model_config`, a signature from
`infer_signature` and explicit pins; it answers a DataFrame with a `fraud_probability` column, the column the
service reads by default. Each `--pyfunc` run logs a new version and moves the alias to it, so the model measured
is always this code's.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import msgspec

__all__ = ["PYFUNC_KEY", "PYFUNC_MODEL", "RegisteredPyfunc", "register_pyfunc_model"]

PYFUNC_KEY = "pyfunc"
"""The model key the service serves it under (`MODELS=pyfunc=fraud-pyfunc@champion`) and the scenarios use."""
PYFUNC_MODEL = "fraud-pyfunc"
"""Its registered model name."""

_EXPERIMENT = "fraud-pyfunc"
_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
_SEED = 7
"""The demo's training seed: the scorecard learns from the rows the demo models learnt from."""


class RegisteredPyfunc(msgspec.Struct, frozen=True):
    """The version `register_pyfunc_model` registered, under the alias `champion`."""

    name: str
    version: int
    alias: str

    @property
    def model_uri(self) -> str:
        """`models:/fraud-pyfunc@champion`: what MLflow's loaders and `mlflow models serve` take."""
        return f"models:/{self.name}@{self.alias}"

    @property
    def served_as(self) -> str:
        """`fraud-pyfunc@champion`: the MODELS value of the service."""
        return f"{self.name}@{self.alias}"


def register_pyfunc_model(tracking_uri: str, *, n_rows: int) -> RegisteredPyfunc:
    """Fit the scorecard on `n_rows` demo transactions, log it as a new version of `PYFUNC_MODEL`, set `champion`.

    Artifacts of a `sqlite:///` registry go to `artifacts/` beside its database (an http(s) registry's server
    decides). Leaves MLflow's process-wide URIs at `tracking_uri`, as `seed_demo` does.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fraud_inference.demo.dataset import make_transactions
    from fraud_inference.demo.seeding import CHAMPION_ALIAS, DEFAULT_THRESHOLD, ensure_experiment, quiet_mlflow_notes

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    features, labels = make_transactions(n_rows, seed=_SEED)
    scaler = StandardScaler().fit(features)
    logistic = LogisticRegression(max_iter=1_000).fit(scaler.transform(features), labels)
    config = {
        "features": [str(column) for column in features.columns],
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": logistic.coef_[0].tolist(),
        "intercept": float(logistic.intercept_[0]),
    }
    example = features.head(3)
    # The signature's output: what the scorecard answers (the same logistic as pyfunc_model.py computes).
    probabilities = pd.DataFrame({"fraud_probability": logistic.predict_proba(scaler.transform(example))[:, 1]})
    with warnings.catch_warnings():
        # The demo's features are never missing: MLflow's hint about integer columns does not apply.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        signature = infer_signature(example, probabilities)
    experiment = ensure_experiment(client, tracking_uri, _EXPERIMENT, None)
    with quiet_mlflow_notes(), mlflow.start_run(experiment_id=experiment, run_name=PYFUNC_MODEL):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_MODEL_CODE),
            model_config=config,
            signature=signature,
            input_example=example,
            # NOTE: explicit pins: MLflow would spend ~8 s inferring them.
            pip_requirements=[f"{name}=={importlib.metadata.version(name)}" for name in ("numpy", "pandas")],
            registered_model_name=PYFUNC_MODEL,
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(PYFUNC_MODEL, version, "threshold", DEFAULT_THRESHOLD)
    client.set_registered_model_alias(PYFUNC_MODEL, CHAMPION_ALIAS, version)
    return RegisteredPyfunc(name=PYFUNC_MODEL, version=int(version), alias=CHAMPION_ALIAS)
