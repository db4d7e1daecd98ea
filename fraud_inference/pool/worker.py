"""The inference worker process: holds its own models per generation and scores batches sent to it."""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection

import msgspec
from structlog.typing import FilteringBoundLogger

from fraud_inference.lifetime import die_with_parent
from fraud_inference.models.signature import ExtraFeatures
from fraud_inference.models.signature_errors import ErrorDetail
from fraud_inference.pool.messages import (
    DropGeneration,
    Heartbeat,
    LoadGeneration,
    Score,
    Scored,
    ScoreFailed,
    WorkerStarted,
)
from fraud_inference.pool.worker_batch import BatchScorer
from fraud_inference.pool.worker_explain import ExplainLane, wants_explanation
from fraud_inference.pool.worker_models import HeldGenerations
from fraud_inference.pool.worker_pipe import ServerPipe
from fraud_inference.pool.worker_shadow import ShadowScorer

__all__ = ["WorkerOptions", "run_worker"]


class WorkerOptions(msgspec.Struct, frozen=True):
    """What a worker needs to know from the server's settings."""

    index: int
    log_level: str
    log_format: str
    max_rows: int = 10_000
    error_detail: ErrorDetail = "full"
    extra_features: ExtraFeatures = "reject"
    heartbeat_s: float = 0.5
    shadow_share: float = 1.0
    """SHADOW_SHARE: the share of requests a challenger, when the generation holds one, also scores."""
    explain_nice: int = 0
    """EXPLAIN_NICE: how much lower than scoring's the priority of TreeSHAP's thread is (0 to 19); the explanation
    lane itself runs at the worker's priority."""


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
    """Act on the server's messages in order: score batches, load and drop generations; beat meanwhile. Batches
    of explained requests go to the explanation lane, a thread beside this one (`ExplainLane`)."""

    def __init__(self, conn: Connection, options: WorkerOptions, log: FilteringBoundLogger) -> None:
        self._index = options.index
        self._heartbeat_s = options.heartbeat_s
        self._pipe = ServerPipe(conn)
        self._generations = HeldGenerations(
            error_detail=options.error_detail, extra_features=options.extra_features, log=log
        )
        self._batches = BatchScorer(max_rows=options.max_rows, is_cancelled=self._pipe.is_cancelled, log=log)
        # NOTE: the lane only looks at the Cancels read so far: the pipe is read on this thread alone.
        self._explained = BatchScorer(
            max_rows=options.max_rows, is_cancelled=self._pipe.was_cancelled, log=log, explain_nice=options.explain_nice
        )
        self._explain_lane = ExplainLane(log)
        self._shadow = ShadowScorer(share=options.shadow_share, busy=self._pipe.waiting, send=self._pipe.send, log=log)
        self._scoring: tuple[int, int] = (0, 0)  # (batch seq, monotonic ns it started), 0 when idle

    def serve(self) -> None:
        self._preload()
        self._pipe.send(WorkerStarted(pid=os.getpid()))
        # NOTE: heartbeats come from a thread of their own: a slow batch is not a stuck worker (see Heartbeat).
        # The pipe is read here, on the scoring thread, and polled between a batch's chunks for a Cancel: a
        # reader thread handing messages over through a queue cost a second thread wake-up per batch.
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()
        while (message := self._pipe.next()) is not None:
            if isinstance(message, Score) and wants_explanation(message):
                self._explain_lane.submit(message, self._explain)
            elif isinstance(message, Score):
                self._score(message)
            elif isinstance(message, LoadGeneration):
                # NOTE: load beside the served generation in a thread, so scoring goes on during a swap.
                threading.Thread(target=self._load, args=(message,), daemon=True).start()
            elif isinstance(message, DropGeneration):
                self._generations.drop(message.generation)

    def _beat(self) -> None:
        while True:
            time.sleep(self._heartbeat_s)
            # The longer of the two threads' batches: HUNG_WORKER_S applies to an explanation as to a batch.
            now_ns = time.monotonic_ns()
            seq, started_ns = min(
                (self._scoring, self._explain_lane.current), key=lambda held: held[1] if held[0] else now_ns
            )
            self._pipe.send(Heartbeat(scoring=seq, scoring_ns=now_ns - started_ns if seq else 0))
            self._shadow.report_due()

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
            self._pipe.send(self._answer(request, self._batches))
        finally:
            self._scoring = (0, 0)
            # Batches come in order: a Cancel for this one or an earlier one arrived too late to matter.
            self._pipe.forget_cancels(request.seq)
        # NOTE: after the answer is sent, never before: a challenger's turn cannot delay the champion's answer.
        held = self._generations.challenger(request.generation, request.model)
        champion = self._generations.model(request.generation, request.model)
        if held is not None and champion is not None:
            self._shadow.take_turn(request, self._batches.last, champion, held)

    def _explain(self, request: Score) -> None:
        """Score and explain batch `request` (on the explanation lane); a challenger takes no turn on it."""
        try:
            answer = self._answer(request, self._explained)
        except Exception as error:  # answered as failed, never left for the client to time out
            answer = ScoreFailed(seq=request.seq, error=f"explaining failed: {error!r}"[:500])
        self._pipe.send(answer)
        held = self._generations.challenger(request.generation, request.model)
        champion = self._generations.model(request.generation, request.model)
        if held is not None and champion is not None:
            # Counted as skipped (busy): the challenger's turns run on the main thread, one at a time.
            self._shadow.take_turn(msgspec.structs.replace(request, shadow=False), self._explained.last, champion, held)

    def _answer(self, request: Score, batches: BatchScorer) -> Scored | ScoreFailed:
        """Score batch `request` with the model of its generation, or fail it when this worker does not hold it."""
        served = self._generations.model(request.generation, request.model)
        if served is None:
            return ScoreFailed(
                seq=request.seq,
                error=f"generation {request.generation} model {request.model!r} is not loaded in this worker",
            )
        return batches.score(request, served)

    def _load(self, request: LoadGeneration) -> None:
        self._pipe.send(self._generations.load(request))
