"""Dispatch: requests wait in one queue and leave as batches for the least busy workers; answers and retries."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from fraud_inference.pool.errors import (
    InferenceTimeoutError,
    NoWorkerError,
    RequestRefusedError,
    ScoringError,
    WorkerLostError,
)
from fraud_inference.pool.messages import FRAUD_PROBABILITY, Cancel, Columns, Refused, Score, Scored, ScoreFailed
from fraud_inference.pool.process import WorkerProcess
from fraud_inference.pool.queue import Batch, BatchPolicy, PendingRequest, RequestQueue, Scores

__all__ = ["Dispatcher", "available_cores"]

_MAX_ATTEMPTS = 2  # a request whose worker died is retried once: scoring is a pure function
# Two batches per worker: it starts the next while the server reads the last answer, and no more, so that
# under load requests wait in the queue, where they coalesce, rather than in a worker's pipe.
_BATCHES_PER_WORKER = 2
# A worker busy with one batch this long (a large request, a slow model) gets no second batch behind it.
_BUSY_LONG_NS = 50_000_000


def available_cores() -> int:
    """The CPUs this process may use: its affinity, bounded by a cgroup's CPU quota (a container's CPU limit), as
    joblib (scikit-learn's own dependency) reads them."""
    from joblib import cpu_count  # type: ignore[import-untyped]

    return max(1, int(cpu_count()))


class Dispatcher:
    """The queue in front of the workers, the batches they hold, and each request's answer.

    `workers()` lists the worker slots; `holding(generation)` says whether a live worker holds a generation;
    `started` / `ended` count the requests naming each generation (so a retired one is dropped when idle).
    """

    def __init__(
        self,
        workers: Callable[[], list[WorkerProcess]],
        holding: Callable[[int], bool],
        *,
        timeout_s: float,
        batching: BatchPolicy,
        queue_limit: int,
        started: Callable[[int], None],
        ended: Callable[[int], None],
        cores: int | None = None,
    ) -> None:
        self._workers = workers
        # A challenger's turn takes a core of its own beside the HTTP process's: other workers may hold batches
        # only on the cores left (none on 2 cores). `cores`: the CPUs this service may use (`available_cores`).
        self._shadow_busy_limit = max(0, (cores or available_cores()) - 2)
        self._holding = holding
        self._timeout_s = timeout_s
        self._started = started
        self._ended = ended
        self.queue = RequestQueue(batching, queue_limit)
        self._sequence = itertools.count(1)
        self._pump_timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self.batches_sent = 0
        self.requests_sent = 0  # over batches: how many requests each model call served on average

    async def score(
        self, generation: int, model: str, body: bytes | Columns, request_id: str, *, wants: tuple[str, ...] = ()
    ) -> Scores:
        """Score one request's rows with exactly `generation`'s `model` (see `InferencePool.score`)."""
        if not self._holding(generation):
            raise NoWorkerError(f"no live worker holds generation {generation}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scores] = loop.create_future()
        request = PendingRequest(next(self._sequence), generation, model, body, request_id, future, wants=wants)
        self.queue.put(request)
        self._started(generation)
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
            if not self.queue.discard(request) and _gave_up(future):
                self._drop_work(request)
            self._ended(generation)
            # NOTE: a failure raised here keeps this frame in its traceback, and the frame's future (and the timer
            # holding it) keeps the failure: a cycle holding the request's body until a full collection, which
            # the frozen heap makes rare (24 concurrent 4.6 MB requests refused: +150-270 MiB held).
            del request, future, deadline

    def pump(self) -> None:
        """Send queued requests, as batches, to every worker with room: least busy first."""
        if not self.queue:
            return
        now = self.queue.clock()
        # In rounds, one batch per worker with room in each, the least busy first: what waits is shared between
        # them, so a burst of large requests is scored by every free worker at once, not queued behind one.
        while ready := self._ready(now):
            sent = False
            for position, (worker, plain, explained) in enumerate(ready):
                requests = self.queue.take(
                    worker.generations, now, share=len(ready) - position, plain=plain, explained=explained
                )
                if requests:
                    self._send_batch(worker, requests)
                    sent = True
                if not self.queue:
                    return
            if not sent:
                break
        if self.queue.policy.wait_ns and self._pump_timer is None:
            due = self.queue.next_due(
                explained=any(worker.is_alive() and worker.inflight.can_explain for worker in self._workers())
            )
            if due is not None:
                # Rounded up to the microsecond: waking early would only find nothing due and wait again.
                delay_s = max(0, -(-(due - now) // 1000)) / 1e6
                self._pump_timer = asyncio.get_running_loop().call_later(delay_s, self._pump_after_wait)

    def _ready(self, now_ns: int) -> list[tuple[WorkerProcess, bool, bool]]:
        """The live workers that may be sent a batch, least busy first, each with whether it may take a plain
        one (`InFlight.has_room`) and one of explanations (its explanation lane is free: `InFlight.can_explain`)."""
        ready = []
        for worker in sorted(self._workers(), key=lambda candidate: len(candidate.inflight)):
            if not worker.is_alive():
                continue
            plain = worker.inflight.has_room(now_ns, most=_BATCHES_PER_WORKER, busy_long_ns=_BUSY_LONG_NS)
            explained = bool(self.queue.explained) and worker.inflight.can_explain
            if plain or explained:
                ready.append((worker, plain, explained))
        return ready

    def answered(self, worker: WorkerProcess, message: Scored | ScoreFailed) -> None:
        """A worker's answer to a batch: each request gets its own rows' scores, or the failure."""
        batch = worker.inflight.answered(message.seq, self.queue.clock())
        if batch is not None:
            if isinstance(message, Scored):
                _answer(batch, message)
            else:
                for request in batch.requests:
                    if not request.future.done():
                        request.future.set_exception(ScoringError(message.error))
        self.pump()

    def retry(self, orphans: list[PendingRequest]) -> None:
        """Requests whose worker died go back to the front of the queue (once), in their order."""
        for request in reversed(orphans):  # put back in reverse, so they leave again in their order
            self._retry(request)
        self.pump()

    def fail_all(self, requests: list[PendingRequest], error: Exception) -> None:
        """Fail `requests` and every request still queued (the pool is stopping)."""
        for request in [*requests, *self.queue]:
            if not request.future.done():
                request.future.set_exception(error)

    def waiting(self) -> int:
        """Requests queued or held by a live worker."""
        held = sum(1 for worker in self._workers() if worker.is_alive() for _ in worker.inflight.requests())
        return len(self.queue) + held

    def _pump_soon(self) -> None:
        """Pump once the requests that arrived in this turn of the event loop are queued, so that they leave in
        one batch: granian hands the loop several requests at a time under load, and each batch costs a pipe
        write, a worker wake-up and a model call."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_scheduled_now)

    def _pump_scheduled_now(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def _pump_after_wait(self) -> None:
        self._pump_timer = None
        self.pump()

    def _send_batch(self, worker: WorkerProcess, requests: list[PendingRequest]) -> Batch:
        head = requests[0]
        # NOTE: a challenger's turn only when no request waits and a core is spare for it: the worker's own test
        # (no batch in its pipe) misses the HTTP process, which on few cores needs the CPU a challenger would take.
        busy = sum(1 for other in self._workers() if len(other.inflight))
        shadow = not self.queue and busy <= self._shadow_busy_limit
        batch = Batch(next(self._sequence), requests, self.queue.clock())
        worker.inflight.add(batch)
        self.batches_sent += 1
        self.requests_sent += len(requests)
        worker.send(
            Score(
                seq=batch.seq,
                generation=head.generation,
                model=head.model,
                bodies=tuple(request.body for request in requests),
                request_ids=tuple(request.request_id for request in requests),
                wants=tuple(request.wants for request in requests) if any(r.wants for r in requests) else (),
                shadow=shadow,
            )
        )
        return batch

    def _drop_work(self, request: PendingRequest) -> None:
        """Drop a timed-out request's work if its worker can: once every request of its batch has given up,
        the worker skips the rows it has not scored yet. The worker itself is not suspected: slow is not hung."""
        if request.batch_seq is None:
            return
        for worker in self._workers():
            batch = worker.inflight.get(request.batch_seq)
            if batch is not None:
                if worker.is_alive() and all(other.future.done() for other in batch.requests):
                    worker.send(Cancel(seq=batch.seq))  # else others still wait for the batch
                return

    def _retry(self, request: PendingRequest) -> None:
        if request.future.done():
            return
        if request.attempts >= _MAX_ATTEMPTS:
            request.future.set_exception(WorkerLostError("the worker scoring this request died, twice"))
            return
        if not self._holding(request.generation):
            request.future.set_exception(
                WorkerLostError(f"the worker scoring this request died and no live worker holds generation "
                                f"{request.generation}")
            )  # fmt: skip
            return
        request.attempts += 1
        request.batch_seq = None
        self.queue.put_back(request)


def _answer(batch: Batch, scored: Scored) -> None:
    """Give each request of the batch its own part of each output it wanted, or its refusal."""
    parts = {name: output.parts() for name, output in scored.outputs.items()}
    for index, (request, outcome) in enumerate(zip(batch.requests, scored.outcomes, strict=True)):
        if request.future.done():
            continue
        if isinstance(outcome, Refused):
            request.future.set_exception(RequestRefusedError(outcome))
            continue
        wanted = {FRAUD_PROBABILITY, *request.wants}
        outputs = {name: bytes(each[index]) for name, each in parts.items() if name in wanted}
        request.future.set_result(Scores(outputs, scored.seconds))


def _gave_up(future: asyncio.Future[Scores]) -> bool:
    """Cancelled (the client went away) or timed out: nobody waits for these rows any more."""
    return future.cancelled() or (future.done() and isinstance(future.exception(), InferenceTimeoutError))


def _time_out(future: asyncio.Future[Scores], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(InferenceTimeoutError(f"no answer from the inference workers within {timeout_s:g} s"))
