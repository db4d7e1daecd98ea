"""What a downloaded model version is: its flavour, its features in training order, the file it loads from.

Data only: reading a version's MLmodel into one is `models/reading.py`, which knows the flavours.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fraud_inference.consistency import DependencyCheck, describe_violations
from fraud_inference.registry import ModelRef

__all__ = [
    "FEATURE_TYPES",
    "DependencyMismatchError",
    "FeatureSpec",
    "FileFormat",
    "ModelArtifact",
    "ModelFile",
    "UnservableModelError",
]

FeatureType = Literal["double", "float", "long", "integer", "boolean", "string"]
FEATURE_TYPES: tuple[FeatureType, ...] = ("double", "float", "long", "integer", "boolean", "string")


FileFormat = Literal["native", "skops", "pickle", "cloudpickle", "pyfunc"]


class ModelFile(msgspec.Struct, frozen=True, kw_only=True):
    """The file a version loads from, decided from the MLmodel keys MLflow's own flavour loader reads.

    `format` is `native` for a library's own model file (never unpickled), `skops` for a skops file loaded
    trusting exactly `skops_types`, `pickle` / `cloudpickle` only under SKLEARN_PICKLE=allow, and `pyfunc`
    for a custom python_function model only under PYFUNC=allow.
    """

    file: str
    format: FileFormat
    model_class: str | None = None
    skops_types: tuple[str, ...] = ()
    objective: str | None = None
    """LightGBM, from a file whose trees were checked (native, skops): its `objective` line (`binary sigmoid:1`),
    which says what space its raw scores, and so its contributions, are in. None: not read (not explained)."""
    linear_trees: bool = False
    """LightGBM, from a checked file: some tree has linear leaves (LightGBM computes no contributions for them)."""


class UnservableModelError(Exception):
    """The model version cannot be served as it is (no signature, unsupported flavour or feature type)."""


class FeatureSpec(msgspec.Struct, frozen=True):
    """One input column, as the model's MLflow signature records it.

    `required: False` (MLflow >= 2.4 infers it for a column with missing values) lets a request leave it out.
    """

    name: str
    type: FeatureType
    required: bool = True


class ModelArtifact(msgspec.Struct, frozen=True, kw_only=True):
    """A version ready to load: the registry reference, its local directory, flavour, features and model file."""

    ref: ModelRef
    path: str
    flavor: str
    features: tuple[FeatureSpec, ...]
    model_file: ModelFile
    """Which file loads, in which format, decided from the MLmodel keys MLflow's own loader reads."""
    dependencies: tuple[DependencyCheck, ...] = ()
    input_example: tuple[dict[str, Any], ...] = ()
    """The logged input example's rows as JSON records (at most 1,000), read here so that the workers, which
    warm up on it, never import MLflow (~190 MiB each)."""
    input_example_unused: str | None = None
    """Why there are no `input_example` rows (none logged, or MLflow cannot read it); None when there are."""

    pyfunc_predict_fn: str = "predict"
    """The method MLflow's pyfunc wrapper of the version calls (MLmodel `python_function.predict_fn`: what a
    scikit-learn model was logged with as `pyfunc_predict_fn`); what `/invocations` answers."""
    pyfunc_params: tuple[str, ...] = ()
    """The params the version's signature declares (a params schema): MLflow passes them to a custom model's
    `predict`, which this service calls without them."""
    compiled_trees: str | None = None
    """COMPILED_TREES=on: the directory caching compiled trees, where XGBoost and LightGBM versions compile; None
    scores every version through its library."""

    def dependency_violations(self) -> list[str]:
        """One message per package whose installed version breaks the rule for this model."""
        return describe_violations(self.ref.key, self.ref.name, self.ref.version, self.dependencies)


class DependencyMismatchError(UnservableModelError):
    """Installed packages would score the model differently from training; the message lists each one."""

    def __init__(self, artifact: ModelArtifact) -> None:
        super().__init__("\n".join(artifact.dependency_violations()))
        self.artifact = artifact
