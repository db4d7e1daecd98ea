"""The pool of inference workers: generations, batched least-busy dispatch, retries, replacement of dead workers."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.observability.logging import get_logger
from fraud_inference.pool.errors import (
    InferenceTimeoutError,
    NoWorkerError,
    PoolError,
    RequestRefusedError,
    ScoringError,
    WorkerLostError,
)
from fraud_inference.pool.messages import (
    Cancel,
    Columns,
    DropGeneration,
    GenerationLoaded,
    LoadGeneration,
    Refused,
    Score,
    Scored,
    ScoreFailed,
    ToServer,
    WorkerStarted,
)
from fraud_inference.pool.process import WorkerProcess
from fraud_inference.pool.queue import Batch, BatchPolicy, PendingRequest, RequestQueue, Scores, overload_reason
from fraud_inference.pool.worker import WorkerOptions

__all__ = ["InferencePool", "PoolStatus", "Scores"]

log = get_logger("fraud_inference.pool")
_START_TIMEOUT_S = 120.0
_LOAD_TIMEOUT_S = 300.0
_MAX_ATTEMPTS = 2  # a request whose worker died is retried once: scoring is a pure function
# Two batches per worker: it starts the next while the server reads the last answer, and no more, so that
# under load requests wait in the queue, where they coalesce, rather than in a worker's pipe.
_BATCHES_PER_WORKER = 2
_RESTART_BACKOFF_S = 1.0
_RESTART_BACKOFF_MAX_S = 60.0
# A worker's heartbeat thread writes every 0.5 s, scoring or not; silent this long while it holds work,
# it is stopped or stuck holding the GIL: replaced. A batch merely slow goes on (see HUNG_WORKER_S).
_HEARTBEAT_S = 0.5
_SILENT_NS = 5_000_000_000
# A worker busy with one batch this long (a large request, a slow model) gets no second batch behind it.
_BUSY_LONG_NS = 50_000_000


class PoolStatus(msgspec.Struct, frozen=True):
    """What `/readyz` reports about the pool."""

    size: int
    live_workers: int
    ready_workers: int
    active_generation: int | None
    queued: int
    restarts: int
    batches: int = 0
    batched_requests: int = 0
    worker_pids: dict[int, int] = msgspec.field(default_factory=dict)
    """The process id of each live worker, by worker index."""


class InferencePool:
    """`size` worker processes; every request names the generation that must score it."""

    def __init__(
        self,
        size: int,
        worker_options: Callable[[int], WorkerOptions],
        *,
        timeout_s: float,
        hung_worker_s: float = 120.0,
        batching: BatchPolicy | None = None,
        queue_limit: int = 1024,
        on_generation_loaded: Callable[[GenerationLoaded], None] | None = None,
    ) -> None:
        self.size = size
        self._on_generation_loaded = on_generation_loaded
        self._worker_options = worker_options
        self._timeout_s = timeout_s
        self._hung_ns = round(hung_worker_s * 1e9)
        self._watchdog: asyncio.Task[None] | None = None
        self._workers: dict[int, WorkerProcess] = {}
        self._loads: dict[tuple[int, int], asyncio.Future[GenerationLoaded]] = {}
        self._artifacts: dict[int, tuple[ModelArtifact, ...]] = {}
        self._inflight_by_generation: Counter[int] = Counter()
        self._retired: set[int] = set()
        self._sequence = itertools.count(1)
        self._queue = RequestQueue(batching or BatchPolicy(), queue_limit)
        self._pump_timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._batches_sent = 0
        self._requests_sent = 0  # over batches: how many requests each model call served on average
        self._stopping = False
        self.active_generation: int | None = None
        self.restarts = 0
        self.last_worker_failure: str | None = None
        self._crashes: Counter[int] = Counter()  # deaths in a row of the worker in each slot, before it loaded

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has imported its libraries."""
        for index in range(1, self.size + 1):
            self._spawn(index)
        await asyncio.wait_for(asyncio.gather(*(worker.started for worker in self._workers.values())), _START_TIMEOUT_S)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        log.info("pool.started", workers=self.size, pids=[w.pid for w in self._workers.values()])

    async def stop(self) -> None:
        """Stop every worker; requests still waiting fail."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        workers = list(self._workers.values())
        for worker in workers:
            worker.close()
        await asyncio.gather(*(asyncio.to_thread(worker.join_or_kill) for worker in workers))
        waiting = [request for worker in workers for request in worker.inflight.drain()]
        for request in [*waiting, *self._queue]:
            if not request.future.done():
                request.future.set_exception(WorkerLostError("the pool is shutting down"))
        self._workers.clear()

    def worker_pids(self) -> dict[int, int | None]:
        """The PID of each live worker, by worker index."""
        return {index: worker.pid for index, worker in self._workers.items() if worker.is_alive()}

    @property
    def overloaded(self) -> bool:
        """QUEUE_LIMIT requests already wait for a worker: a new one would be refused."""
        return self._queue.full

    @property
    def overload_reason(self) -> str:
        return overload_reason(len(self._queue))

    def status(self) -> PoolStatus:
        live = [worker for worker in self._workers.values() if worker.is_alive()]
        active = self.active_generation
        ready = [worker for worker in live if active is not None and active in worker.generations]
        return PoolStatus(
            size=self.size,
            live_workers=len(live),
            ready_workers=len(ready),
            active_generation=active,
            queued=len(self._queue) + sum(1 for worker in live for _ in worker.inflight.requests()),
            restarts=self.restarts,
            batches=self._batches_sent,
            batched_requests=self._requests_sent,
            worker_pids={worker.index: worker.pid for worker in live if worker.pid is not None},
        )

    # -- generations -----------------------------------------------------------------------------

    async def load(self, generation: int, artifacts: Sequence[ModelArtifact]) -> dict[str, str]:
        """Load `generation` in every live worker beside what they serve; return errors per model key.

        All or nothing: when any worker fails to load any model, every worker drops the generation.
        """
        self._artifacts[generation] = tuple(artifacts)
        workers = [worker for worker in self._workers.values() if worker.is_alive()]
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
            if worker.is_alive():
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

    async def score(
        self, generation: int, model: str, body: bytes | Columns, request_id: str, *, pyfunc_output: bool = False
    ) -> Scores:
        """Score one request's rows (its raw JSON `instances`, or its `Columns`) with exactly `generation`'s `model`;
        with `pyfunc_output`, the answer also holds what MLflow's pyfunc wrapper returns for them.

        The request waits in the queue while every worker is busy and may share a batch with other
        requests for the same model and generation; its answer holds exactly its own rows' scores.
        Raises `RequestRefusedError` when the worker refuses the rows (invalid, too many), `PoolOverloadedError`
        when QUEUE_LIMIT requests already wait, `InferenceTimeoutError` after INFERENCE_TIMEOUT_S.
        """
        if not self._held_by_a_live_worker(generation):
            raise NoWorkerError(f"no live worker holds generation {generation}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scores] = loop.create_future()
        request = PendingRequest(
            next(self._sequence), generation, model, body, request_id, future, pyfunc_output=pyfunc_output
        )
        self._queue.put(request)
        self._inflight_by_generation[generation] += 1
        # NOTE: a timer that fails the future, not asyncio.wait_for: that wraps every request in another future
        # and callback (~10 us of the HTTP process per request here).
        deadline = loop.call_later(self._timeout_s, _time_out, future, self._timeout_s)
        try:
            self._pump_soon()
            return await future
        finally:
            deadline.cancel()
            # Timed out, or cancelled because the client went away: if it still waits, nobody needs it scored;
            # if a worker has it, its rest is dropped when nobody else waits for its batch.
            if not self._queue.discard(request) and _gave_up(future):
                self._drop_work(request)
            self._inflight_by_generation[generation] -= 1
            if generation in self._retired:
                self._release_idle_generations()

    def _held_by_a_live_worker(self, generation: int) -> bool:
        return any(worker.is_alive() and generation in worker.generations for worker in self._workers.values())

    def _pump(self) -> None:
        """Send queued requests, as batches, to every worker with room: least busy first."""
        if not self._queue:
            return
        now = self._queue.clock()
        # In rounds, one batch per worker with room in each, the least busy first: what waits is shared between
        # them, so a burst of large requests is scored by every free worker at once, not queued behind one.
        while ready := [
            worker
            for worker in sorted(self._workers.values(), key=lambda candidate: len(candidate.inflight))
            if worker.is_alive() and worker.inflight.has_room(now, most=_BATCHES_PER_WORKER, busy_long_ns=_BUSY_LONG_NS)
        ]:
            sent = False
            for position, worker in enumerate(ready):
                requests = self._queue.take(worker.generations, now, share=len(ready) - position)
                if requests:
                    self._send_batch(worker, requests)
                    sent = True
                if not self._queue:
                    return
            if not sent:
                break
        if self._queue.policy.wait_ns and self._pump_timer is None:
            due = self._queue.next_due()
            if due is not None:
                # Rounded up to the microsecond: waking early would only find nothing due and wait again.
                delay_s = max(0, -(-(due - now) // 1000)) / 1e6
                self._pump_timer = asyncio.get_running_loop().call_later(delay_s, self._pump_after_wait)

    def _pump_soon(self) -> None:
        """Pump once the requests that arrived in this turn of the event loop are queued, so that they leave in
        one batch: granian hands the loop several requests at a time under load, and each batch costs a pipe
        write, a worker wake-up and a model call."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_scheduled_now)

    def _pump_scheduled_now(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _pump_after_wait(self) -> None:
        self._pump_timer = None
        self._pump()

    def _send_batch(self, worker: WorkerProcess, requests: list[PendingRequest]) -> None:
        head = requests[0]
        batch = Batch(next(self._sequence), requests, self._queue.clock())
        worker.inflight.add(batch)
        self._batches_sent += 1
        self._requests_sent += len(requests)
        worker.send(
            Score(
                seq=batch.seq,
                generation=head.generation,
                model=head.model,
                bodies=tuple(request.body for request in requests),
                request_ids=tuple(request.request_id for request in requests),
                pyfunc_outputs=tuple(request.pyfunc_output for request in requests)
                if any(request.pyfunc_output for request in requests)
                else (),
            )
        )

    def _drop_work(self, request: PendingRequest) -> None:
        """Drop a timed-out request's work if its worker can: once every request of its batch has given up,
        the worker skips the rows it has not scored yet. The worker itself is not suspected: slow is not hung
        (see `_watch`)."""
        batch = request.batch
        if batch is None or any(not other.future.done() for other in batch.requests):
            return  # others still wait for the batch
        for worker in self._workers.values():
            if worker.inflight.holds(batch):
                if worker.is_alive():
                    worker.send(Cancel(seq=batch.seq))
                return

    async def _watch(self) -> None:
        """Replace a worker only when it is really stuck: silent (no heartbeat) while it holds work, or one
        batch scored past HUNG_WORKER_S. Its requests are retried elsewhere, as for any dead worker."""
        while not self._stopping:
            await asyncio.sleep(_HEARTBEAT_S)
            now = self._queue.clock()
            for worker in list(self._workers.values()):
                reason = worker.stuck(now, silent_ns=_SILENT_NS, hung_ns=self._hung_ns)
                if reason is not None:
                    log.error("worker.hung", worker=worker.index, pid=worker.pid, reason=reason)
                    worker.kill()

    def _answer(self, batch: Batch, scored: Scored) -> None:
        """Give each request of the batch its own rows' scores, or its refusal."""
        probabilities = np.frombuffer(scored.probabilities, dtype=np.float64)
        offset = 0
        for index, (request, outcome) in enumerate(zip(batch.requests, scored.outcomes, strict=True)):
            if isinstance(outcome, Refused):
                if not request.future.done():
                    request.future.set_exception(RequestRefusedError(outcome))
                continue
            if not request.future.done():
                output = scored.pyfunc_outputs[index] if request.pyfunc_output else None
                request.future.set_result(Scores(probabilities[offset : offset + outcome], scored.seconds, output))
            offset += outcome

    # -- worker events ---------------------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerProcess:
        options = msgspec.structs.replace(self._worker_options(index), heartbeat_s=_HEARTBEAT_S)
        worker = WorkerProcess(options, on_message=self._on_message, on_exit=self._on_exit)
        self._workers[index] = worker
        return worker

    def _on_message(self, worker: WorkerProcess, message: ToServer) -> None:
        if isinstance(message, Scored | ScoreFailed):
            batch = worker.inflight.answered(message.seq, self._queue.clock())
            if batch is not None:
                if isinstance(message, Scored):
                    self._answer(batch, message)
                else:
                    for request in batch.requests:
                        if not request.future.done():
                            request.future.set_exception(ScoringError(message.error))
            self._pump()
        elif isinstance(message, GenerationLoaded):
            if self._on_generation_loaded is not None:
                self._on_generation_loaded(message)
            if not message.errors:
                worker.generations.add(message.generation)
                self._crashes[worker.index] = 0  # it loaded what it was asked to: not crash-looping
                # A replacement now holds the generation: what waited while no worker could take it goes now.
                self._pump()
            load = self._loads.get((worker.index, message.generation))
            if load is not None and not load.done():
                load.set_result(message)
        elif isinstance(message, WorkerStarted) and not worker.started.done():
            worker.started.set_result(message.pid)

    def _on_exit(self, worker: WorkerProcess) -> None:
        if self._stopping:
            return
        exitcode = worker.exitcode
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
        orphans = worker.inflight.drain()
        for request in reversed(orphans):  # put back in reverse, so they leave again in their order
            self._retry(request)
        self.restarts += 1
        self._crashes[worker.index] += 1
        self.last_worker_failure = (
            f"worker {worker.index} exited with code {exitcode} while serving generation(s) "
            f"{sorted(worker.generations)}"
            if worker.generations
            else f"worker {worker.index} exited with code {exitcode} "
            f"({self._crashes[worker.index]} time(s) in a row before loading its models)"
        )
        self._pump()
        asyncio.get_running_loop().create_task(self._replace(worker.index))

    def _retry(self, request: PendingRequest) -> None:
        if request.future.done():
            return
        if request.attempts >= _MAX_ATTEMPTS:
            request.future.set_exception(WorkerLostError("the worker scoring this request died, twice"))
            return
        if not self._held_by_a_live_worker(request.generation):
            request.future.set_exception(
                WorkerLostError(f"the worker scoring this request died and no live worker holds generation "
                                f"{request.generation}")
            )  # fmt: skip
            return
        request.attempts += 1
        request.batch = None
        self._queue.put_back(request)

    async def _replace(self, index: int) -> None:
        """Start a replacement and load every generation that may still be asked of it.

        A worker that dies again before loading its models (a model that crashes the process on load, memory
        too tight) is restarted after an exponential backoff, so the pool does not crash-loop at full speed.
        """
        crashes = self._crashes[index]
        if crashes > 1:
            delay = min(_RESTART_BACKOFF_S * 2 ** (crashes - 2), _RESTART_BACKOFF_MAX_S)
            log.warning("worker.restart_backoff", worker=index, crashes=crashes, retry_in_s=delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
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


def _gave_up(future: asyncio.Future[Scores]) -> bool:
    """Cancelled (the client went away) or timed out: nobody waits for these rows any more."""
    return future.cancelled() or (future.done() and isinstance(future.exception(), InferenceTimeoutError))


def _time_out(future: asyncio.Future[Scores], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(InferenceTimeoutError(f"no answer from the inference workers within {timeout_s:g} s"))
