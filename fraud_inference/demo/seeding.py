"""Log, register and seed the demo fraud models into an MLflow Model Registry.

MLflow's `log_model` functions have no client argument: they log to the process-wide tracking
URI. So `log_fraud_model` and `seed_demo` point both MLflow's tracking and registry URIs at the
`tracking_uri` they are given (`mlflow.set_tracking_uri` / `mlflow.set_registry_uri`, which also
export `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI` to subprocesses) and leave them there, so
`mlflow.<flavor>.load_model("models:/...")` afterwards reads the same registry.

A `sqlite:///` registry can only read artifacts it can reach itself, such as `file://` URIs; a
registry behind `mlflow server --serve-artifacts` (an http(s) tracking URI) stores them under
`mlflow-artifacts:` URIs, which only the server can read.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import msgspec
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.model_selection import train_test_split

from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.training import FLAVORS, FraudClassifier, ModelFlavor, roc_auc, train_model

__all__ = [
    "CHAMPION_ALIAS",
    "DEFAULT_THRESHOLD",
    "DEMO_MODELS",
    "SKOPS_TRUSTED_TYPES",
    "SeededModel",
    "default_pip_requirements",
    "embedded_registry",
    "ensure_experiment",
    "log_fraud_model",
    "quiet_mlflow_notes",
    "seed_demo",
]

DEMO_MODELS: dict[ModelFlavor, str] = {
    "xgboost": "fraud-xgboost",
    "lightgbm": "fraud-lightgbm",
    "sklearn": "fraud-sklearn",
}
"""The registered model name of each demo model, keyed by its flavour."""

CHAMPION_ALIAS = "champion"
DEFAULT_THRESHOLD = "0.5"
"""The `threshold` version tag the demo sets: the fraud probability from which to flag."""

SKOPS_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        # What skops does not trust by itself in a HistGradientBoostingClassifier...
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        # ... and in an LGBMClassifier: MLflow's built-in LightGBM list, which MLflow adds to every
        # LightGBM model's list anyway (LGBMRegressor included).
        "collections.OrderedDict",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRegressor",
    }
)
"""The types skops must trust to load the demo's scikit-learn and LightGBM models.

