"""Check request rows against a model's signature and build its batch: a float64 matrix, or a typed DataFrame.

The values' checks live in `signature_checks`, the DataFrame path in `signature_frame`, and the refusal
(`InstancesError`, its message) in `signature_errors`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature_checks import ValueChecks
from fraud_inference.models.signature_errors import (
    ErrorDetail,
    InstancesError,
    clip_names,
    first_infinity,
    infinity_problem,
)
from fraud_inference.models.signature_frame import FrameBuilder

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ExtraFeatures", "SignatureDecoder"]

# Integers beyond 2**53 cannot reach the model exactly as float64; refuse them rather than round silently.
# Decoded as float so that `3.0` (what many clients write for an integer) is accepted; fractions are refused
# after decoding, naming the row and feature.
_SafeInt = Annotated[float, msgspec.Meta(gt=-(2**53), lt=2**53)]
_BEYOND_SAFE_INT = frozenset({f"Expected `float` < {2.0**53}", f"Expected `float` > {-(2.0**53)}"})
_PYTHON_TYPES: dict[str, Any] = {
    "double": float,
    "float": float,
    "long": _SafeInt,
    "integer": _SafeInt,
    "boolean": bool,
    "string": str,
}
_PATH = re.compile(r"`\$\[(\d+)\](?:\.([^`]*))?`")
ExtraFeatures = Literal["reject", "ignore"]
Matrix = npt.NDArray[np.float64]


class SignatureDecoder:
    """Decode a JSON array of row objects straight into the model's batch, in the signature's column order.

    Each model gets its own msgspec row type, so names and types are checked in C while decoding and an
    error names exactly the row index and the feature. `null` is a missing value (NaN) in any column, and an
    optional column (`required: false` in the signature) may be left out. The batch is one C-contiguous
    float64 matrix (the fast path), or with `frame` a DataFrame with MLflow's dtypes, whose categorical
    columns are built on the model's training `categories` (a value never seen in training is missing).
    """

    def __init__(
        self,
        model: str,
        features: Sequence[FeatureSpec],
        *,
        detail: ErrorDetail = "full",
        extra: ExtraFeatures = "reject",
        frame: bool = False,
        categories: Mapping[str, Sequence[Any]] | None = None,
        refuse_missing: Sequence[str] = (),
    ) -> None:
        self.features = tuple(features)
        self.frame = frame or any(spec.type == "string" for spec in self.features)
        self._detail = detail
        fields = [
            (f"f{i}", _PYTHON_TYPES[spec.type] | None)
            if spec.required
            else (f"f{i}", _PYTHON_TYPES[spec.type] | None, None)
            for i, spec in enumerate(self.features)
        ]
        row_type = msgspec.defstruct(
            f"Row_{model}",
            fields,
            rename={f"f{i}": spec.name for i, spec in enumerate(self.features)},
            forbid_unknown_fields=extra == "reject",
            kw_only=True,
            gc=False,
        )
        self._decode = msgspec.json.Decoder(list[row_type]).decode  # type: ignore[valid-type]
        # One typed msgpack decoder per feature, for a request sent as columns: the same types as a row's fields.
        self._column_decoders = [
            msgspec.msgpack.Decoder(list[_PYTHON_TYPES[spec.type] | None]).decode  # type: ignore[valid-type,name-defined]
            for spec in self.features
        ]
        self._positions = {spec.name: i for i, spec in enumerate(self.features)}
        self._extra = extra
        self._astuple = msgspec.structs.astuple
        self._width = len(self.features)
        self._checks = ValueChecks(self.features, detail=detail, refuse_missing=refuse_missing)
        # Which positions of the checked matrix hold integer columns, and columns that may not miss a value:
        # on the fast path the matrix holds every column, in a frame only the numeric ones.
        self._all_columns = list(range(self._width))
        self._matrix_checks = self._checks.checks_for(self._all_columns)
        self._frames = FrameBuilder(self.features, checks=self._checks, categories=categories)

    def decode(self, instances: bytes) -> Matrix | pd.DataFrame:
        """The batch for the raw JSON array `instances`: the matrix, or with `frame` the DataFrame."""
        return self.dataframe(instances) if self.frame else self.matrix(instances)

    def matrix(self, instances: bytes) -> Matrix:
        """Decode `instances` (the raw JSON array) into a C-contiguous (rows, features) float64 matrix."""
        return self.stacked([self.rows(instances)])

    def stacked(self, requests: Sequence[list[Any]]) -> Matrix:
        """One C-contiguous (rows, features) float64 matrix of the `rows` of several requests, in order, its numbers
        checked in one pass (infinities, fractions in integer columns, missing values the model cannot take).

        `InstancesError` names a row of the whole stack: a caller that must refuse each request in its own words
        decodes them one by one (`matrix`) when this fails. One request's `stacked` is its `matrix`.
        """
        rows = requests[0] if len(requests) == 1 else list(chain.from_iterable(requests))
        # One pass of C-level iteration into a preallocated float64 buffer: ~25% faster than np.array of tuples.
        values = chain.from_iterable(map(self._astuple, rows))
        try:
            matrix = np.fromiter(values, dtype=np.float64, count=len(rows) * self._width)
            matrix = matrix.reshape(len(rows), self._width)
        except TypeError:  # a null or a left-out optional column (None): np.array makes it NaN
            matrix = np.array(list(map(self._astuple, rows)), dtype=np.float64).reshape(len(rows), self._width)
        self._checks.check_numbers(matrix, self._all_columns, self._matrix_checks)
        return matrix

    def dataframe(self, instances: bytes) -> pd.DataFrame:
        """Decode `instances` into a DataFrame with MLflow's dtypes, categorical columns on training categories."""
        rows = self.rows(instances)
        return self._frames.frame(list(zip(*map(self._astuple, rows), strict=True)), len(rows))

    def columns(self, names: Sequence[str], values: Sequence[bytes]) -> Matrix | pd.DataFrame:
        """The batch for one request sent as columns: `values[i]` is column `names[i]`, a msgpack array of one
        value per row (None: missing), each name once. The same checks, refusals and numbers as `decode` of
        the same rows, without building them: each column is decoded by its feature's type in C.
        """
        unknown = self._extra == "reject" and any(name not in self._positions for name in names)
        given = dict(zip(names, values, strict=True))
        if unknown or any(spec.required and spec.name not in given for spec in self.features):
            return self._as_rows(names, values)
        decoded: list[list[Any] | None] = []
        try:
            for spec, decode in zip(self.features, self._column_decoders, strict=True):
                value = given.get(spec.name)
                decoded.append(None if value is None else decode(value))
        except msgspec.ValidationError:
            return self._as_rows(names, values)
        counts = {len(column) for column in decoded if column is not None}
        if len(counts) != 1:
            raise InstancesError("columns of different lengths: send one value per row in every column")
        (count,) = counts
        if not count:
            raise InstancesError("is empty: send at least one row")
        columns = [[None] * count if column is None else column for column in decoded]
        if self.frame:
            return self._frames.frame(columns, count, columnar=True)
        matrix = np.array(columns, dtype=np.float64).T.copy()
        self._checks.check_numbers(matrix, self._all_columns, self._matrix_checks, columnar=True)
        return matrix

    def _as_rows(self, names: Sequence[str], values: Sequence[bytes]) -> Matrix | pd.DataFrame:
        """The batch of columns that do not decode as columns (a problem, or NaN in an integer or boolean
        column), taken as the same rows: refused exactly as rows are (the first problem in row order), else
        decoded as rows. Only on this rare path are row objects built.
        """
        columns = [msgspec.msgpack.decode(value) for value in values]
        rows = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        infinity = first_infinity(rows)
        if infinity is not None:  # JSON has none: the rows would carry it as null, a missing value
            row, name, value = infinity
            raise InstancesError(infinity_problem(value), row=row, feature=None if self._detail == "generic" else name)
        return self.decode(msgspec.json.encode(rows))

    def stack(self, batches: Sequence[Any]) -> Any:
        """One batch of the rows of several requests: the matrices stacked, or the DataFrames concatenated."""
        if len(batches) == 1:
            return batches[0]
        if not self.frame:
            return np.concatenate(batches)
        return self._frames.stack(batches)

    def rows(self, instances: bytes) -> list[Any]:
        """The row objects of `instances` (the raw JSON array), their names and types checked while decoding:
        `InstancesError` names the row and the feature. `stacked` turns them into the matrix."""
        try:
            rows: list[Any] = self._decode(instances)
        except msgspec.ValidationError as error:
            if self._detail == "generic":
                raise _generic(str(error)) from None
            raise _describe(str(error), self.features) from None
        except (msgspec.DecodeError, RecursionError):
            raise InstancesError("not a JSON array of row objects, or nested too deeply") from None
        if not rows:
            raise InstancesError("is empty: send at least one row")
        return rows


