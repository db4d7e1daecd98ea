"""Rows as the core takes them from every protocol: the raw JSON of an array of row objects, or `Columns`.

No transport here: the HTTP routers and the Open Inference Protocol's codec (`fraud_inference.oip`) build their
requests' rows with these, and the refusals are the core's `InvalidRowsError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from fraud_inference.errors import InvalidRowsError
from fraud_inference.models.signature_errors import ErrorDetail, first_infinity
from fraud_inference.pool.messages import Columns

__all__ = ["columns_body", "encode_rows", "refuse_empty", "rows_of_columns"]


def columns_body(columns: Mapping[str, Sequence[Any]], *, detail: ErrorDetail = "full") -> bytes | Columns:
    """Columns (name to one value per row, all as long, each name once) as the pool takes them: `Columns`, each
    column msgpack-encoded in C, which the worker decodes straight into the model's batch and checks as rows
    (infinities refused naming the row and column). No Python call per value here.

    A whole number beyond 64 bits, which msgpack cannot carry, sends the rows instead: the worker refuses it.
    """
    try:
        return Columns(names=tuple(columns), values=tuple(map(_encode_msgpack, columns.values())))
    except OverflowError:
        return rows_of_columns(columns, detail=detail)


def rows_of_columns(columns: Mapping[str, Sequence[Any]], *, detail: ErrorDetail = "full") -> bytes:
    """Columns as the raw JSON of an array of row objects (see `encode_rows`), built with C-level zips."""
    names = list(columns)
    rows = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    return encode_rows(rows, detail=detail)


def encode_rows(rows: list[dict[str, Any]], *, detail: ErrorDetail = "full") -> bytes:
    """Row objects as the pool takes them (raw JSON), refusing an infinite value with `InvalidRowsError` at its
    row and column (the column left out under ERROR_DETAIL=generic). NaN stays a missing value, as null is.

    CSV rows, and columns that `columns_body` cannot send, are encoded here: JSON has no infinity, and msgspec
    writes one as null, which the model would score as a missing value.
    """
    encoded = _encode(rows)
    # NOTE: only a body holding null can hide an infinity (msgspec writes inf and NaN as null): look only then.
    if b"null" in encoded and (infinity := first_infinity(rows)) is not None:
        row, name, value = infinity
        raise InvalidRowsError(
            f"value {value} is not a finite number: send a finite number, or leave it empty (null) for a missing value",
            row=row,
            feature=None if detail == "generic" else name,
        )
    return encoded


def refuse_empty(subject: str) -> InvalidRowsError:
    """The error for a request without rows, naming what is empty (`dataframe_split.data`, `input 'amount'`)."""
    return InvalidRowsError(f"{subject} is empty: send at least one row")


_encode = msgspec.json.encode
_encode_msgpack = msgspec.msgpack.encode
