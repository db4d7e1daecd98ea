"""The pool of inference workers: one facade over its three parts (generations, dispatch, supervision)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.pool.dispatch import Dispatcher
from fraud_inference.pool.errors import WorkerLostError
from fraud_inference.pool.generations import Generations, LoadReport
from fraud_inference.pool.messages import Columns, GenerationLoaded, Scored, ScoreFailed, ToServer, WorkerStarted
from fraud_inference.pool.process import WorkerProcess
from fraud_inference.pool.queue import BatchPolicy, Scores, overload_reason
from fraud_inference.pool.shadow_messages import Shadowed
from fraud_inference.pool.supervision import Supervisor, WorkerFactory, spawn_worker
from fraud_inference.pool.worker import WorkerOptions

__all__ = ["InferencePool", "PoolStatus", "Scores"]


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
    """`size` worker processes; every request names the generation that must score it.

    The parts, each in its own module: `Generations` (what each generation holds, the active one, loading and
    dropping), `Dispatcher` (the queue, batches, answers and retries) and `Supervisor` (spawning through
    `worker_factory`, heartbeats, replacing the dead). This class routes the workers' messages between them.
    `on_load_reported` sees every worker's report of every load, a replacement's included (for the metrics), and
    `on_shadowed` every report of a challenger's turns (`worker_shadow`). `cores`: the CPUs the service may use
    (default `dispatch.available_cores()`), which decide when a challenger may take a turn.
    """

    def __init__(
        self,
        size: int,
        worker_options: Callable[[int], WorkerOptions],
        *,
        timeout_s: float,
        hung_worker_s: float = 120.0,
        batching: BatchPolicy | None = None,
        queue_limit: int = 1024,
        on_load_reported: Callable[[GenerationLoaded], None] | None = None,
        on_shadowed: Callable[[Shadowed], None] | None = None,
        worker_factory: WorkerFactory | None = None,
        cores: int | None = None,
    ) -> None:
        self.size = size
        self._on_load_reported = on_load_reported
        self._on_shadowed = on_shadowed
        self._supervisor = Supervisor(
            size,
            worker_factory or spawn_worker(worker_options),
            hung_ns=round(hung_worker_s * 1e9),
            clock=lambda: self._dispatcher.queue.clock(),
            on_message=self._on_message,
            on_died=self._on_died,
            reload=lambda replacement: self._generations.reload(replacement),
        )
        self._generations = Generations(lambda: list(self._supervisor.workers.values()))
        self._dispatcher = Dispatcher(
            lambda: list(self._supervisor.workers.values()),
            self._supervisor.holding,
            timeout_s=timeout_s,
            batching=batching or BatchPolicy(),
            queue_limit=queue_limit,
            started=self._generations.request_started,
            ended=self._generations.request_ended,
            cores=cores,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has imported its libraries."""
        await self._supervisor.start()

    async def stop(self) -> None:
        """Stop every worker; requests still waiting fail."""
        workers = await self._supervisor.stop()
        held = [request for worker in workers for request in worker.inflight.drain()]
        self._dispatcher.fail_all(held, WorkerLostError("the pool is shutting down"))

    def worker_pids(self) -> dict[int, int | None]:
        """The PID of each live worker, by worker index."""
        return {worker.index: worker.pid for worker in self._supervisor.live()}

    @property
    def active_generation(self) -> int | None:
        return self._generations.active

    @property
    def restarts(self) -> int:
        return self._supervisor.restarts

    @property
    def last_worker_failure(self) -> str | None:
        return self._supervisor.last_worker_failure

    @property
    def overloaded(self) -> bool:
        """QUEUE_LIMIT requests already wait for a worker: a new one would be refused."""
        return self._dispatcher.queue.full

    @property
    def overload_reason(self) -> str:
        return overload_reason(len(self._dispatcher.queue))

    def status(self) -> PoolStatus:
        live = self._supervisor.live()
        active = self._generations.active
        ready = [worker for worker in live if active is not None and active in worker.generations]
        return PoolStatus(
            size=self.size,
            live_workers=len(live),
            ready_workers=len(ready),
            active_generation=active,
            queued=self._dispatcher.waiting(),
            restarts=self._supervisor.restarts,
            batches=self._dispatcher.batches_sent,
            batched_requests=self._dispatcher.requests_sent,
            worker_pids={worker.index: worker.pid for worker in live if worker.pid is not None},
        )

    # -- generations -----------------------------------------------------------------------------

    async def load(
        self, generation: int, artifacts: Sequence[ModelArtifact], challengers: Sequence[ModelArtifact] = ()
    ) -> LoadReport:
        """Load `generation` (and `challengers` beside some of its models) in every live worker beside what they
        serve; what they reported, errors per model key.

        All or nothing: when any worker fails to load any model, every worker drops the generation.
        """
        return await self._generations.load(generation, artifacts, challengers)

    def activate(self, generation: int) -> None:
        """Make `generation` the one new requests are dispatched under, in one step for every worker."""
        self._generations.activate(generation)

    def drop(self, generation: int) -> None:
        """Tell every worker to release `generation` (staged or retired)."""
        self._generations.drop(generation)

    # -- scoring ---------------------------------------------------------------------------------

    async def score(
        self, generation: int, model: str, body: bytes | Columns, request_id: str, *, wants: tuple[str, ...] = ()
    ) -> Scores:
        """Score one request's rows (its raw JSON `instances`, or its `Columns`) with exactly `generation`'s `model`;
        the answer holds their fraud probabilities and the other named outputs in `wants` (`messages.PYFUNC_ANSWER`).

        The request waits in the queue while every worker is busy and may share a batch with other
        requests for the same model and generation; its answer holds exactly its own rows' scores.
        Raises `RequestRefusedError` when the worker refuses the rows (invalid, too many), `PoolOverloadedError`
        when QUEUE_LIMIT requests already wait, `InferenceTimeoutError` after INFERENCE_TIMEOUT_S.
        """
        return await self._dispatcher.score(generation, model, body, request_id, wants=wants)

    # -- worker events ---------------------------------------------------------------------------

    def _on_message(self, worker: WorkerProcess, message: ToServer) -> None:
        if isinstance(message, Scored | ScoreFailed):
            self._dispatcher.answered(worker, message)
        elif isinstance(message, GenerationLoaded):
            if self._on_load_reported is not None:
                self._on_load_reported(message)
            self._generations.loaded(worker, message)
            if not message.errors:
                self._supervisor.loaded(worker)
                # A replacement now holds the generation: what waited while no worker could take it goes now.
                self._dispatcher.pump()
        elif isinstance(message, Shadowed):
            if self._on_shadowed is not None:
                self._on_shadowed(message)
        elif isinstance(message, WorkerStarted) and not worker.started.done():
            worker.started.set_result(message.pid)

    def _on_died(self, worker: WorkerProcess) -> None:
        self._generations.fail_loads(worker)
        self._dispatcher.retry(worker.inflight.drain())
