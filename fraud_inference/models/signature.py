"""Check request rows against a model's signature and build the feature matrix in training order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import FeatureSpec

__all__ = ["ErrorDetail", "InstancesError", "SignatureDecoder", "clip_names", "instances_message"]

# Integers beyond 2**53 cannot reach the model exactly as float64; refuse them rather than round silently.
# Decoded as float so that `3.0` (what many clients write for an integer) is accepted; fractions are refused
# after decoding, naming the row and feature.
_SafeInt = Annotated[float, msgspec.Meta(gt=-(2**53), lt=2**53)]
_INTEGER_TYPES = frozenset({"long", "integer"})
_PYTHON_TYPES: dict[str, Any] = {
    "double": float,
    "float": float,
    "long": _SafeInt,
    "integer": _SafeInt,
    "boolean": bool,
}
_PATH = re.compile(r"`\$\[(\d+)\](?:\.([^`]*))?`")
_QUOTED = re.compile(r"`([^`]*)`")
ErrorDetail = Literal["full", "generic"]


def instances_message(problem: str, *, row: int | None = None, feature: str | None = None) -> str:
    """`instances[3].amount: <problem>`: where in a body of row objects the problem is, then what it is."""
    where = "instances" + ("" if row is None else f"[{row}]") + ("" if feature is None else f".{feature}")
    return f"{where} {problem}" if problem.startswith("is ") else f"{where}: {problem}"


class InstancesError(ValueError):
    """The rows do not match the model's signature: `problem` says what, at `row` (index) and `feature`.

    `str()` is the whole message, e.g. `instances[3].amount: Expected `float`, got `str``; `row` and `feature`
    are None when the problem is not in one row (or not in one feature), and `feature` is always None under
    ERROR_DETAIL=generic.
    """

    def __init__(self, problem: str, *, row: int | None = None, feature: str | None = None) -> None:
        super().__init__(instances_message(problem, row=row, feature=feature))
        self.problem = problem
        self.row = row
        self.feature = feature


class SignatureDecoder:
    """Decode a JSON array of row objects straight into a float64 matrix in the signature's column order.

    Each model gets its own msgspec row type, so names and types are checked in C while decoding and an
    error names exactly the row index and the feature.
    """

    def __init__(self, model: str, features: Sequence[FeatureSpec], *, detail: ErrorDetail = "full") -> None:
        self.features = tuple(features)
        self._detail = detail
        fields = [(f"f{i}", _PYTHON_TYPES[spec.type]) for i, spec in enumerate(self.features)]
        row_type = msgspec.defstruct(
            f"Row_{model}",
            fields,
            rename={f"f{i}": spec.name for i, spec in enumerate(self.features)},
            forbid_unknown_fields=True,
            array_like=False,
            gc=False,
        )
        self._decode = msgspec.json.Decoder(list[row_type]).decode  # type: ignore[valid-type]
        self._astuple = msgspec.structs.astuple
        self._width = len(self.features)
        self._integer_columns = [i for i, spec in enumerate(self.features) if spec.type in _INTEGER_TYPES]

    def matrix(self, instances: bytes) -> npt.NDArray[np.float64]:
        """Decode `instances` (the raw JSON array) into a C-contiguous (rows, features) float64 matrix."""
        try:
            rows = self._decode(instances)
        except msgspec.ValidationError as error:
            if self._detail == "generic":
                raise _generic(str(error)) from None
            raise _describe(str(error), self.features) from None
        except (msgspec.DecodeError, RecursionError):
            raise InstancesError("not a JSON array of row objects, or nested too deeply") from None
        if not rows:
            raise InstancesError("is empty: send at least one row")
        # One pass of C-level iteration into a preallocated float64 buffer: ~25% faster than np.array of tuples.
        values = chain.from_iterable(map(self._astuple, rows))
        matrix = np.fromiter(values, dtype=np.float64, count=len(rows) * self._width).reshape(len(rows), self._width)
        if not np.isfinite(matrix).all():
            row, column = np.argwhere(~np.isfinite(matrix))[0]
            feature = None if self._detail == "generic" else self.features[column].name
            raise InstancesError("value is not a finite number", row=int(row), feature=feature)
        if self._integer_columns:
            integers = matrix[:, self._integer_columns]
            fractional = integers != np.floor(integers)
            if fractional.any():
                row, index = np.argwhere(fractional)[0]
                spec = self.features[self._integer_columns[index]]
                if self._detail == "generic":
                    raise InstancesError("Expected `int`, got a fraction", row=int(row))
                raise InstancesError(
                    f"Expected `int`, got a fraction (the model expects type {spec.type})",
                    row=int(row),
                    feature=spec.name,
                )
        return matrix


def clip_names(message: str, limit: int = 64) -> str:
    """Shorten every `quoted` name in an error to `limit` characters: a caller's 1 MB key is not echoed back."""
    return _QUOTED.sub(lambda m: f"`{m.group(1)[:limit]}...`" if len(m.group(1)) > limit else m.group(0), message)


def _generic(message: str) -> InstancesError:
    """The row of the error only, for ERROR_DETAIL=generic: no feature name goes back to the caller."""
    match = _PATH.search(message)
    return InstancesError("does not match the model's signature", row=int(match.group(1)) if match else None)


def _describe(message: str, features: Sequence[FeatureSpec]) -> InstancesError:
    """Turn msgspec's `... - at `$[3].amount`` into the problem at row 3, feature `amount`, with a hint."""
    text, _, _where = clip_names(message).partition(" - at ")
    if text == "Number out of range":
        text = "value is not a finite number (out of float64 range)"
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
