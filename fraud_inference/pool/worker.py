"""The inference worker process: holds its own models per generation and scores batches sent to it."""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt
from structlog.typing import FilteringBoundLogger

from fraud_inference.lifetime import die_with_parent
from fraud_inference.models.signature import ExtraFeatures, SignatureDecoder
from fraud_inference.models.signature_errors import ErrorDetail, InstancesError
from fraud_inference.pool.messages import (
    FRAUD_PROBABILITY,
    PYFUNC_ANSWER,
    Columns,
    DropGeneration,
    Heartbeat,
    LoadGeneration,
    Output,
    Refused,
    Score,
    Scored,
    ScoreFailed,
    WorkerStarted,
)
from fraud_inference.pool.worker_models import HeldGenerations
from fraud_inference.pool.worker_pipe import ServerPipe

if TYPE_CHECKING:
    from fraud_inference.models.flavors import Scorer
    from fraud_inference.models.scoring import ServedModel

__all__ = ["WorkerOptions", "run_worker"]

Matrix = npt.NDArray[np.float64]
_EMPTY: Matrix = np.empty(0, dtype=np.float64)
# A large batch is scored in chunks of about this long, so a cancelled one stops soon after its requests gave
# up; the chunk's rows adapt to the model's speed (a fast model scores 10,000 rows in one or two calls, whose
# fixed cost, ~100 us for XGBoost, is then nothing beside the rows' own).
_CHUNK_NS = 50_000_000
_FIRST_CHUNK_ROWS = 256
_MAX_CHUNK_ROWS = 16_384


def _row_slice(features: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of a batch: a float64 matrix, or a DataFrame on the frame path."""
    return features.iloc[start:stop] if hasattr(features, "iloc") else features[start:stop]


def _jsonable(value: Any) -> Any:
    """What MLflow's scoring server's encoder (`NumpyEncoder`) makes of a value JSON has no type for."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    isoformat = getattr(value, "isoformat", None)  # pandas Timestamp, datetime, date, time
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"predict returned a {type(value).__name__}, which MLflow's scoring server cannot encode")


# NOTE: a non-finite float becomes null (valid JSON), where MLflow's json.dump writes a bare NaN.
_encode_json = msgspec.json.Encoder(enc_hook=_jsonable).encode


def _score_rows(scorer: Scorer, rows: Any, outputs: list[Any] | None) -> Matrix:
    """The fraud probabilities of `rows`; with `outputs`, also MLflow's pyfunc answer per row, appended to it."""
    if outputs is None:
        return scorer.fraud_probability(rows)
    probabilities, answers = scorer.mlflow_predictions(rows)
    outputs.extend(answers)
    return probabilities


def _wants_pyfunc(request: Score) -> bool:
    return any(PYFUNC_ANSWER in wants for wants in request.wants)


def _outputs(
    request: Score, outcomes: list[int | Refused], probabilities: Matrix, answers: list[Any] | None
) -> dict[str, Output]:
    """The batch's named outputs, each request's part in batch order: the fraud probabilities (float64) of every
    scored request and, when some request wanted it, MLflow's pyfunc answer for its own rows (a JSON array)."""
    rows = [0 if isinstance(outcome, Refused) else outcome for outcome in outcomes]
    outputs = {FRAUD_PROBABILITY: Output(probabilities.tobytes(), tuple(8 * count for count in rows))}
    if answers is not None:
        parts: list[bytes] = []
        offset = 0
        for wants, outcome, count in zip(request.wants, outcomes, rows, strict=True):
            wanted = PYFUNC_ANSWER in wants and not isinstance(outcome, Refused)
            parts.append(_encode_json(answers[offset : offset + count]) if wanted else b"")
            offset += count
        outputs[PYFUNC_ANSWER] = Output(b"".join(parts), tuple(map(len, parts)))
    return outputs


class WorkerOptions(msgspec.Struct, frozen=True):
    """What a worker needs to know from the server's settings."""

    index: int
    log_level: str
    log_format: str
    max_rows: int = 10_000
    error_detail: ErrorDetail = "full"
    extra_features: ExtraFeatures = "reject"
    heartbeat_s: float = 0.5


