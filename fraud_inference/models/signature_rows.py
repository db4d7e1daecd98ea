"""Rows built from a version's signature and its own model: what the parity gate scores when no input example can
be used.

They exercise what the model sees in traffic: each numeric column at values its own splits use (XGBoost and
LightGBM record their thresholds; a column no split uses, or a model that records none, gets 0), booleans both
ways, each training category of a categorical column and one never seen in training, and each optional column
left out. Deterministic, and at most `MAX_SIGNATURE_ROWS` rows whatever the model's width or categories.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fraud_inference.models.artifact import FeatureSpec

__all__ = ["MAX_SIGNATURE_ROWS", "UNSEEN_CATEGORY", "SignatureRows", "signature_rows"]

_SPLIT_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Where in a column's sorted split thresholds its values are taken: the lowest, the quartiles, the highest."""
_MAX_CATEGORIES = 32
"""Categories per column: more are taken evenly spaced in the training order."""
_MAX_LEFT_OUT_ROWS = 16
"""Rows with optional columns left out: more columns than that share rows (column i in row i mod 16)."""
_SENTINEL = 1e30
"""LightGBM writes +-1e300 for a split that only sends missing values one way: not a value traffic holds."""
MAX_SIGNATURE_ROWS = _MAX_CATEGORIES + 1 + _MAX_LEFT_OUT_ROWS + 1
UNSEEN_CATEGORY = "(a category never seen in training)"


class SignatureRows:
    """The rows, and what they cover in words (the gate's report says it)."""

    __slots__ = ("covers", "rows")

    def __init__(self, rows: list[dict[str, Any]], covers: str) -> None:
        self.rows = rows
        self.covers = covers


def signature_rows(
    features: Sequence[FeatureSpec],
    categories: Mapping[str, Sequence[Any]],
    thresholds: Mapping[str, Sequence[float]],
) -> SignatureRows:
    """Rows as a client sends them for `features`, on the model's training `categories` and split `thresholds`.

    Row j holds each column's value j (cycling through a column's values when it has fewer): numeric columns at
    their thresholds' quantiles (integer columns rounded down below the median, up from it), booleans False then
    True, categorical columns each training category then an unseen one. Then the first rows again, each with
    some optional columns left out (each optional column in one row, and all of them in a last row).
    """
    values = [
        _values(feature, categories.get(feature.name, ()), thresholds.get(feature.name, ())) for feature in features
    ]
    count = max((len(column) for column in values), default=1)
    rows = [
        {feature.name: column[index % len(column)] for feature, column in zip(features, values, strict=True)}
        for index in range(count)
    ]
    optional = [feature.name for feature in features if not feature.required]
    groups = [optional[start::_MAX_LEFT_OUT_ROWS] for start in range(min(len(optional), _MAX_LEFT_OUT_ROWS))]
    if len(optional) > 1:
        groups.append(optional)
    left_out = [
        {name: value for name, value in rows[index % count].items() if name not in group}
        for index, group in enumerate(groups)
    ]
    split = sum(1 for feature in features if feature.type not in {"string", "boolean"} and thresholds.get(feature.name))
    known = [name for name, known in categories.items() if known]
    covers = [f"{split} numeric columns at their split thresholds' quantiles" if split else "numeric columns at 0"]
    if known:
        covers.append(f"each training category of {', '.join(known)} and an unseen one")
    if optional:
        covers.append(f"each optional column left out ({len(optional)})")
    return SignatureRows(rows + left_out, "; ".join(covers))


def _values(feature: FeatureSpec, categories: Sequence[Any], thresholds: Sequence[float]) -> list[Any]:
    if feature.type == "string":
        if not categories:
            return [""]
        step = max(1, math.ceil(len(categories) / _MAX_CATEGORIES))
        return [str(category) for category in categories[::step]] + [_unseen(categories)]
    if feature.type == "boolean":
        return [False, True]
    usable = sorted({float(t) for t in thresholds if math.isfinite(t) and abs(t) < _SENTINEL})
    if not usable:
        return [0]
    picked: list[Any] = []
    for quantile in _SPLIT_QUANTILES:
        value = usable[round(quantile * (len(usable) - 1))]
        if feature.type in {"long", "integer"}:
            value = math.floor(value) if quantile < 0.5 else math.ceil(value)
        if value not in picked:
            picked.append(value)
    return picked


def _unseen(categories: Sequence[Any]) -> str:
    known = {str(category) for category in categories}
    unseen = UNSEEN_CATEGORY
    while unseen in known:
        unseen += "'"
    return unseen
