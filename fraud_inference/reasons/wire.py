"""The explanation a worker sends for one request's rows: contributions, base values and the values the model got."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["Explained", "decode_explained", "encode_explained", "received_values"]

Value = float | str | bool | int | None


class Explained(msgspec.Struct, frozen=True, array_like=True):
    """One request's explanation, as its worker computed it with the library's own TreeSHAP.

    `contributions` is float64 `[rows, features + 1]` in C order, signature order, the last column the base value,
    in `margin` space (`log_odds`). `values` holds, per row, each feature's value as the model received it (None:
    missing; a category never seen in training is missing).
    """

    margin: str
    features: int
    contributions: bytes
    values: list[list[Value]]

    def matrix(self) -> npt.NDArray[np.float64]:
        """`contributions` as `[rows, features + 1]`."""
        return np.frombuffer(self.contributions, dtype=np.float64).reshape(-1, self.features + 1)


encode_explained = msgspec.msgpack.Encoder().encode
decode_explained = msgspec.msgpack.Decoder(Explained).decode


def received_values(batch: Any) -> list[list[Value]]:
    """Each row of a scorer's batch (a float64 matrix, or a DataFrame) as JSON-able values, NaN as None."""
    if hasattr(batch, "iloc"):
        rows = batch.astype(object).to_numpy().tolist()
    else:
        rows = np.asarray(batch, dtype=np.float64).tolist()
    return [[_plain(value) for value in row] for row in rows]


def _plain(value: Any) -> Value:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):  # NaN: missing
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
