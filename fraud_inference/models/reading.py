"""Reading a downloaded version's MLmodel into a `ModelArtifact`: which flavour serves it, its signature's features,
its model file and dependencies, and why a version cannot be served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fraud_inference.consistency import DependencyPolicy, check_dependencies
from fraud_inference.models.artifact import (
    FEATURE_TYPES,
    DependencyMismatchError,
    FeatureSpec,
    ModelArtifact,
    UnservableModelError,
)
from fraud_inference.models.flavors import ModelFlavor, flavor_of
from fraud_inference.models.flavors.pyfunc import CUSTOM_LOADERS
from fraud_inference.models.trust import ModelTrust, UntrustedModelError
from fraud_inference.registry import ModelRef, Registry

if TYPE_CHECKING:
    from mlflow.models import Model

__all__ = ["SERVED_FLAVOURS", "fetch_artifact", "read_artifact"]


def read_artifact(
    ref: ModelRef,
    path: Path,
    *,
    dependency_policy: DependencyPolicy = "compatible",
    trust: ModelTrust = ModelTrust(),  # noqa: B008 - frozen, never mutated
) -> ModelArtifact:
    """Read the MLmodel file in `path`: the flavour, the signature's features, the model file, the dependencies.

    Raises `UnservableModelError` (or its `DependencyMismatchError`) when the version must not be served.
    Under `DEPENDENCY_CHECK=warn` mismatches are only recorded in `dependencies`. Runs no code of the model.
    """
    from mlflow.models import Model

    where = f"{ref.name} v{ref.version} (model {ref.key!r})"
    mlmodel = Model.load(str(path))
    # NOTE: the flavour first: a model of a library not served is told so, not asked for another signature.
    flavor = flavor_of(mlmodel.flavors)
    unserved = _unserved_flavours(mlmodel.flavors, flavor)
    if flavor is None or unserved:
        raise UnservableModelError(
            f"{where}: its flavour {' / '.join(unserved)} is not served (MLmodel lists {sorted(mlmodel.flavors)}); "
            f"this service serves {SERVED_FLAVOURS}"
        )
    signature = mlmodel.signature
    if signature is not None and signature.inputs is not None and signature.inputs.is_tensor_spec():
        raise UnservableModelError(
            f"{where}: its input signature is a tensor ({signature.inputs.to_json()}), which names no column; log it "
            "with a pandas DataFrame of the training features with their column names: "
            "signature=infer_signature(pd.DataFrame(X_train, columns=feature_names)) (infer_signature of a numpy "
            "array gives a tensor signature again)"
        )
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        raise UnservableModelError(
            f"{where} has no input signature with named columns: log it with "
            "mlflow.<flavor>.log_model(..., signature=infer_signature(X_train)) so requests can be checked and ordered"
        )
    features = []
    for column in signature.inputs.inputs:
        type_name = str(getattr(column.type, "name", column.type))
        if type_name not in FEATURE_TYPES:
            raise UnservableModelError(f"{where}: {_unserved_type(column.name, type_name)}")
        features.append(FeatureSpec(name=column.name, type=type_name, required=bool(column.required)))
    conf = mlmodel.flavors[flavor.name]
    dependencies = check_dependencies(path, flavor.packages, conf.get(flavor.version_key or ""), dependency_policy)
    try:
        model_file = flavor.model_file(conf, path, trust)
    except UntrustedModelError as error:
        raise UnservableModelError(f"{where}: {error}") from None
    input_example, input_example_unused = _input_example(mlmodel, path)
    artifact = ModelArtifact(
        ref=ref, path=str(path), flavor=flavor.name, features=tuple(features), model_file=model_file,
        dependencies=dependencies, input_example=input_example, input_example_unused=input_example_unused,
        pyfunc_predict_fn=str(mlmodel.flavors.get("python_function", {}).get("predict_fn", "predict")),
        pyfunc_params=tuple(param.name for param in (signature.params.params if signature.params else [])),
    )  # fmt: skip
    violations = artifact.dependency_violations()
    if violations and dependency_policy in {"strict", "compatible"}:
        raise DependencyMismatchError(artifact)
    return artifact


SERVED_FLAVOURS = (
    "xgboost, lightgbm, sklearn, and python_function for a custom mlflow.pyfunc.PythonModel (under PYFUNC=allow)"
)


def _unserved_flavours(flavors: dict[str, Any], flavor: ModelFlavor | None) -> list[str]:
    """The model's own flavours when none is served: all of them, or those beside a python_function that only
    wraps them (`loader_module: mlflow.onnx`, `mlflow.catboost`); empty when the model is served."""
    if flavor is None:
        return sorted(flavors)
    if flavor.name != "python_function" or flavors[flavor.name].get("loader_module") in CUSTOM_LOADERS:
        return []
    loader = str(flavors[flavor.name].get("loader_module"))
    return sorted(set(flavors) - {"python_function"}) or [f"python_function (loader {loader})"]


def _unserved_type(name: str, type_name: str) -> str:
    served = f"the served types are {', '.join(FEATURE_TYPES)}"
    if type_name == "datetime":
        # NOTE: not served as datetimes: how MLflow's schema enforcement turns a JSON string into a datetime64
        # (format, time zone, precision) would have to be reproduced exactly, and a tree model never sees a date.
        return (
            f"feature {name!r} has type 'datetime'; {served}. Send it as a number (epoch seconds: train and log the "
            "model on that column as a number), or as an ISO-8601 string (signature type string) that a custom "
            "mlflow.pyfunc.PythonModel converts with pd.to_datetime in its predict"
        )
    return f"feature {name!r} has type {type_name!r}; {served}"


_EXAMPLE_ROWS = 1_000


def _input_example(mlmodel: Model, path: Path) -> tuple[tuple[dict[str, Any], ...], str | None]:
    """The logged input example's rows as JSON records, or none and why (none logged, unreadable, not a table)."""
    if mlmodel.saved_input_example_info is None:
        return (), "no input example was logged"
    try:
        example: Any = mlmodel.load_input_example(str(path))
    except Exception as error:  # e.g. a null in a `long` column (pandas Int64 with NA): MLflow's cast fails
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        return (), f"MLflow cannot read the logged input example ({_clip(cause)})"
    try:
        records: list[dict[str, Any]] = json.loads(example.to_json(orient="records"))
    except Exception:
        return (), f"the logged input example is a {type(example).__name__}, not a table of named columns"
    if not records:
        return (), "the logged input example has no rows"
    return tuple(records[:_EXAMPLE_ROWS]), None


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fetch_artifact(
    registry: Registry,
    ref: ModelRef,
    downloads: Path,
    *,
    dependency_policy: DependencyPolicy,
    trust: ModelTrust = ModelTrust(),  # noqa: B008 - frozen, never mutated
    compiled_trees: Path | None = None,
) -> ModelArtifact:
    """Download the version under `downloads` (once, shared by every key served from it) and read it.

    With `compiled_trees` (a cache directory) its XGBoost or LightGBM trees are scored compiled where exact.
    """
    destination = registry.download_once(ref, downloads)
    model_dir = next((path.parent for path in destination.rglob("MLmodel")), destination)
    try:
        artifact = read_artifact(ref, model_dir, dependency_policy=dependency_policy, trust=trust)
    except UnservableModelError:
        raise
    except Exception as error:  # a malformed MLmodel: the version is unservable, not the registry down
        raise UnservableModelError(f"{ref.name} v{ref.version} (model {ref.key!r}): {error}") from error
    return artifact if compiled_trees is None else msgspec.structs.replace(artifact, compiled_trees=str(compiled_trees))
