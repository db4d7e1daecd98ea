"""The pre-started pool of inference worker processes and the messages they exchange with the server."""

from fraud_inference.pool.errors import (
    InferenceTimeoutError,
    NoWorkerError,
    PoolError,
    PoolOverloadedError,
    RequestRefusedError,
    ScoringError,
    WorkerLostError,
)
from fraud_inference.pool.messages import Columns
from fraud_inference.pool.pool import InferencePool, PoolStatus
from fraud_inference.pool.queue import BatchPolicy, Scores
from fraud_inference.pool.worker import WorkerOptions

__all__ = [
    "BatchPolicy",
    "Columns",
    "InferencePool",
    "InferenceTimeoutError",
    "NoWorkerError",
    "PoolError",
    "PoolOverloadedError",
    "PoolStatus",
    "RequestRefusedError",
    "Scores",
    "ScoringError",
    "WorkerLostError",
    "WorkerOptions",
]
