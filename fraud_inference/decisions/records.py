"""The decision log's records: one Arrow row per scored row, its features typed by the version's signature.

The features are decoded again from the rows exactly as the protocol handed them to the core, by the service's
own `SignatureDecoder` (the code the workers run), so a logged value is the value the model received.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from fraud_inference.models.artifact import FeatureSpec, FeatureType
from fraud_inference.models.signature import SignatureDecoder
from fraud_inference.observers import ScoredRequest
from fraud_inference.pool.messages import Columns

__all__ = ["FEATURE_PREFIX", "DecisionRecords", "feature_column", "record_schema"]

FEATURE_PREFIX = "feature_"
"""Each feature's column is its name after this prefix: no feature name can collide with the record's own columns."""

_RECORD_FIELDS = (
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("row", pa.int32(), nullable=False),
    pa.field("protocol", pa.string(), nullable=False),
    pa.field("registered_name", pa.string(), nullable=False),
    pa.field("version", pa.string(), nullable=False),
    pa.field("generation", pa.int64(), nullable=False),
    pa.field("selected_by", pa.string(), nullable=False),
    pa.field("fraud_probability", pa.float64(), nullable=False),
    pa.field("threshold", pa.float64(), nullable=False),
    pa.field("is_fraud", pa.bool_(), nullable=False),
)
# NOTE: `float` is kept as float64: the fast path hands the model float64 and the frame path float32, and float64
# holds both exactly, so a replay gives the model the very number it received.
_ARROW_TYPES: dict[FeatureType, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float64(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
}
_NUMPY_TYPES: dict[FeatureType, Any] = {"long": np.int64, "integer": np.int32, "boolean": np.bool_}


def feature_column(name: str) -> str:
    """The column of feature `name` in the log."""
    return FEATURE_PREFIX + name


def record_schema(features: Sequence[FeatureSpec]) -> pa.Schema:
    """The columns of a version's records: time, request, model, probability, threshold, decision, then each
    feature (nullable: a missing value is null), typed by the signature."""
    return pa.schema([*_RECORD_FIELDS, *(pa.field(feature_column(f.name), _ARROW_TYPES[f.type]) for f in features)])


class DecisionRecords:
    """Turn scored requests of one model version into Arrow tables (`features`: False logs none)."""

    def __init__(self, model: str, features: Sequence[FeatureSpec], *, with_features: bool) -> None:
        self.features = tuple(features) if with_features else ()
        self.schema = record_schema(self.features)
        # The signature as stored: `float` decoded as `double` (the same checks), so the frame path keeps float64.
        stored = [FeatureSpec(f.name, "double" if f.type == "float" else f.type, f.required) for f in self.features]
        self._decoder = SignatureDecoder(model, stored, extra="ignore") if stored else None

    def table(self, request: ScoredRequest, time_us: int) -> pa.Table:
        """The records of `request`, answered at `time_us` (microseconds since the epoch, UTC)."""
        scored = request.scored
        ref = scored.ref
        count = len(scored.probabilities)
        columns: list[pa.Array] = [
            pa.array(np.full(count, time_us, dtype=np.int64), pa.timestamp("us", tz="UTC")),
            pa.array([request.request_id] * count, pa.string()),
            pa.array(np.arange(count, dtype=np.int32)),
            pa.array([request.protocol] * count, pa.string()),
            pa.array([ref.name] * count, pa.string()),
            pa.array([ref.version] * count, pa.string()),
            pa.array(np.full(count, scored.selection.generation.number, dtype=np.int64)),
            pa.array([ref.selected_by] * count, pa.string()),
            pa.array(scored.probabilities, pa.float64()),
            pa.array(np.full(count, ref.threshold, dtype=np.float64)),
            pa.array(scored.flagged),
        ]
        if self._decoder is not None:
            columns.extend(self._feature_arrays(request.rows, count))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _feature_arrays(self, rows: bytes | Columns, count: int) -> list[pa.Array]:
        assert self._decoder is not None
        decoder = self._decoder
        batch: Any = decoder.decode(rows) if isinstance(rows, bytes) else decoder.columns(rows.names, rows.values)
        if len(batch) != count:
            raise ValueError(f"{len(batch)} rows decoded for {count} probabilities")
        arrays = []
        for index, feature in enumerate(self.features):
            values = batch[feature.name].to_numpy() if hasattr(batch, "iloc") else batch[:, index]
            arrays.append(_typed(values, feature.type))
        return arrays


def _typed(values: Any, feature_type: FeatureType) -> pa.Array:
    """One decoded column as its signature's Arrow type; a missing value (NaN, None) is null."""
    if feature_type == "string":
        return pa.array(values, pa.string(), from_pandas=True)
    numbers = np.asarray(values, dtype=np.float64)
    missing = np.isnan(numbers)
    if feature_type in _NUMPY_TYPES:
        whole = np.where(missing, 0, numbers).astype(_NUMPY_TYPES[feature_type])
        return pa.array(whole, _ARROW_TYPES[feature_type], mask=missing if missing.any() else None)
    return pa.array(numbers, pa.float64(), mask=missing if missing.any() else None)
