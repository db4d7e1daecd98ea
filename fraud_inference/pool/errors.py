"""Why a request could not be scored by the pool."""

from __future__ import annotations

__all__ = [
    "InferenceTimeoutError",
    "NoWorkerError",
    "PoolError",
    "PoolOverloadedError",
    "RequestRefusedError",
    "ScoringError",
    "WorkerLostError",
]


class PoolError(Exception):
    """Base class of every pool failure."""


class NoWorkerError(PoolError):
    """No live worker holds the requested generation."""


class WorkerLostError(PoolError):
    """The worker died while scoring, and so did the retry."""


class InferenceTimeoutError(PoolError):
    """No answer within INFERENCE_TIMEOUT_S."""


class ScoringError(PoolError):
    """The worker answered that the model failed to score the batch."""


class PoolOverloadedError(PoolError):
    """QUEUE_LIMIT requests already wait for a worker: refused at once rather than queued without bound."""


class RequestRefusedError(Exception):
    """The worker refused this request's rows (they do not fit the model's signature, or are too many).

    `status` is the HTTP status to answer (422, 413) and `detail` names the row and the feature.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
