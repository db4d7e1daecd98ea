"""Typed messages between the server and its inference workers, encoded with msgpack."""

from __future__ import annotations

from typing import Literal

import msgspec

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.pool.shadow_messages import Shadowed

__all__ = [
    "Cancel",
    "Columns",
    "DropGeneration",
    "GenerationLoaded",
    "Heartbeat",
    "LoadGeneration",
    "Refused",
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
    challengers: tuple[ModelArtifact, ...] = ()
    """Challengers of some of `models` (same `ref.key`): scored after the answer, for comparison (worker_shadow)."""


class DropGeneration(msgspec.Struct, tag="drop", frozen=True, array_like=True):
    """Release a generation: no request will be sent for it again."""

    generation: int


class Columns(msgspec.Struct, tag="columns", frozen=True, array_like=True):
    """One request's rows as columns, as the columnar protocols (`dataframe_split`, OIP tensors) send them.

    `values[i]` is column `names[i]` as a msgpack array, one value per row (None: missing), each name once. The
    worker decodes each column straight into the model's batch and refuses exactly what it refuses in rows.
    """

    names: tuple[str, ...]
    values: tuple[bytes, ...]

    @property
    def size(self) -> int:
        """Bytes of values, as a batch counts a request's size (BATCH_MAX_BYTES)."""
        return sum(map(len, self.values))


class Score(msgspec.Struct, tag="score", frozen=True, array_like=True):
    """Score a batch: one or more requests' rows for the same model, each the raw JSON array of its row objects
    or its `Columns`.

    The worker decodes each against the model's signature, scores every valid row in one model call and
    answers per request, so requests coalesced into one batch never see each other's rows or errors.
    """

    seq: int
    generation: int
    model: str
    bodies: tuple[bytes | Columns, ...]
    request_ids: tuple[str, ...]
    wants: tuple[tuple[str, ...], ...] = ()
    """Per request, the named outputs it wants besides `FRAUD_PROBABILITY` (e.g. `PYFUNC_ANSWER`); empty when
    none wants any."""
    shadow: bool = True
    """Whether a challenger may take its turn on this batch after the answer (`worker_shadow`): the server sends
    False when other requests waited for a worker or were held by one as it sent the batch."""


class Cancel(msgspec.Struct, tag="cancel", frozen=True, array_like=True):
    """Every request of batch `seq` has given up (timed out, or its client left): skip what is not scored yet."""

    seq: int


class Heartbeat(msgspec.Struct, tag="beat", frozen=True, array_like=True):
    """Sent by a thread of the worker every `heartbeat_s`, scoring or not: the process is alive.

    `scoring` is the batch being scored (0 when idle) and `scoring_ns` how long it has been scored so far,
    so the server can tell a slow batch (heartbeats go on) from a stuck process (they stop) or a call stuck
    past HUNG_WORKER_S (they go on, `scoring_ns` grows).
    """

    scoring: int
    scoring_ns: int


class WorkerStarted(msgspec.Struct, tag="started", frozen=True, array_like=True):
    """The worker has imported its libraries and waits for a generation."""

    pid: int


class GenerationLoaded(msgspec.Struct, tag="loaded", frozen=True, array_like=True):
    """Outcome of a `LoadGeneration`: `errors` per model key is empty when every model loaded and scored.

    `positive_classes` names, per loaded model, the class whose probability is scored (None for a custom model);
    `explain_refusals`, per loaded model that only its loaded form says cannot explain (a scikit-learn pipeline's
    steps), why not (`models.explain.load_refusal`).
    """

    generation: int
    errors: dict[str, str]
    load_seconds: dict[str, float]
    positive_classes: dict[str, str | None] = msgspec.field(default_factory=dict)
    explain_refusals: dict[str, str] = msgspec.field(default_factory=dict)


class Refused(msgspec.Struct, frozen=True, array_like=True):
    """One request of a batch whose rows the worker will not score, in the domain's terms (no HTTP here).

    `reason` is `invalid_rows` (the rows do not fit the model's signature: `message` says what, at `row` and
    `feature` when known) or `too_many_rows` (`rows` of them, past MAX_BATCH_ROWS). Each protocol words it.
    """

    reason: Literal["invalid_rows", "too_many_rows"]
    message: str
    row: int | None = None
    feature: str | None = None
    rows: int = 0


FRAUD_PROBABILITY = "fraud_probability"
"""The output every request gets: float64, one per row."""
PYFUNC_ANSWER = "pyfunc"
"""What MLflow's pyfunc wrapper of the version returns for the rows, as one JSON array (`/invocations`)."""
FEATURES = "features"
"""The rows as the model received them, for the decision log: the bytes of a C-order (rows, features) float64
matrix in the signature's order (NaN: missing). Only on the fast path: a model scored from a DataFrame (string
features) answers it empty, and the log decodes those rows itself."""
EXPLANATION = "explanation"
"""Each row's feature contributions and the values the model received (`reasons.wire.Explained`, msgpack). Requests
wanting it are batched apart from the others (`queue.RequestQueue`): plain scoring never waits for TreeSHAP."""


class Output(msgspec.Struct, frozen=True, array_like=True):
    """One named output of a batch: each request's part of `data`, one after another, `sizes[i]` bytes of it
    for the batch's i-th request (0 for one that did not want it or was refused)."""

    data: bytes
    sizes: tuple[int, ...]

    def parts(self) -> list[memoryview]:
        """Each request's bytes, in batch order."""
        view = memoryview(self.data)
        parts, offset = [], 0
        for size in self.sizes:
            parts.append(view[offset : offset + size])
            offset += size
        return parts


class Scored(msgspec.Struct, tag="scored", frozen=True, array_like=True):
    """The answer to a `Score`, per request in batch order: its row count, or why it was refused; and each named
    output (`FRAUD_PROBABILITY` always, the others a request wanted) with each request's part of it.

    `seconds` is the time the worker spent decoding and scoring the batch.
    """

    seq: int
    outcomes: tuple[int | Refused, ...]
    outputs: dict[str, Output]
    seconds: float


class ScoreFailed(msgspec.Struct, tag="failed", frozen=True, array_like=True):
    """A `Score` whose batch could not be scored at all (model missing, model failure), and why."""

    seq: int
    error: str


ToWorker = LoadGeneration | DropGeneration | Score | Cancel
ToServer = WorkerStarted | GenerationLoaded | Scored | ScoreFailed | Heartbeat | Shadowed

encode = msgspec.msgpack.Encoder().encode
decode_to_worker = msgspec.msgpack.Decoder(ToWorker).decode
decode_to_server = msgspec.msgpack.Decoder(ToServer).decode