def run_worker(conn: Connection, options: WorkerOptions) -> None:
    """Entry point of a worker process (started with the `spawn` method)."""
    # NOTE: one thread per worker, set before xgboost / lightgbm / scikit-learn start their OpenMP pools:
    # two workers with two OpenMP threads each on two cores run ~9x slower than one thread each.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    die_with_parent(signal.SIGKILL)
    # Ctrl-C reaches the whole process group; the server stops its workers in order instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from setproctitle import setproctitle

    from fraud_inference.observability.logging import configure_logging, get_logger

    setproctitle(f"fraud-inference worker {options.index}")
    configure_logging(options.log_level, options.log_format, role=f"worker {options.index}")
    _Worker(conn, options, get_logger("fraud_inference.worker")).serve()


class _Worker:
    def __init__(self, conn: Connection, options: WorkerOptions, log: FilteringBoundLogger) -> None:
        self._index = options.index
        self._max_rows = options.max_rows
        self._heartbeat_s = options.heartbeat_s
        self._log = log
        self._pipe = ServerPipe(conn)
        self._generations = HeldGenerations(
            error_detail=options.error_detail, extra_features=options.extra_features, log=log
        )
        self._scoring: tuple[int, int] = (0, 0)  # (batch seq, monotonic ns it started), 0 when idle

    def serve(self) -> None:
        self._preload()
        self._pipe.send(WorkerStarted(pid=os.getpid()))
        # NOTE: heartbeats come from a thread of their own: a slow batch is not a stuck worker (see Heartbeat).
        # The pipe is read here, on the scoring thread, and polled between a batch's chunks for a Cancel: a
        # reader thread handing messages over through a queue cost a second thread wake-up per batch.
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()
        while (message := self._pipe.next()) is not None:
            if isinstance(message, Score):
                self._score(message)
            elif isinstance(message, LoadGeneration):
                # NOTE: load beside the served generation in a thread, so scoring goes on during a swap.
                threading.Thread(target=self._load, args=(message,), daemon=True).start()
            elif isinstance(message, DropGeneration):
                self._generations.drop(message.generation)

    def _beat(self) -> None:
        while True:
            time.sleep(self._heartbeat_s)
            seq, started_ns = self._scoring
            self._pipe.send(Heartbeat(scoring=seq, scoring_ns=time.monotonic_ns() - started_ns if seq else 0))

    def _preload(self) -> None:
        """Import the model libraries and pin their thread pools before the first load.

        NOTE: not MLflow (~190 MiB a worker): only a custom pyfunc model needs it, and its flavour imports it.
        """
        import lightgbm  # noqa: F401
        import xgboost  # noqa: F401
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)

    def _score(self, request: Score) -> None:
        self._scoring = (request.seq, time.monotonic_ns())
        try:
            self._score_batch(request)
        finally:
            self._scoring = (0, 0)
            # Batches come in order: a Cancel for this one or an earlier one arrived too late to matter.
            self._pipe.forget_cancels(request.seq)

    def _score_batch(self, request: Score) -> None:
        served = self._generations.model(request.generation, request.model)
        if served is None:
            self._pipe.send(
                ScoreFailed(
                    seq=request.seq,
                    error=f"generation {request.generation} model {request.model!r} is not loaded in this worker",
                )
            )
            return
        started = time.perf_counter()
        outcomes: list[int | Refused] = []
        batches: list[Any] = []
        if self._pipe.is_cancelled(request.seq):
            self._dropped(request)
            return
        for body in request.bodies:
            outcome = self._decode(served.decoder, body)
            if isinstance(outcome, Refused):
                outcomes.append(outcome)
            else:
                outcomes.append(len(outcome))
                batches.append(outcome)
        # MLflow's pyfunc answer comes from the same model call as the probabilities, for every row of the batch.
        outputs: list[Any] | None = [] if _wants_pyfunc(request) else None
        try:
            # One model call per chunk of the whole batch: its fixed cost (~100 us for XGBoost) is paid once
            # for a batch of small requests; a large one is scored chunk by chunk, and dropped between two
            # when every request of the batch has given up.
            features = served.decoder.stack(batches) if batches else None
            total = 0 if features is None else len(features)
            chunks: list[Matrix] = []
            start, rows = 0, _FIRST_CHUNK_ROWS
            while start < total:
                if self._pipe.is_cancelled(request.seq):
                    self._dropped(request, scored_rows=start)
                    return
                chunk_started = time.monotonic_ns()
                chunks.append(_score_rows(served.scorer, _row_slice(features, start, start + rows), outputs))
                start += rows
                elapsed = max(time.monotonic_ns() - chunk_started, 1)
                rows = max(1, min(_MAX_CHUNK_ROWS, rows * _CHUNK_NS // elapsed))
            probabilities = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else _EMPTY
        except Exception as error:
            outcomes, probabilities, outputs = self._score_alone(request, served, outcomes, batches, error)
        seconds = time.perf_counter() - started
        self._log.debug(
            "batch.scored",
            request_ids=request.request_ids,
            model=request.model,
            generation=request.generation,
            rows=len(probabilities),
            ms=round(seconds * 1000, 3),
        )
        scored = Scored(
            seq=request.seq, outcomes=tuple(outcomes), outputs=_outputs(request, outcomes, probabilities, outputs),
            seconds=seconds,
        )  # fmt: skip
        self._pipe.send(scored)

    def _score_alone(
        self,
        request: Score,
        served: ServedModel,
        outcomes: list[int | Refused],
        batches: list[Any],
        error: Exception,
    ) -> tuple[list[int | Refused], Matrix, list[Any] | None]:
        """Answer a batch the model failed on with `error`: each request is scored on its own, and each one the
        model still fails on is a 422 (`invalid_rows`), so it never fails the requests batched with it.

        NOTE: rows the probes at load did not foresee (a custom model's own checks): this is the one place that
        turns the model's failure into a request's 422, for a batch of one request or of many.
        """
        self._log.error(
            "score.failed", request_ids=request.request_ids, model=request.model, generation=request.generation,
            requests=len(batches), error=repr(error)[:200],
        )  # fmt: skip
        scored: list[Matrix] = []
        pending = iter(batches)
        answered: list[int | Refused] = []
        outputs: list[Any] | None = [] if _wants_pyfunc(request) else None
        for request_id, outcome in zip(request.request_ids, outcomes, strict=True):
            if isinstance(outcome, Refused):
                answered.append(outcome)
                continue
            try:
                if len(batches) == 1:
                    raise error  # alone in its batch: the error is its own, no need to score it again
                own: list[Any] | None = None if outputs is None else []
                scored.append(_score_rows(served.scorer, next(pending), own))
                if outputs is not None and own is not None:
                    outputs.extend(own)
            except Exception as refusal:
                self._log.warning(
                    "score.refused_by_model", request_id=request_id, model=request.model,
                    generation=request.generation, error=repr(refusal)[:200],
                )  # fmt: skip
                answered.append(Refused(reason="invalid_rows", message=f"the model cannot score these rows: {refusal}"))
            else:
                answered.append(outcome)
        return answered, np.concatenate(scored) if scored else _EMPTY, outputs

    def _dropped(self, request: Score, *, scored_rows: int = 0) -> None:
        """Answer a cancelled batch without scoring the rest: nobody waits for it, but its slot is freed."""
        self._log.info("batch.cancelled", request_ids=request.request_ids, scored_rows=scored_rows)
        self._pipe.send(ScoreFailed(seq=request.seq, error="cancelled: every request of the batch gave up"))

    def _decode(self, decoder: SignatureDecoder, body: bytes | Columns) -> Any:
        try:
            matrix = decoder.decode(body) if isinstance(body, bytes) else decoder.columns(body.names, body.values)
        except InstancesError as error:
            return Refused(reason="invalid_rows", message=error.problem, row=error.row, feature=error.feature)
        except Exception as error:  # whatever a hostile body does, it fails alone and the worker lives on
            self._log.error("decode.failed", error=repr(error)[:200])
            return Refused(reason="invalid_rows", message="cannot be decoded")
        if len(matrix) > self._max_rows:
            return Refused(
                reason="too_many_rows",
                message=f"{len(matrix)} rows exceed MAX_BATCH_ROWS={self._max_rows}",
                rows=len(matrix),
            )
        return matrix

    def _load(self, request: LoadGeneration) -> None:
        self._pipe.send(self._generations.load(request))
