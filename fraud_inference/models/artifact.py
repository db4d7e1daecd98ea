"""What a downloaded model version is: its flavour, its features in training order, where it lives."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from fraud_inference.registry import ModelRef

__all__ = ["FLAVORS", "FeatureSpec", "ModelArtifact", "UnservableModelError", "read_artifact"]

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


def read_artifact(ref: ModelRef, path: Path) -> ModelArtifact:
    """Read the MLmodel file in `path`: pick the native flavour and the signature's features."""
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
    return ModelArtifact(ref=ref, path=str(path), flavor=flavor, features=tuple(features))
