"""One module per model library, behind one small interface (`ModelFlavor`): adding a library touches one file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fraud_inference.models.flavors import lightgbm, pyfunc, sklearn, xgboost
from fraud_inference.models.flavors._base import ModelFile, ModelFlavor, PackageRule, Scorer

__all__ = ["FLAVORS", "ModelFile", "ModelFlavor", "PackageRule", "Scorer", "flavor_named", "flavor_of"]

FLAVORS: tuple[ModelFlavor, ...] = (xgboost.FLAVOR, lightgbm.FLAVOR, sklearn.FLAVOR, pyfunc.FLAVOR)
"""In order of preference: a native flavour first; python_function only for a model that has no other."""


def flavor_of(flavors: Mapping[str, Any]) -> ModelFlavor | None:
    """The flavour that serves a model whose MLmodel lists `flavors`; None if none can."""
    return next((flavor for flavor in FLAVORS if flavor.name in flavors), None)


def flavor_named(name: str) -> ModelFlavor:
    return next(flavor for flavor in FLAVORS if flavor.name == name)
