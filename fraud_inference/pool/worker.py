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
from fraud_inference.pool.messages import (
    DropGeneration,
    GenerationLoaded,
    LoadGeneration,
    Score,
    Scored,
    ScoreFailed,
    WorkerStarted,
    decode_to_worker,
    encode,
)

__all__ = ["WorkerOptions", "run_worker"]


class WorkerOptions(msgspec.Struct, frozen=True):
    """What a worker needs to know from the server's settings."""

    index: int
    log_level: str
    log_format: str


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
    _Worker(conn, options.index, get_logger("fraud_inference.worker")).serve()


class _Worker:
    def __init__(self, conn: Connection, index: int, log: FilteringBoundLogger) -> None:
        from fraud_inference.models.scoring import Scorer

        self._conn = conn
        self._index = index
        self._log = log
        self._send_lock = threading.Lock()
        self._generations: dict[int, dict[str, Scorer]] = {}
        # The same files (same version, same download) load once and are shared between generations.
        self._scorers_by_path: dict[int, dict[str, Scorer]] = {}

    def serve(self) -> None:
        self._preload()
        self._send(WorkerStarted(pid=os.getpid()))
        while True:
            try:
                payload = self._conn.recv_bytes()
            except (EOFError, OSError):
                return  # the server is gone: nothing left to score for
            message = decode_to_worker(payload)
            if isinstance(message, Score):
                self._score(message)
            elif isinstance(message, LoadGeneration):
                # NOTE: load beside the served generation in a thread, so scoring goes on during a swap.
                threading.Thread(target=self._load, args=(message,), daemon=True).start()
            elif isinstance(message, DropGeneration):
                self._generations.pop(message.generation, None)
                self._scorers_by_path.pop(message.generation, None)

    def _preload(self) -> None:
        """Import the model libraries and pin their thread pools before the first load."""
        import lightgbm  # noqa: F401
        import mlflow.lightgbm
        import mlflow.sklearn
        import mlflow.xgboost  # noqa: F401
        import xgboost  # noqa: F401
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)

    def _score(self, request: Score) -> None:
        import numpy as np

        scorers = self._generations.get(request.generation)
        scorer = scorers.get(request.model) if scorers else None
        if scorer is None:
            self._send(
                ScoreFailed(
                    seq=request.seq,
                    error=f"generation {request.generation} model {request.model!r} is not loaded in this worker",
                )
            )
            return
        try:
            started = time.perf_counter()
            features = np.frombuffer(request.features, dtype=np.float64).reshape(request.rows, -1)
            probabilities = scorer.fraud_probability(features)
            seconds = time.perf_counter() - started
        except Exception as error:
            self._log.error(
                "score.failed",
                request_id=request.request_id,
                model=request.model,
                generation=request.generation,
                error=repr(error),
            )
            self._send(ScoreFailed(seq=request.seq, error=f"scoring failed: {error}"))
            return
        self._log.debug(
            "batch.scored",
            request_id=request.request_id,
            model=request.model,
            generation=request.generation,
            rows=request.rows,
            ms=round(seconds * 1000, 3),
        )
        self._send(Scored(seq=request.seq, probabilities=probabilities.tobytes(), seconds=seconds))

    def _load(self, request: LoadGeneration) -> None:
        import numpy as np

        from fraud_inference.models.scoring import Scorer, load_scorer

        loaded: dict[str, Scorer] = {}
        errors: dict[str, str] = {}
        seconds: dict[str, float] = {}
        held = {path: scorer for by_path in list(self._scorers_by_path.values()) for path, scorer in by_path.items()}
        by_path: dict[str, Scorer] = {}
        for artifact in request.models:
            started = time.perf_counter()
            key = artifact.ref.key
            try:
                scorer = held.get(artifact.path) or load_scorer(artifact)
                by_path[artifact.path] = scorer
                # Warm up and prove it scores before the generation can become active.
                warm = scorer.fraud_probability(np.zeros((1, len(artifact.features)), dtype=np.float64))
                if warm.shape != (1,) or not np.isfinite(warm).all():
                    raise ValueError(f"warm-up scoring gave {warm!r}, not one finite probability")
                loaded[key] = scorer
            except Exception as error:
                errors[key] = f"{type(error).__name__}: {error}"
            seconds[key] = time.perf_counter() - started
            self._log.info(
                "model.loaded" if key in loaded else "model.load_failed",
                model=key,
                name=artifact.ref.name,
                version=artifact.ref.version,
                generation=request.generation,
                seconds=round(seconds[key], 3),
                error=errors.get(key),
            )
        if not errors:
            self._scorers_by_path[request.generation] = by_path
            self._generations[request.generation] = loaded
        self._send(GenerationLoaded(generation=request.generation, errors=errors, load_seconds=seconds))

    def _send(self, message: WorkerStarted | GenerationLoaded | Scored | ScoreFailed) -> None:
        payload = encode(message)
        with self._send_lock:
            try:
                self._conn.send_bytes(payload)
            except (BrokenPipeError, OSError):
                os._exit(0)  # the server is gone
