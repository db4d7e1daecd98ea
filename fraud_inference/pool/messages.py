"""Typed messages between the server and its inference workers, encoded with msgpack."""

from __future__ import annotations

import msgspec

from fraud_inference.models.artifact import ModelArtifact

__all__ = [
    "DropGeneration",
    "GenerationLoaded",
    "LoadGeneration",
    "Score",
    "ScoreFailed",
    "Scored",
    "ToServer",
    "ToWorker",
    "WorkerStarted",
    "decode_to_server",
    "decode_to_worker",
    "encode",
]


class LoadGeneration(msgspec.Struct, tag="load", frozen=True, array_like=True):
    """Load these models as `generation`, beside whatever the worker serves now."""

    generation: int
    models: tuple[ModelArtifact, ...]


class DropGeneration(msgspec.Struct, tag="drop", frozen=True, array_like=True):
    """Release a generation: no request will be sent for it again."""

    generation: int


class Score(msgspec.Struct, tag="score", frozen=True, array_like=True):
    """Score `rows` rows of float64 features (row-major, training column order) with one model."""

    seq: int
    generation: int
    model: str
    rows: int
    features: bytes
    request_id: str


class WorkerStarted(msgspec.Struct, tag="started", frozen=True, array_like=True):
    """The worker has imported its libraries and waits for a generation."""

    pid: int


class GenerationLoaded(msgspec.Struct, tag="loaded", frozen=True, array_like=True):
    """Outcome of a `LoadGeneration`: `errors` per model key is empty when every model loaded and scored."""

    generation: int
    errors: dict[str, str]
    load_seconds: dict[str, float]


class Scored(msgspec.Struct, tag="scored", frozen=True, array_like=True):
    """Fraud-class probabilities (float64) for a `Score`, in row order, and the scoring time in the worker."""

    seq: int
    probabilities: bytes
    seconds: float


class ScoreFailed(msgspec.Struct, tag="failed", frozen=True, array_like=True):
    """A `Score` that could not be scored, and why."""

    seq: int
    error: str


ToWorker = LoadGeneration | DropGeneration | Score
ToServer = WorkerStarted | GenerationLoaded | Scored | ScoreFailed

encode = msgspec.msgpack.Encoder().encode
decode_to_worker = msgspec.msgpack.Decoder(ToWorker).decode
decode_to_server = msgspec.msgpack.Decoder(ToServer).decode
