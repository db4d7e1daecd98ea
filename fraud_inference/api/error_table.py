"""The one table from the core's errors to each protocol's answer, and the one formatter of where rows went wrong.

A router renders a `PredictionError` by looking it up here (`answer_of`), along its class hierarchy: a new subclass
of `InvalidRowsError` answers as `InvalidRowsError` does everywhere, with no router to edit.
"""

from __future__ import annotations

from typing import NamedTuple

from fraud_inference.errors import (
    InferenceFailedError,
    InvalidExplainError,
    InvalidRowsError,
    NotExplainableError,
    NotReadyError,
    OverloadedError,
    PredictionError,
    TimedOutError,
    TooManyRowsError,
    UnknownModelError,
)

__all__ = ["ERRORS", "ErrorAnswer", "answer_of", "oip_message", "where"]


class ErrorAnswer(NamedTuple):
    """How each protocol answers one kind of error."""

    v1: int
    """/v1's HTTP status."""
    oip: int
    """The Open Inference Protocol's HTTP status (/v2)."""
    mlflow: int
    """/invocations' HTTP status, as MLflow's scoring server answers it."""
    mlflow_code: str
    """MLflow's `error_code` beside it."""
    grpc: str
    """The gRPC status code name (for OIP over gRPC)."""


ERRORS: dict[type[PredictionError], ErrorAnswer] = {
    # MLflow's server answers a failed schema check 400 INVALID_PARAMETER_VALUE; /v1 keeps 422 for a body that
    # parsed but does not fit the signature.
    InvalidRowsError: ErrorAnswer(422, 400, 400, "INVALID_PARAMETER_VALUE", "INVALID_ARGUMENT"),
    TooManyRowsError: ErrorAnswer(413, 413, 400, "INVALID_PARAMETER_VALUE", "RESOURCE_EXHAUSTED"),
    InvalidExplainError: ErrorAnswer(400, 400, 400, "INVALID_PARAMETER_VALUE", "INVALID_ARGUMENT"),
    NotExplainableError: ErrorAnswer(422, 422, 400, "INVALID_PARAMETER_VALUE", "FAILED_PRECONDITION"),
    UnknownModelError: ErrorAnswer(404, 404, 404, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"),
    NotReadyError: ErrorAnswer(503, 503, 503, "TEMPORARILY_UNAVAILABLE", "UNAVAILABLE"),
    OverloadedError: ErrorAnswer(503, 503, 503, "TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED"),
    TimedOutError: ErrorAnswer(504, 504, 504, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
    InferenceFailedError: ErrorAnswer(503, 503, 503, "TEMPORARILY_UNAVAILABLE", "UNAVAILABLE"),
    # Any other error of the core: the service could not answer, the client did nothing wrong.
    PredictionError: ErrorAnswer(503, 503, 503, "TEMPORARILY_UNAVAILABLE", "UNAVAILABLE"),
}


def answer_of(error: PredictionError) -> ErrorAnswer:
    """The row of `error`'s nearest class in `ERRORS` (its own, else its parents', in method resolution order)."""
    for cls in type(error).__mro__:
        answer = ERRORS.get(cls)
        if answer is not None:
            return answer
    raise TypeError(f"{type(error).__name__} is not a PredictionError")  # unreachable: PredictionError has a row


def where(error: InvalidRowsError, *, row: str, feature: str, feature_first: bool) -> str:
    """Where the rows went wrong: `row 3, column 'amount'` (or the feature first), either part left out when
    unknown, "" for neither.

    Each protocol names the two in its own words and order: MLflow's "row" then "column", OIP's "input" then
    "row" (/v1 writes `instances[3].amount`, `signature.instances_message`).
    """
    parts = []
    if error.row is not None:
        parts.append(f"{row} {error.row}")
    if error.feature is not None:
        parts.insert(0 if feature_first else len(parts), f"{feature} {error.feature!r}")
    return ", ".join(parts)


def oip_message(error: PredictionError) -> str:
    """The core's error in the Open Inference Protocol's words (`input 'amount', row 3: ...`): REST's /v2 error
    and gRPC's status details say the same."""
    if isinstance(error, InvalidRowsError):
        located = where(error, row="row", feature="input", feature_first=True)
        return f"{located}: {error.message}" if located else error.message
    return str(error)
