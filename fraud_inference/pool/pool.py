"""The pool of inference workers: generations, least-busy dispatch, retries and replacement of dead workers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.observability.logging import get_logger
from fraud_inference.pool.errors import (
    InferenceTimeoutError,
    NoWorkerError,
    PoolError,
    ScoringError,
    WorkerLostError,
)
from fraud_inference.pool.messages import (
    DropGeneration,
    GenerationLoaded,
    LoadGeneration,
    Score,
    Scored,
    ScoreFailed,
    ToServer,
    WorkerStarted,
)
from fraud_inference.pool.process import PendingScore, WorkerProcess
from fraud_inference.pool.worker import WorkerOptions

__all__ = ["InferencePool", "PoolStatus", "Scores"]

log = get_logger("fraud_inference.pool")
_START_TIMEOUT_S = 120.0
_LOAD_TIMEOUT_S = 300.0
_MAX_ATTEMPTS = 2  # a request whose worker died is retried once: scoring is a pure function


class Scores(msgspec.Struct, frozen=True):
    """A request's fraud probabilities, in row order, and how long the worker took to score them."""

    probabilities: npt.NDArray[np.float64]
    seconds: float


class PoolStatus(msgspec.Struct, frozen=True):
    """What `/readyz` reports about the pool."""

    size: int
    live_workers: int
    ready_workers: int
    active_generation: int | None
    queued: int
    restarts: int


