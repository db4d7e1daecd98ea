"""One OIP tensor's values: its datatype, its binary form (Triton's binary tensor extension, gRPC's raw contents),
its shape against its data, and whether each value fits the declared datatype."""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud_inference.oip.errors import OipRequestError
from fraud_inference.oip.types import RequestInput

__all__ = ["DATATYPES", "DATATYPE_NAMES", "NUMPY_DTYPES", "check_datatype", "from_raw", "to_raw", "values_of"]

# An MLflow signature's column types as OIP datatypes (MLServer's MLflow runtime maps them the same way).
DATATYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
}
NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
"""Each fixed-size datatype as the little-endian numpy type of its binary form."""
DATATYPE_NAMES = tuple(sorted({*NUMPY_DTYPES, "BYTES"}))
"""Every OIP datatype, sorted."""
_INTEGER_RANGES = {
    **{f"INT{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)},
}
_FLOAT_MAX = {"FP16": 65504.0, "FP32": float(np.finfo(np.float32).max), "FP64": float(np.finfo(np.float64).max)}


def check_datatype(tensor: RequestInput) -> None:
    """Refuse a datatype OIP does not define, naming the ones it does."""
    if tensor.datatype not in NUMPY_DTYPES and tensor.datatype != "BYTES":
        raise OipRequestError(f"input {tensor.name[:64]!r}: datatype {tensor.datatype[:64]!r} is not an OIP datatype; "
                              f"send one of {', '.join(DATATYPE_NAMES)}", input_name=tensor.name)  # fmt: skip


def from_raw(tensor: RequestInput, raw: bytes) -> list[Any]:
    """The values of `tensor`'s binary form: little-endian values row-major, or for BYTES each element as a 4-byte
    little-endian length and its bytes (read as UTF-8)."""
    if tensor.datatype == "BYTES":
        values: list[Any] = []
        position = 0
        while position + 4 <= len(raw):
            length = int.from_bytes(raw[position : position + 4], "little")
            values.append(raw[position + 4 : position + 4 + length].decode("utf-8", errors="replace"))
            position += 4 + length
        return values
    dtype = NUMPY_DTYPES.get(tensor.datatype)
    if dtype is None or len(raw) % dtype.itemsize:
        raise OipRequestError(f"input {tensor.name[:64]!r}: binary data does not hold {tensor.datatype} values",
                              input_name=tensor.name)  # fmt: skip
    return np.frombuffer(raw, dtype=dtype).tolist()  # type: ignore[no-any-return]


def to_raw(values: npt.NDArray[Any], datatype: str) -> bytes:
    """An output's binary form: its values as `datatype`, little-endian, row-major."""
    return np.ascontiguousarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()


def values_of(tensor: RequestInput) -> list[Any]:
    """The tensor's values row-major, as many as its shape says, each fitting its datatype (None: missing)."""
    if tensor.data is None:
        raise OipRequestError(f"input {tensor.name[:64]!r} has no data", input_name=tensor.name)
    if any(not isinstance(dim, int) or dim < 0 for dim in tensor.shape):
        raise OipRequestError(f"input {tensor.name[:64]!r}: shape {tensor.shape} must be non-negative sizes",
                              input_name=tensor.name)  # fmt: skip
    values = _flatten(tensor)
    if len(values) != math.prod(tensor.shape):
        raise OipRequestError(f"input {tensor.name[:64]!r}: shape {tensor.shape} needs {math.prod(tensor.shape)} "
                              f"values, data holds {len(values)}", input_name=tensor.name)  # fmt: skip
    misfit = None if _fit(tensor.datatype, values) else _first_misfit(tensor.datatype, values)
    if misfit is not None:
        index, value = misfit
        raise OipRequestError(
            f"input {tensor.name[:64]!r}: data[{index}] = {repr(value)[:64]} does not fit datatype "
            f"{tensor.datatype}; send values of the declared datatype",
            input_name=tensor.name,
            row=index // (math.prod(tensor.shape[1:]) or 1),  # the first dimension counts rows
        )
    return values


def _flatten(tensor: RequestInput) -> list[Any]:
    """Row-major values of a tensor's `data`, flat or nested (each level evenly: lists of lists, or of values)."""
    data = tensor.data
    if not isinstance(data, list):
        return [data]
    while data and isinstance(data[0], list):
        if not all(isinstance(part, list) for part in data):
            raise OipRequestError("tensor data must be nested evenly: lists of lists, or lists of values",
                                  input_name=tensor.name)  # fmt: skip
        data = list(chain.from_iterable(data))
    flat: list[Any] = data
    return flat


def _fit(datatype: str, values: list[Any]) -> bool:
    """Whether every value surely fits `datatype` (null, a missing value, fits any), in C-level passes; False when
    unsure (`3.0` in an integer tensor, NaN), for `_first_misfit` to decide value by value."""
    kinds = set(map(type, values))
    if type(None) in kinds:
        kinds.discard(type(None))
        values = [value for value in values if value is not None]
    if not values:
        return True
    if datatype == "BOOL":
        return kinds == {bool}
    if datatype == "BYTES":
        return kinds == {str}
    if not kinds <= {int, float}:
        return False
    if datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        return kinds == {int} and bool(low <= min(values) and max(values) <= high)
    # An infinity or NaN lands here; `_fits` lets both through (encode_rows refuses infinity at its row and column).
    return bool(-_FLOAT_MAX[datatype] <= min(values) and max(values) <= _FLOAT_MAX[datatype])


def _first_misfit(datatype: str, values: list[Any]) -> tuple[int, Any] | None:
    return next(((i, v) for i, v in enumerate(values) if v is not None and not _fits(datatype, v)), None)


def _fits(datatype: str, value: Any) -> bool:
    """Whether one (non-null) value fits `datatype`: a JSON boolean for BOOL, a string for BYTES, a whole number in
    range for an integer type (`3.0` is 3), a number within range for a floating-point type."""
    kind = type(value)
    if datatype == "BOOL":
        return kind is bool
    if datatype == "BYTES":
        return kind is str
    if kind is not int and kind is not float:
        return False
    if datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        return (kind is int or bool(value.is_integer())) and bool(low <= value <= high)
    return not abs(value) > _FLOAT_MAX[datatype] or math.isinf(value)
