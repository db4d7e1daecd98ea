"""Which serialized estimators may be loaded: skops files with only trusted types, pickles only when allowed.

MLflow's own loaders take skops's trust list from the model's MLmodel file, so a crafted model can trust any
type (mlflow/sklearn/__init__.py, `_load_model_from_local_file`). Here the list is the service's: the types
its flavours need, plus `SKOPS_TRUSTED_TYPES`; the file's types are read without running any of its code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = [
    "BUILTIN_TRUSTED_TYPES",
    "ModelTrust",
    "SerializedEstimator",
    "UntrustedModelError",
    "inspect_estimator",
    "load_skops",
]

PicklePolicy = Literal["allow", "refuse"]

BUILTIN_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        # A HistGradientBoostingClassifier's trees; skops trusts the rest of scikit-learn by itself.
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        # An LGBMClassifier: MLflow's own list for LightGBM's scikit-learn API.
        "collections.OrderedDict",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
    }
)
"""What skops does not trust by itself in the estimators this service scores."""

# The MLmodel key naming the serialized file, per flavour (LightGBM's native boosters have no format: not pickled).
_FILE_KEY = {"sklearn": "pickled_model", "lightgbm": "data"}


class UntrustedModelError(Exception):
    """The version's serialized estimator may not be loaded; the message says why and how to fix it."""


class ModelTrust(msgspec.Struct, frozen=True, kw_only=True):
    """The service's rules: `SKLEARN_PICKLE` and the extra `SKOPS_TRUSTED_TYPES`."""

    pickle: PicklePolicy = "refuse"
    extra_types: tuple[str, ...] = ()

    def trusted(self) -> frozenset[str]:
        return BUILTIN_TRUSTED_TYPES | frozenset(self.extra_types)


class SerializedEstimator(msgspec.Struct, frozen=True, kw_only=True):
    """A version's estimator file (relative to its model directory), its format, and the skops types it needs."""

    file: str
    serialization_format: str
    skops_types: tuple[str, ...] = ()


def inspect_estimator(
    flavor: str, flavor_conf: dict[str, Any], model_dir: Path, trust: ModelTrust
) -> SerializedEstimator | None:
    """Check the version's serialized estimator against `trust`; None when the flavour pickles nothing.

    Raises `UntrustedModelError` for a pickle under `SKLEARN_PICKLE=refuse`, or a skops file holding a type
    that is not trusted.
    """
    key = _FILE_KEY.get(flavor)
    if key is None or (flavor == "lightgbm" and "serialization_format" not in flavor_conf):
        return None
    file = str(flavor_conf[key])
    serialization_format = str(flavor_conf.get("serialization_format", "pickle"))
    if serialization_format != "skops":
        if trust.pickle == "refuse":
            raise UntrustedModelError(
                f"the model is saved as {serialization_format}, and loading a pickle runs whatever code it holds: "
                "log it again with serialization_format='skops', or set SKLEARN_PICKLE=allow if only trusted "
                "people can write to the registry"
            )
        return SerializedEstimator(file=file, serialization_format=serialization_format)
    import skops.io

    needed = sorted(skops.io.get_untrusted_types(file=model_dir / file))
    untrusted = [name for name in needed if name not in trust.trusted()]
    if untrusted:
        raise UntrustedModelError(
            f"its skops file holds types this service does not trust: {', '.join(untrusted)}; if they are safe, "
            "add them to SKOPS_TRUSTED_TYPES (comma-separated)"
        )
    return SerializedEstimator(file=file, serialization_format="skops", skops_types=tuple(needed))


def load_skops(model_dir: Path, estimator: SerializedEstimator) -> Any:
    """Load the skops file in `model_dir` trusting exactly the types `inspect_estimator` checked."""
    import skops.io

    return skops.io.load(model_dir / estimator.file, trusted=list(estimator.skops_types))
