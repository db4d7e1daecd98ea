"""Why a prediction could not be made, in the domain's terms; each protocol renders them (`api/error_table.py`)."""

from __future__ import annotations

__all__ = [
    "InferenceFailedError",
    "InvalidExplainError",
    "InvalidRowsError",
    "NotExplainableError",
    "NotReadyError",
    "OverloadedError",
    "PredictionError",
    "TimedOutError",
    "TooManyRowsError",
    "UnknownModelError",
]


class PredictionError(Exception):
    """Why a prediction could not be made, in the domain's terms; each protocol renders it in its own convention."""


class NotReadyError(PredictionError):
    """No generation is active yet (or none could be loaded): `reason` says why. Retry later."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not ready: {reason}")
        self.reason = reason


class UnknownModelError(PredictionError):
    """The request names a model this service does not serve; `served` lists the keys (empty under
    ERROR_DETAIL=generic, which keeps them out of answers)."""

    def __init__(self, model: str, served: tuple[str, ...]) -> None:
        listed = f"; served models: {', '.join(served)}" if served else ""
        super().__init__(f"unknown model {model[:64]!r}{listed}")
        self.model = model[:64]
        self.served = served


class InvalidRowsError(PredictionError):
    """The rows do not fit the model's signature: `message` says what, at `row` (index) and `feature` when known."""

    def __init__(self, message: str, *, row: int | None = None, feature: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = row
        self.feature = feature


class TooManyRowsError(PredictionError):
    """More rows in one request than MAX_BATCH_ROWS."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(f"{rows} rows exceed MAX_BATCH_ROWS={limit}")
        self.rows = rows
        self.limit = limit


class OverloadedError(PredictionError):
    """QUEUE_LIMIT requests already wait for a worker: refused at once. Retry later."""


class TimedOutError(PredictionError):
    """No answer from the inference workers within INFERENCE_TIMEOUT_S."""


class InferenceFailedError(PredictionError):
    """The workers could not score the rows (a worker died twice, the model failed). Retry later."""


class NotExplainableError(PredictionError):
    """An explanation was asked of a model that cannot give one: the message names the model, what can be
    explained, and why not this one (`models.explain.explain_refusal`)."""


class InvalidExplainError(PredictionError):
    """`explain` is not a whole number of reasons between 1 and the model's feature count: the message says which."""