Both flavours are logged with this whole set, so the `skops_trusted_types` list in each one's
MLmodel file holds exactly these types (in no particular order).
"""

_MODEL_ARTIFACT_NAME = "model"
_EXAMPLE_ROWS = 3
_SEED = 7

# The modules each flavour needs to load and score a model, beyond MLflow itself. XGBoost's and
# LightGBM's classifiers are scikit-learn estimators; skops reads the sklearn and LightGBM files.
_RUNTIME_MODULES: dict[ModelFlavor, tuple[str, ...]] = {
    "xgboost": ("xgboost", "sklearn", "numpy", "pandas", "scipy"),
    "lightgbm": ("lightgbm", "sklearn", "skops", "numpy", "pandas", "scipy"),
    "sklearn": ("sklearn", "skops", "numpy", "pandas", "scipy"),
}


class SeededModel(msgspec.Struct, frozen=True):
    """A demo model that `seed_demo` found or registered under the champion alias."""

    key: ModelFlavor
    name: str
    version: int
    roc_auc: float | None
    """Held-out ROC AUC: measured now for a new model, else the one logged on its run (None if none was)."""


def default_pip_requirements(flavor: ModelFlavor) -> list[str]:
    """Return the exact installed versions of what a model of `flavor` needs, as pip pins.

    The pins name the installed distributions, e.g. `xgboost-cpu==3.2.0` when that provides the
    `xgboost` module. Passing them to `log_model` spares MLflow ~8 s of requirement inference.
    """
    return [
        f"{distribution}=={importlib.metadata.version(distribution)}"
        for module in _RUNTIME_MODULES[flavor]
        for distribution in _distributions_of(module)
    ]


def embedded_registry(home: Path) -> tuple[str, str]:
    """Return the (tracking_uri, artifact_location) of the registry embedded under `home`.

    The registry is the SQLite database `home/mlflow.db` with artifacts in `home/artifacts`, both
    absolute. Creates `home` if needed, since SQLite cannot create a database's directory.
    """
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}", (home / "artifacts").as_uri()


def log_fraud_model(
    tracking_uri: str,
    *,
    flavor: ModelFlavor,
    model: FraudClassifier,
    X_example: pd.DataFrame,  # noqa: N803 - scikit-learn's name for a feature matrix
    registered_name: str,
    experiment_name: str = "fraud-demo",
    artifact_location: str | None = None,
    pip_requirements: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    with_signature: bool = True,
) -> ModelVersion:
    """Log `model` with its MLflow flavour in a new run and register it as a new version.

    Args:
        tracking_uri: The registry, e.g. `sqlite:////abs/mlflow.db` or `http://host:5000`;
            becomes MLflow's process-wide tracking and registry URI (see the module docstring).
        flavor: `xgboost`, `lightgbm` or `sklearn`: which `mlflow.<flavor>.log_model` to use.
        model: The fitted classifier.
        X_example: Rows of model input: the signature is inferred from its dtypes (int64 columns
            become `long`, float64 `double`) and its first rows are the input example.
        registered_name: The registered model to add the version to (created if missing).
        experiment_name: The experiment of the run, created if missing.
        artifact_location: Where a new experiment stores artifacts. For a `sqlite:///` registry
            it must be a `file://` URI and defaults to `artifacts/` next to the database; for an
            http(s) registry None lets the server decide (`mlflow-artifacts:`).
        pip_requirements: The model's requirements; defaults to `default_pip_requirements`.
        tags: Tags to set on the new model version, e.g. `{"threshold": "0.5"}`.
        metrics: Metrics to log on the run, e.g. `{"roc_auc": 0.97}`.
        with_signature: False logs the model without a signature (to test models lacking one).

    Returns:
        The registered model version, with its tags.
    """
    client = _use_registry(tracking_uri)
    experiment_id = ensure_experiment(client, tracking_uri, experiment_name, artifact_location)
    if pip_requirements is None:
        pip_requirements = default_pip_requirements(flavor)
    options: dict[str, Any] = {
        "name": _MODEL_ARTIFACT_NAME,
        "registered_model_name": registered_name,
        # NOTE: False, not None: with None MLflow would infer a signature from the input example.
        "signature": _input_signature(X_example) if with_signature else False,
        "input_example": X_example.head(_EXAMPLE_ROWS),
        "pip_requirements": list(pip_requirements),
    }
    with (
        quiet_mlflow_notes(),
        mlflow.start_run(experiment_id=experiment_id, run_name=registered_name),
    ):
        if metrics:
            mlflow.log_metrics(dict(metrics))
        if flavor == "xgboost":
            model_info = mlflow.xgboost.log_model(model, **options)
        elif flavor == "lightgbm":
            model_info = mlflow.lightgbm.log_model(
                model,
                serialization_format="skops",
                skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
                **options,
            )
        elif flavor == "sklearn":
            model_info = mlflow.sklearn.log_model(
                model,
                serialization_format="skops",
                skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
                **options,
            )
        else:
            raise ValueError(f"unknown model flavor {flavor!r}: use one of {', '.join(FLAVORS)}")
    version = str(model_info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(registered_name, version, key, value)
    registered: ModelVersion = client.get_model_version(registered_name, version)
    return registered


def seed_demo(
    tracking_uri: str,
    *,
    artifact_location: str | None,
    progress: Callable[[str], None] = print,
    n_rows: int = 50_000,
) -> dict[ModelFlavor, SeededModel]:
    """Make sure each of `DEMO_MODELS` has a version under the alias `champion`.

    A model whose alias already points at a version is left alone. The others are trained on
    `n_rows` synthetic transactions (a quarter held out for the ROC AUC), logged, registered,
    tagged `threshold=0.5` and given the alias. Progress lines go to `progress`.

    Args:
        tracking_uri: The registry; see `log_fraud_model`, and `embedded_registry` for SQLite.
        artifact_location: Where a new experiment stores artifacts; see `log_fraud_model`.
        progress: Called with one human-readable line per step.
        n_rows: How many transactions to generate when something must be trained.

    Returns:
        The champion of each demo model, keyed by flavour, in `DEMO_MODELS` order.
    """
    client = _use_registry(tracking_uri)
    seeded: dict[ModelFlavor, SeededModel] = {}
    for flavor, name in DEMO_MODELS.items():
        champion = _champion(client, name)
        if champion is not None:
            auc = _logged_roc_auc(client, name, champion)
            seeded[flavor] = SeededModel(key=flavor, name=name, version=champion, roc_auc=auc)
            measured = "no ROC AUC logged" if auc is None else f"ROC AUC {auc:.3f}"
            progress(f"{name} v{champion} already has alias {CHAMPION_ALIAS} ({measured})")
    missing = [flavor for flavor in DEMO_MODELS if flavor not in seeded]
    if not missing:
        return seeded

    started = time.perf_counter()
    features, labels = make_transactions(n_rows, seed=_SEED)
    train_features, test_features, train_labels, test_labels = train_test_split(
        features, labels, test_size=0.25, random_state=_SEED, stratify=labels
    )
    progress(f"generated {n_rows:,} transactions ({labels.mean():.2%} fraud)")
    for flavor in missing:
        name = DEMO_MODELS[flavor]
        progress(f"training {flavor}...")
        model = train_model(flavor, train_features, train_labels, seed=_SEED)
        auc = roc_auc(model, test_features, test_labels)
        version = log_fraud_model(
            tracking_uri,
            flavor=flavor,
            model=model,
            X_example=test_features,
            registered_name=name,
            artifact_location=artifact_location,
            tags={"threshold": DEFAULT_THRESHOLD},
            metrics={"roc_auc": auc},
        )
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
        seeded[flavor] = SeededModel(key=flavor, name=name, version=int(version.version), roc_auc=auc)
        progress(f"{name} v{version.version} -> alias {CHAMPION_ALIAS} (ROC AUC {auc:.3f})")
    progress(f"seeded {len(missing)} model(s) in {time.perf_counter() - started:.1f} s")
    return {flavor: seeded[flavor] for flavor in DEMO_MODELS}


def _use_registry(tracking_uri: str) -> MlflowClient:
    """Make `tracking_uri` MLflow's process-wide tracking and registry URI; return its client."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _champion(client: MlflowClient, name: str) -> int | None:
    """Return the version the champion alias of `name` points at, None if no such alias."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as error:
        # A missing registered model is RESOURCE_DOES_NOT_EXIST; a missing alias on an existing
        # one is INVALID_PARAMETER_VALUE (measured with MLflow 3.17's SQLite store).
        if error.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise
    return int(version.version)


def _logged_roc_auc(client: MlflowClient, name: str, version: int) -> float | None:
    """The `roc_auc` metric logged on the run that produced `name` v`version`, if any."""
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        return None
    auc = client.get_run(run_id).data.metrics.get("roc_auc")
    return None if auc is None else float(auc)


def ensure_experiment(client: MlflowClient, tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Return the id of the experiment `name`, creating it with `artifact_location` if missing.

    For a `sqlite:///` registry, None puts the artifacts in `artifacts/` beside the database file.
    """
    sqlite = tracking_uri.startswith("sqlite:")
    if sqlite and artifact_location is None:
        artifact_location = _artifact_location_next_to(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        if sqlite and artifact_location is not None and artifact_location.startswith("mlflow-artifacts:"):
            raise ValueError(
                f"artifact_location {artifact_location!r} cannot serve the SQLite registry {tracking_uri}:"
                " pass a file:// URI (only an mlflow server can read mlflow-artifacts: URIs)"
            )
        experiment_id: str = client.create_experiment(name, artifact_location=artifact_location)
        return experiment_id
    if sqlite and experiment.artifact_location.startswith("mlflow-artifacts:"):
        raise ValueError(
            f"experiment {name!r} stores artifacts at {experiment.artifact_location}, which the SQLite"
            f" registry {tracking_uri} cannot read: use another experiment_name or log through the server"
        )
    existing_id: str = experiment.experiment_id
    return existing_id


def _artifact_location_next_to(sqlite_uri: str) -> str | None:
    """Return the file:// URI of `artifacts/` beside the database file of `sqlite_uri`."""
    database = sqlite_uri.removeprefix("sqlite:///")
    if not database or database == ":memory:" or database == sqlite_uri:
        return None
    return (Path(database).resolve().parent / "artifacts").as_uri()


def _input_signature(example: pd.DataFrame) -> mlflow.models.ModelSignature:
    """Infer an input-only signature: int64 columns become `long`, float64 `double`."""
    with warnings.catch_warnings():
        # The features are never missing, so MLflow's hint about integer columns is noise here.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        return infer_signature(example)


@contextlib.contextmanager
def quiet_mlflow_notes() -> Iterator[None]:
    """Hide MLflow's notes that do not apply to a model logged with explicit pins.

    They are "Detected uv project" (the current directory's, not the model's), a warning that pip's
    version is unknown in a virtual environment without pip, and a pandas 3 deprecation warning
    raised inside MLflow's input example handling.
    """
    loggers = [logging.getLogger(name) for name in ("mlflow.utils.environment", "mlflow.utils.uv_utils")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Operation with range is deprecated")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@functools.cache
def _distributions_of(module: str) -> tuple[str, ...]:
    """Return the installed distributions providing the top-level `module` (e.g. xgboost-cpu)."""
    distributions = importlib.metadata.packages_distributions().get(module)
    if not distributions:
        raise ModuleNotFoundError(f"no installed distribution provides the module {module!r}")
    return tuple(sorted(set(distributions)))
