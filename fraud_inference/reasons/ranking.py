"""The reasons of each row: the features that pushed its score furthest towards fraud, in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.reasons.codes import ReasonCode
from fraud_inference.reasons.wire import Explained, Value

__all__ = ["Reason", "RowReasons", "top_reasons"]


class Reason(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One feature's part in a row's score: its value as the model received it (null: missing) and its contribution
    to the margin (log-odds for binary:logistic); its reason code and text when the version maps the feature."""

    feature: str
    value: Value
    contribution: float
    code: str | None = None
    text: str | None = None


class RowReasons(msgspec.Struct, frozen=True):
    """One row's base value (the model's margin before any feature) and its top reasons, largest first."""

    base_value: float
    reasons: list[Reason]


def top_reasons(
    explained: Explained, features: Sequence[FeatureSpec], k: int, codes: Mapping[str, ReasonCode]
) -> list[RowReasons]:
    """Per row, the `k` features with the largest contributions towards fraud (ties: signature order).

    The `k` largest, whatever their sign: a row whose features all pushed it away from fraud still gets `k`
    reasons, with negative contributions, so the answer has the same shape for every row.
    """
    contributions = explained.matrix()
    if contributions.shape[1] != len(features) + 1:
        raise ValueError(f"{contributions.shape[1] - 1} contributions per row for {len(features)} features")
    # NOTE: a stable sort of the negated contributions: equal ones keep signature order, so answers are repeatable.
    order = np.argsort(-contributions[:, :-1], axis=1, kind="stable")[:, :k]
    answers = []
    for row, (values, ranked) in enumerate(zip(explained.values, order.tolist(), strict=True)):
        reasons = []
        for index in ranked:
            feature = features[index]
            mapped = codes.get(feature.name)
            reasons.append(
                Reason(
                    feature=feature.name,
                    value=_typed(values[index], feature.type),
                    contribution=float(contributions[row, index]),
                    code=None if mapped is None else mapped.code,
                    text=None if mapped is None else mapped.text,
                )
            )
        answers.append(RowReasons(base_value=float(contributions[row, -1]), reasons=reasons))
    return answers


def _typed(value: Value, kind: str) -> Value:
    """A value of the float64 fast path as its signature type: `3` for a long, `true` for a boolean."""
    if isinstance(value, float) and kind in {"long", "integer"} and value.is_integer():
        return int(value)
    if isinstance(value, float) and kind == "boolean":
        return bool(value)
    return value
