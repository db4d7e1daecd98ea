"""Refuse the numbers a signature's types let through but a model cannot take, naming the row and the feature."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature_errors import ErrorDetail, InstancesError, infinity_problem

__all__ = ["ValueChecks"]

_INTEGER_TYPES = frozenset({"long", "integer"})
Matrix = npt.NDArray[np.float64]


class ValueChecks:
    """Refuse infinities, fractions in integer columns, and missing values in the columns `refuse_missing` names."""

    def __init__(self, features: Sequence[FeatureSpec], *, detail: ErrorDetail, refuse_missing: Sequence[str]) -> None:
        self._features = tuple(features)
        self._detail = detail
        self._integer_columns = [i for i, spec in enumerate(self._features) if spec.type in _INTEGER_TYPES]
        self.refuse_missing = [i for i, spec in enumerate(self._features) if spec.name in set(refuse_missing)]
        """The columns, by index in the signature, that may not miss a value."""

    def checks_for(self, columns: Sequence[int]) -> tuple[list[int], list[int]]:
        """The positions, in a matrix of `columns`, of integer columns and of columns that may not miss a value."""
        return (
            [position for position, column in enumerate(columns) if column in self._integer_columns],
            [position for position, column in enumerate(columns) if column in self.refuse_missing],
        )

    def check_numbers(
        self, numbers: Matrix, columns: Sequence[int], checks: tuple[list[int], list[int]], *, columnar: bool = False
    ) -> None:
        """Refuse infinities, fractions in integer columns, and missing values the model cannot take.

        `numbers` holds the feature columns `columns` (all of them on the fast path), in that order. A columnar
        request's infinity is refused in the words the HTTP process used when it built rows of columns.
        """
        if np.isinf(numbers).any():
            row, position = np.argwhere(np.isinf(numbers))[0]
            problem = infinity_problem(float(numbers[row, position])) if columnar else "value is not a finite number"
            raise InstancesError(problem, row=int(row), feature=self._feature(columns[position]))
        integers, refused = checks
        if integers:
            values = numbers[:, integers]
            fractional = values != np.floor(values)
            if fractional.any() and (fractional := fractional & ~np.isnan(values)).any():  # NaN is a missing value
                row, index = np.argwhere(fractional)[0]
                column = columns[integers[index]]
                detail = "" if self._detail == "generic" else f" (the model expects type {self._features[column].type})"
                raise InstancesError(
                    f"Expected `int`, got a fraction{detail}", row=int(row), feature=self._feature(column)
                )
        for position in refused:
            self.refuse_if_missing(np.isnan(numbers[:, position]), columns[position])

    def refuse_if_missing(self, missing: Any, column: int) -> None:
        missing = np.asarray(missing, dtype=bool)
        if missing.any():
            name = self._features[column].name
            what = "a value" if self._detail == "generic" else f"{name!r}"
            raise InstancesError(
                f"missing (null or left out), and this model cannot score a row without {what}: send it",
                row=int(np.argmax(missing)),
                feature=self._feature(column),
            )

    def _feature(self, column: int) -> str | None:
        """The feature's name for an error, or None under ERROR_DETAIL=generic."""
        return None if self._detail == "generic" else self._features[column].name
