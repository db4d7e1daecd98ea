"""The decision log's records: one Arrow row per scored row, its features typed by the version's signature.

The features are decoded again from the rows exactly as the protocol handed them to the core, by the service's
own `SignatureDecoder` (the code the workers run), so a logged value is the value the model received.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from fraud_inference.models.artifact import FeatureSpec, FeatureType
from fraud_inference.models.signature import SignatureDecoder
from fraud_inference.observers import ScoredRequest
from fraud_inference.pool.messages import FEATURES

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
Matrix = npt.NDArray[np.float64]
_NUMPY_TYPES: dict[FeatureType, Any] = {"long": np.int64, "integer": np.int32, "boolean": np.bool_}
_DECODE_ROWS = 1024
"""Rows decoded in one call at most: the decoder holds the GIL, which the event loop needs (~1 ms per call)."""


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

    def table(self, requests: Sequence[tuple[ScoredRequest, int]]) -> tuple[pa.Table | None, list[ScoredRequest]]:
        """The records of `requests` (each with the time it was answered, in microseconds since the epoch, UTC),
        and those whose rows could not be decoded again (left out).

        NOTE: built once per file, not per request: an Arrow array per column per request cost a 1-row request
        more CPU than serving it, in the HTTP process, whose GIL the event loop shares.
        """
        batches, failed = self._feature_batches([request for request, _time in requests])
        if failed:
            left_out = {id(request) for request in failed}
            kept = [(request, time_us) for request, time_us in requests if id(request) not in left_out]
            return (self.table(kept)[0] if kept else None), failed
        counts = np.array([len(request.scored.probabilities) for request, _time in requests], dtype=np.int64)
        refs = [request.scored.ref for request, _time in requests]
        probabilities = np.concatenate([request.scored.probabilities for request, _time in requests])
        thresholds = np.repeat(np.array([ref.threshold for ref in refs], dtype=np.float64), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        owner = pa.array(np.repeat(np.arange(len(requests)), counts))

        def each(values: list[str]) -> pa.Array:
            # NOTE: one string per request, repeated for its rows by Arrow's `take` in C: a Python string per row
            # cost a 100-row request ~4 us a row, the log's largest cost before writing.
            return pa.array(values, pa.string()).take(owner)

        columns: list[pa.Array] = [
            pa.array(np.repeat(np.array([t for _r, t in requests], dtype=np.int64), counts), _RECORD_FIELDS[0].type),
            pa.array(each([request.request_id for request, _time in requests]), pa.string()),
            pa.array((np.arange(len(probabilities)) - starts).astype(np.int32)),
            pa.array(each([request.protocol for request, _time in requests]), pa.string()),
            pa.array(each([ref.name for ref in refs]), pa.string()),
            pa.array(each([ref.version for ref in refs]), pa.string()),
            pa.array(np.repeat([r.scored.selection.generation.number for r, _time in requests], counts), pa.int64()),
            pa.array(each([ref.selected_by for ref in refs]), pa.string()),
            pa.array(probabilities, pa.float64()),
            pa.array(thresholds),
            pa.array(probabilities >= thresholds),  # `ScoredRows.flagged`: the decision each client got
        ]
        if self._decoder is not None:
            features = self._decoder.stack(batches)
            if len(features) != len(probabilities):
                raise ValueError(f"{len(features)} rows decoded for {len(probabilities)} probabilities")
            columns.extend(self._feature_arrays(features))
        return pa.Table.from_arrays(columns, schema=self.schema), []

    def _feature_batches(self, requests: Sequence[ScoredRequest]) -> tuple[list[Any], list[ScoredRequest]]:
        """The decoded features of `requests`, in order: each run of requests sent as JSON rows decoded as one
        array, each request sent as columns on its own. A run that fails is decoded request by request, so only
        the requests that fail themselves are left out (returned)."""
        if self._decoder is None:
            return [], []
        batches: list[Any] = []
        failed: list[ScoredRequest] = []
        run: list[ScoredRequest] = []
        rows = 0
        for request in requests:
            matrix = self._as_served(request)
            if matrix is not None:
                self._decode_run(run, batches, failed)
                batches.append(matrix)
                continue
            if not isinstance(request.rows, bytes):
                self._decode_run(run, batches, failed)
                self._decode_alone(request, batches, failed)
                continue
            run.append(request)
            rows = (rows if len(run) > 1 else 0) + len(request.scored.probabilities)
            if rows >= _DECODE_ROWS:
                self._decode_run(run, batches, failed)
        self._decode_run(run, batches, failed)
        return batches, failed

    def _as_served(self, request: ScoredRequest) -> Matrix | None:
        """The rows the worker handed the model (`FEATURES`: its float64 matrix), None when it sent none (a model
        scored from a DataFrame, or the log started without features): those are decoded here again."""
        served = request.scored.outputs.get(FEATURES)
        if not served:
            return None
        matrix = np.frombuffer(served, dtype=np.float64).reshape(-1, len(self.features))
        if len(matrix) != len(request.scored.probabilities):
            raise ValueError(f"{len(matrix)} rows served for {len(request.scored.probabilities)} probabilities")
        return matrix

    def _decode_run(self, run: list[ScoredRequest], batches: list[Any], failed: list[ScoredRequest]) -> None:
        """Decode the JSON rows of the requests in `run` as one array (emptying `run`)."""
        assert self._decoder is not None
        if not run:
            return
        try:
            batches.append(self._decoder.decode(_joined([r.rows for r in run if isinstance(r.rows, bytes)])))
        except Exception:
            for single in run:
                self._decode_alone(single, batches, failed)
        run.clear()

    def _decode_alone(self, request: ScoredRequest, batches: list[Any], failed: list[ScoredRequest]) -> None:
        assert self._decoder is not None
        rows = request.rows
        try:
            decoder = self._decoder
            batch = decoder.decode(rows) if isinstance(rows, bytes) else decoder.columns(rows.names, rows.values)
            if len(batch) != len(request.scored.probabilities):
                raise ValueError(f"{len(batch)} rows decoded for {len(request.scored.probabilities)} probabilities")
        except Exception:
            failed.append(request)
            return
        batches.append(batch)

    def _feature_arrays(self, batch: Any) -> list[pa.Array]:
        arrays = []
        for index, feature in enumerate(self.features):
            values = batch[feature.name].to_numpy() if hasattr(batch, "iloc") else batch[:, index]
            arrays.append(_typed(values, feature.type))
        return arrays


def _joined(bodies: Sequence[bytes]) -> bytes:
    """JSON arrays of row objects as one array of all their rows, in order."""
    if len(bodies) == 1:
        return bodies[0]
    return b"[" + b",".join(body.strip()[1:-1] for body in bodies) + b"]"


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