def _generic(message: str) -> InstancesError:
    """The row of the error only, for ERROR_DETAIL=generic: no feature name goes back to the caller."""
    match = _PATH.search(message)
    return InstancesError("does not match the model's signature", row=int(match.group(1)) if match else None)


def _describe(message: str, features: Sequence[FeatureSpec]) -> InstancesError:
    """Turn msgspec's `... - at `$[3].amount`` into the problem at row 3, feature `amount`, with a hint."""
    text, _, _where = clip_names(message).partition(" - at ")
    text = text.replace(" | null`", "`")  # null is always accepted (a missing value): the type is what failed
    if text == "Number out of range":
        text = "value is not a finite number (out of float64 range)"
    elif text in _BEYOND_SAFE_INT:
        # `_SafeInt`'s bound in msgspec's words ("Expected `float` < 9007199254740992.0"), said of an integer.
        text = "integer at or beyond +-2**53 (9007199254740992): a float64 batch cannot hold it exactly"
    match = _PATH.search(message)
    if match is None:
        return InstancesError(text)
    row, feature = int(match.group(1)), match.group(2)
    if feature:
        expected = next((spec.type for spec in features if spec.name == feature), "number")
        return InstancesError(f"{text} (the model expects type {expected})", row=row, feature=feature)
    if "missing required field" in text or "unknown field" in text:
        names = ", ".join(spec.name for spec in features)
        return InstancesError(f"{text}; the model's features are: {names}", row=row)
    return InstancesError(text, row=row)
