"""Why a request could not be scored by the pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraud_inference.pool.messages import Refused

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
    """The worker refused this request's rows: `refusal` says why (invalid rows at a row and feature, or too
    many rows), in the domain's terms; the scoring core turns it into its own errors."""

    def __init__(self, refusal: Refused) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