class InferencePool:
    """`size` worker processes; every request names the generation that must score it."""

    def __init__(
        self,
        size: int,
        worker_options: Callable[[int], WorkerOptions],
        *,
        timeout_s: float,
        on_generation_loaded: Callable[[GenerationLoaded], None] | None = None,
    ) -> None:
        self.size = size
        self._on_generation_loaded = on_generation_loaded
        self._worker_options = worker_options
        self._timeout_s = timeout_s
        self._workers: dict[int, WorkerProcess] = {}
        self._loads: dict[tuple[int, int], asyncio.Future[GenerationLoaded]] = {}
        self._artifacts: dict[int, tuple[ModelArtifact, ...]] = {}
        self._inflight_by_generation: Counter[int] = Counter()
        self._retired: set[int] = set()
        self._sequence = itertools.count(1)
        self._stopping = False
        self.active_generation: int | None = None
        self.restarts = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has imported its libraries."""
        for index in range(1, self.size + 1):
            self._spawn(index)
        await asyncio.wait_for(asyncio.gather(*(worker.started for worker in self._workers.values())), _START_TIMEOUT_S)
        log.info("pool.started", workers=self.size, pids=[w.pid for w in self._workers.values()])

    async def stop(self) -> None:
        """Stop every worker; requests still waiting fail."""
        self._stopping = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.close()
        await asyncio.gather(*(asyncio.to_thread(worker.join_or_kill) for worker in workers))
        for worker in workers:
            for pending in worker.inflight.values():
                if not pending.future.done():
                    pending.future.set_exception(WorkerLostError("the pool is shutting down"))
        self._workers.clear()

    def worker_pids(self) -> dict[int, int | None]:
        """The PID of each live worker, by worker index."""
        return {index: worker.pid for index, worker in self._workers.items() if worker.alive}

    def status(self) -> PoolStatus:
        live = [worker for worker in self._workers.values() if worker.alive]
        active = self.active_generation
        ready = [worker for worker in live if active is not None and active in worker.generations]
        return PoolStatus(
            size=self.size,
            live_workers=len(live),
            ready_workers=len(ready),
            active_generation=active,
            queued=sum(len(worker.inflight) for worker in live),
            restarts=self.restarts,
        )

    # -- generations -----------------------------------------------------------------------------

    async def load(self, generation: int, artifacts: Sequence[ModelArtifact]) -> dict[str, str]:
        """Load `generation` in every live worker beside what they serve; return errors per model key.

        All or nothing: when any worker fails to load any model, every worker drops the generation.
        """
        self._artifacts[generation] = tuple(artifacts)
        workers = [worker for worker in self._workers.values() if worker.alive]
        if not workers:
            return {"*": "no live worker to load into"}
        outcomes = await asyncio.gather(
            *(self._load_in(worker, generation) for worker in workers), return_exceptions=True
        )
        errors: dict[str, str] = {}
        for worker, outcome in zip(workers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                errors.setdefault("*", f"worker {worker.index}: {type(outcome).__name__}: {outcome}")
            else:
                for key, error in outcome.errors.items():
                    errors.setdefault(key, error)
        if errors:
            self.drop(generation)
        return errors

    def activate(self, generation: int) -> None:
        """Make `generation` the one new requests are dispatched under, in one step for every worker."""
        previous, self.active_generation = self.active_generation, generation
        if previous is not None and previous != generation:
            self._retired.add(previous)
            self._release_idle_generations()

    def drop(self, generation: int) -> None:
        """Tell every worker to release `generation` (staged or retired)."""
        self._artifacts.pop(generation, None)
        self._retired.discard(generation)
        for worker in self._workers.values():
            worker.generations.discard(generation)
            if worker.alive:
                worker.send(DropGeneration(generation=generation))

    async def _load_in(self, worker: WorkerProcess, generation: int) -> GenerationLoaded:
        future: asyncio.Future[GenerationLoaded] = asyncio.get_running_loop().create_future()
        self._loads[(worker.index, generation)] = future
        try:
            worker.send(LoadGeneration(generation=generation, models=self._artifacts[generation]))
            return await asyncio.wait_for(future, _LOAD_TIMEOUT_S)
        finally:
            self._loads.pop((worker.index, generation), None)

    def _release_idle_generations(self) -> None:
        for generation in list(self._retired):
            if self._inflight_by_generation[generation] == 0:
                self.drop(generation)

    # -- scoring ---------------------------------------------------------------------------------

    async def score(self, generation: int, model: str, features: npt.NDArray[np.float64], request_id: str) -> Scores:
        """Score a C-contiguous float64 matrix with exactly `generation`'s `model`, on the least busy worker."""
        request = Score(
            seq=next(self._sequence),
            generation=generation,
            model=model,
            rows=features.shape[0],
            features=features.tobytes(),
            request_id=request_id,
        )
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        pending = PendingScore(request, future)
        self._inflight_by_generation[generation] += 1
        try:
            self._dispatch(pending)
            try:
                scored = await asyncio.wait_for(future, self._timeout_s)
            except TimeoutError:
                holder = self._forget(pending)
                if holder is not None and holder.alive and holder.last_heard < pending.sent_at:
                    # Silent for the whole timeout with work queued: hung (e.g. SIGSTOP). Kill it: its other
                    # requests are retried elsewhere and a replacement starts, as for any dead worker.
                    log.error("worker.hung", worker=holder.index, pid=holder.pid, silent_s=self._timeout_s)
                    holder.process.kill()
                raise InferenceTimeoutError(
                    f"no answer from the inference workers within {self._timeout_s:g} s"
                ) from None
        finally:
            self._inflight_by_generation[generation] -= 1
            if generation in self._retired:
                self._release_idle_generations()
        return Scores(probabilities=np.frombuffer(scored.probabilities, dtype=np.float64), seconds=scored.seconds)

    def _dispatch(self, pending: PendingScore) -> None:
        generation = pending.request.generation
        candidates = [w for w in self._workers.values() if w.alive and generation in w.generations]
        if not candidates:
            raise NoWorkerError(f"no live worker holds generation {generation}")
        worker = min(candidates, key=lambda candidate: len(candidate.inflight))
        worker.inflight[pending.request.seq] = pending
        pending.sent_at = time.monotonic()
        worker.send(pending.request)

    def _forget(self, pending: PendingScore) -> WorkerProcess | None:
        """Stop waiting for `pending`; return the worker that held it."""
        for worker in self._workers.values():
            if worker.inflight.pop(pending.request.seq, None) is not None:
                return worker
        return None

    # -- worker events ---------------------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(self._worker_options(index), on_message=self._on_message, on_exit=self._on_exit)
        self._workers[index] = worker
        return worker

    def _on_message(self, worker: WorkerProcess, message: ToServer) -> None:
        if isinstance(message, Scored | ScoreFailed):
            pending = worker.inflight.pop(message.seq, None)
            if pending is None or pending.future.done():
                return  # timed out already
            if isinstance(message, Scored):
                pending.future.set_result(message)
            else:
                pending.future.set_exception(ScoringError(message.error))
        elif isinstance(message, GenerationLoaded):
            if self._on_generation_loaded is not None:
                self._on_generation_loaded(message)
            if not message.errors:
                worker.generations.add(message.generation)
            load = self._loads.get((worker.index, message.generation))
            if load is not None and not load.done():
                load.set_result(message)
        elif isinstance(message, WorkerStarted) and not worker.started.done():
            worker.started.set_result(message.pid)

    def _on_exit(self, worker: WorkerProcess) -> None:
        if self._stopping:
            return
        exitcode = worker.process.exitcode
        log.error(
            "worker.died",
            worker=worker.index,
            pid=worker.pid,
            exitcode=exitcode,
            inflight=len(worker.inflight),
        )
        for (index, generation), load in list(self._loads.items()):
            if index == worker.index and not load.done():
                load.set_exception(PoolError(f"worker {index} died while loading generation {generation}"))
        orphans = list(worker.inflight.values())
        worker.inflight.clear()
        for pending in orphans:
            self._retry(pending)
        self.restarts += 1
        asyncio.get_running_loop().create_task(self._replace(worker.index))

    def _retry(self, pending: PendingScore) -> None:
        if pending.future.done():
            return
        if pending.attempts >= _MAX_ATTEMPTS:
            pending.future.set_exception(WorkerLostError("the worker scoring this request died, twice"))
            return
        pending.attempts += 1
        try:
            self._dispatch(pending)
        except PoolError as error:
            pending.future.set_exception(WorkerLostError(f"the worker scoring this request died: {error}"))

    async def _replace(self, index: int) -> None:
        """Start a replacement and load every generation that may still be asked of it."""
        replacement = self._spawn(index)
        try:
            await asyncio.wait_for(replacement.started, _START_TIMEOUT_S)
            generations = [g for g in self._artifacts if g == self.active_generation or g in self._retired]
            for generation in generations:
                loaded = await self._load_in(replacement, generation)
                if loaded.errors:
                    log.error("worker.reload_failed", worker=index, generation=generation, errors=loaded.errors)
            log.info("worker.replaced", worker=index, pid=replacement.pid, generations=generations)
        except Exception as error:
            log.error("worker.replace_failed", worker=index, error=repr(error))
