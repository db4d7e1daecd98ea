"""Load a model version through its flavour and prepare it to score request rows (runs in workers and the gate)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import FeatureSpec, ModelArtifact
from fraud_inference.models.flavors import Scorer, flavor_named
from fraud_inference.models.flavors._base import RecordsSplits
from fraud_inference.models.signature import ExtraFeatures, SignatureDecoder
from fraud_inference.models.signature_errors import ErrorDetail
from fraud_inference.reasons.codes import reason_codes

__all__ = ["ServedModel", "example_rows", "load_model", "load_scorer"]

Matrix = npt.NDArray[np.float64]

# Rows reach numeric models as arrays in signature order, checked against the model's own feature names at
# load time; the per-call warning about missing names would only be noise.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


class ServedModel:
    """A loaded model and the decoder that turns request rows into its batch."""

    __slots__ = ("decoder", "scorer")

    def __init__(self, scorer: Scorer, decoder: SignatureDecoder) -> None:
        self.scorer = scorer
        self.decoder = decoder

    def score(self, instances: bytes) -> Matrix:
        """The fraud probability of each row of `instances` (raw JSON); `InstancesError` if they do not fit."""
        return self.scorer.fraud_probability(self.decoder.decode(instances))


def load_scorer(artifact: ModelArtifact) -> Scorer:
    """Load the version with its flavour's rules (the file and format decided when it was fetched).

    Under COMPILED_TREES=on (`artifact.compiled_trees`) XGBoost and LightGBM trees score compiled, where exact.
    """
    scorer = flavor_named(artifact.flavor).load(artifact)
    if artifact.compiled_trees is None:
        return scorer
    from fraud_inference.models.compiled import compile_trees

    return compile_trees(artifact, scorer, Path(artifact.compiled_trees))


def load_model(
    artifact: ModelArtifact, *, detail: ErrorDetail = "full", extra: ExtraFeatures = "reject"
) -> ServedModel:
    """Load the version, warm it up on one row, and learn which columns it cannot score missing.

    A model that is not known to take NaN everywhere (scikit-learn estimators, custom models) scores one row
    with each column missing in turn; a column whose missing value fails is refused in requests (422 naming the
    row and feature) rather than failing the batch its request shares.
    """
    ref = artifact.ref
    # A mapping naming a feature the signature lacks refuses the version here, where every load passes.
    reason_codes(ref.reason_codes, tuple(f.name for f in artifact.features), f"{ref.name} v{ref.version}")
    scorer = load_scorer(artifact)
    key = artifact.ref.key

    def decoder(refuse_missing: Sequence[str] = ()) -> SignatureDecoder:
        return SignatureDecoder(
            key, artifact.features, detail=detail, extra=extra, frame=scorer.needs_frame,
            categories=scorer.categories, refuse_missing=refuse_missing,
        )  # fmt: skip

    served = ServedModel(scorer, decoder())
    row = _warm_up_row(artifact, scorer)
    warm = served.score(json.dumps([row]).encode())
    if warm.shape != (1,) or not (np.isfinite(warm).all() and 0.0 <= warm[0] <= 1.0):
        raise ValueError(f"warm-up scoring gave {warm!r}, not one probability")
    if scorer.takes_missing:
        return served
    refused = [feature.name for feature in artifact.features if not _scores_missing(served, row, feature.name)]
    return ServedModel(scorer, decoder(refused)) if refused else served


def _scores_missing(served: ServedModel, row: dict[str, Any], name: str) -> bool:
    try:
        probability = served.score(json.dumps([{**row, name: None}]).encode())
    except Exception:
        return False
    return bool(np.isfinite(probability).all())


def example_rows(artifact: ModelArtifact, scorer: Scorer) -> tuple[list[dict[str, Any]], str | None]:
    """The logged input example's rows as a client sends them (null for missing), and None; else rows built from
    the signature and the model's own splits and categories (`signature_rows`), and what they cover."""
    from fraud_inference.models.signature_rows import signature_rows

    records = _input_example(artifact)
    names = [feature.name for feature in artifact.features]
    if records:
        return [{name: record.get(name) for name in names if name in record} for record in records], None
    thresholds = scorer.split_thresholds() if isinstance(scorer, RecordsSplits) else {}
    built = signature_rows(artifact.features, scorer.categories, thresholds)
    return built.rows, built.covers


def _warm_up_row(artifact: ModelArtifact, scorer: Scorer) -> dict[str, Any]:
    """A complete row: the logged input example's first complete row, its gaps (or its absence) filled with zeros
    and known categories."""
    records = _input_example(artifact)
    names = [feature.name for feature in artifact.features]
    record = next((r for r in records if all(r.get(name) is not None for name in names)), records[0] if records else {})
    return {
        feature.name: record[feature.name] if record.get(feature.name) is not None else _placeholder(feature, scorer)
        for feature in artifact.features
    }


def _input_example(artifact: ModelArtifact) -> list[dict[str, Any]]:
    return list(artifact.input_example)


def _placeholder(feature: FeatureSpec, scorer: Scorer) -> Any:
    if feature.type == "string":
        known = scorer.categories.get(feature.name)
        return str(known[0]) if known else ""
    return False if feature.type == "boolean" else 0
