"""Why a request could not be scored by the pool."""

from __future__ import annotations

__all__ = ["InferenceTimeoutError", "NoWorkerError", "PoolError", "ScoringError", "WorkerLostError"]


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
