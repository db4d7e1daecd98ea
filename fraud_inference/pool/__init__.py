"""The pre-started pool of inference worker processes and the messages they exchange with the server."""

from fraud_inference.pool.errors import (
    InferenceTimeoutError,
    NoWorkerError,
    PoolError,
    ScoringError,
    WorkerLostError,
)
from fraud_inference.pool.pool import InferencePool, PoolStatus, Scores
from fraud_inference.pool.worker import WorkerOptions

__all__ = [
    "InferencePool",
    "InferenceTimeoutError",
    "NoWorkerError",
    "PoolError",
    "PoolStatus",
    "Scores",
    "ScoringError",
    "WorkerLostError",
    "WorkerOptions",
]
