"""Say what is wrong with a request's rows: where (row, feature), then what, in words the caller can act on."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "ErrorDetail",
    "InstancesError",
    "clip_names",
    "first_infinity",
    "infinity_problem",
    "instances_message",
]

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


def first_infinity(rows: Sequence[Mapping[str, Any]]) -> tuple[int, str, float] | None:
    """The first infinite value of row objects, in row order: (row, feature, value); None when there is none."""
    for index, row in enumerate(rows):
        for name, value in row.items():
            if type(value) is float and math.isinf(value):
                return index, name, value
    return None


def infinity_problem(value: float) -> str:
    return f"value {value} is not a finite number: send a finite number, or leave it empty (null) for a missing value"


def clip_names(message: str, limit: int = 64) -> str:
    """Shorten every `quoted` name in an error to `limit` characters: a caller's 1 MB key is not echoed back."""
    return _QUOTED.sub(lambda m: f"`{m.group(1)[:limit]}...`" if len(m.group(1)) > limit else m.group(0), message)
