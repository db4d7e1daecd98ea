"""What a downloaded model version is: its flavour, its features in training order, where it lives."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from fraud_inference.consistency import DependencyCheck, DependencyPolicy, check_dependencies, describe_violations
from fraud_inference.models.trust import ModelTrust, SerializedEstimator, UntrustedModelError, inspect_estimator
from fraud_inference.registry import ModelRef, Registry

__all__ = [
    "FLAVORS",
    "DependencyMismatchError",
    "FeatureSpec",
    "ModelArtifact",
    "UnservableModelError",
    "fetch_artifact",
    "read_artifact",
]

Flavor = Literal["xgboost", "lightgbm", "sklearn"]
FLAVORS: tuple[Flavor, ...] = ("xgboost", "lightgbm", "sklearn")
FeatureType = Literal["double", "float", "long", "integer", "boolean"]
_NUMERIC_TYPES: dict[str, FeatureType] = {t: t for t in ("double", "float", "long", "integer", "boolean")}


class UnservableModelError(Exception):
    """The model version cannot be served as it is (no signature, unsupported flavour or feature type)."""


class FeatureSpec(msgspec.Struct, frozen=True):
    """One input column, as the model's MLflow signature records it."""

    name: str
    type: FeatureType


class ModelArtifact(msgspec.Struct, frozen=True, kw_only=True):
    """A version ready to load: the registry reference, its local directory, flavour and features."""

    ref: ModelRef
    path: str
    flavor: Flavor
    features: tuple[FeatureSpec, ...]
    dependencies: tuple[DependencyCheck, ...] = ()
    estimator: SerializedEstimator | None = None
    """The serialized estimator (scikit-learn API), checked against the service's trust rules."""

    def dependency_violations(self) -> list[str]:
        """One message per package whose installed version breaks the rule for this model."""
        return describe_violations(self.ref.key, self.ref.name, self.ref.version, self.dependencies)


class DependencyMismatchError(UnservableModelError):
    """Installed packages would score the model differently from training; the message lists each one."""

    def __init__(self, artifact: ModelArtifact) -> None:
        super().__init__("\n".join(artifact.dependency_violations()))
        self.artifact = artifact


def read_artifact(
    ref: ModelRef,
    path: Path,
    *,
    dependency_policy: DependencyPolicy = "compatible",
    trust: ModelTrust = ModelTrust(),  # noqa: B008 - frozen, never mutated
) -> ModelArtifact:
    """Read the MLmodel file in `path`: the native flavour, the signature's features, the dependency checks.

    Raises `UnservableModelError` (or its `DependencyMismatchError`) when the version must not be served.
    Under `DEPENDENCY_CHECK=warn` mismatches are only recorded in `dependencies`.
    """
    from mlflow.models import Model

    mlmodel = Model.load(str(path))
    flavor = next((name for name in FLAVORS if name in mlmodel.flavors), None)
    if flavor is None:
        raise UnservableModelError(
            f"{ref.name} v{ref.version} (model {ref.key!r}) has flavours {sorted(mlmodel.flavors)}; "
            f"this service serves {', '.join(FLAVORS)}"
        )
    signature = mlmodel.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        raise UnservableModelError(
            f"{ref.name} v{ref.version} (model {ref.key!r}) has no input signature with named columns: "
            "log it with mlflow.<flavor>.log_model(..., signature=infer_signature(X_train)) so requests "
            "can be checked and ordered"
        )
    features = []
    for column in signature.inputs.inputs:
        type_name = str(getattr(column.type, "name", column.type))
        if type_name not in _NUMERIC_TYPES:
            raise UnservableModelError(
                f"{ref.name} v{ref.version} (model {ref.key!r}): feature {column.name!r} has type "
                f"{type_name!r}; only numeric features ({', '.join(sorted(_NUMERIC_TYPES))}) are served"
            )
        features.append(FeatureSpec(name=column.name, type=_NUMERIC_TYPES[type_name]))
    dependencies = check_dependencies(path, flavor, mlmodel.flavors[flavor], dependency_policy)
    try:
        estimator = inspect_estimator(flavor, mlmodel.flavors[flavor], path, trust)
    except UntrustedModelError as error:
        raise UnservableModelError(f"{ref.name} v{ref.version} (model {ref.key!r}): {error}") from None
    artifact = ModelArtifact(
        ref=ref, path=str(path), flavor=flavor, features=tuple(features), dependencies=dependencies,
        estimator=estimator,
    )  # fmt: skip
    violations = artifact.dependency_violations()
    if violations and dependency_policy in {"strict", "compatible"}:
        raise DependencyMismatchError(artifact)
    return artifact


def fetch_artifact(
    registry: Registry,
    ref: ModelRef,
    downloads: Path,
    *,
    dependency_policy: DependencyPolicy,
    trust: ModelTrust = ModelTrust(),  # noqa: B008 - frozen, never mutated
) -> ModelArtifact:
    """Download the version under `downloads` (once, shared by every key served from it) and read it."""
    destination = registry.download_once(ref, downloads)
    model_dir = next((path.parent for path in destination.rglob("MLmodel")), destination)
    try:
        return read_artifact(ref, model_dir, dependency_policy=dependency_policy, trust=trust)
    except UnservableModelError:
        raise
    except Exception as error:  # a malformed MLmodel: the version is unservable, not the registry down
        raise UnservableModelError(f"{ref.name} v{ref.version} (model {ref.key!r}): {error}") from error
