"""Supervision of the worker processes: spawn them through a factory, watch their heartbeats, replace the dead."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import msgspec

from fraud_inference.observability.logging import get_logger
from fraud_inference.pool.messages import ToServer
from fraud_inference.pool.process import WorkerProcess
from fraud_inference.pool.worker import WorkerOptions

__all__ = ["HEARTBEAT_S", "START_TIMEOUT_S", "Supervisor", "WorkerFactory", "spawn_worker"]

log = get_logger("fraud_inference.pool")

START_TIMEOUT_S = 120.0
HEARTBEAT_S = 0.5
"""How often a worker's heartbeat thread writes, scoring or not."""
# Silent this long while it holds work, a worker is stopped or stuck holding the GIL: replaced. A batch merely
# slow goes on (see HUNG_WORKER_S).
_SILENT_NS = 5_000_000_000
_RESTART_BACKOFF_S = 1.0
_RESTART_BACKOFF_MAX_S = 60.0

OnMessage = Callable[[WorkerProcess, ToServer], None]
OnExit = Callable[[WorkerProcess], None]
WorkerFactory = Callable[[int, OnMessage, OnExit], WorkerProcess]
"""Build and start worker `index`, reporting its messages and its exit through the two callbacks."""


def spawn_worker(worker_options: Callable[[int], WorkerOptions]) -> WorkerFactory:
    """The factory of real worker processes: `worker_options(index)`, with the supervisor's heartbeat."""

    def spawn(index: int, on_message: OnMessage, on_exit: OnExit) -> WorkerProcess:
        options = msgspec.structs.replace(worker_options(index), heartbeat_s=HEARTBEAT_S)
        return WorkerProcess(options, on_message=on_message, on_exit=on_exit)

    return spawn


class Supervisor:
    """`size` worker slots, each holding a live process or the replacement being started for it.

    `on_died(worker)` runs first when a worker dies (its loads and in-flight requests are the caller's to fail or
    retry); then a replacement is spawned, after a backoff when the slot keeps dying before it loads anything,
    and `reload(replacement)` gives it the generations it must hold.
    """

    def __init__(
        self,
        size: int,
        factory: WorkerFactory,
        *,
        hung_ns: int,
        clock: Callable[[], int],
        on_message: OnMessage,
        on_died: OnExit,
        reload: Callable[[WorkerProcess], Awaitable[list[int]]],
    ) -> None:
        self.size = size
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts = 0
        self.last_worker_failure: str | None = None
        self._factory = factory
        self._hung_ns = hung_ns
        self._clock = clock
        self._on_message = on_message
        self._on_died = on_died
        self._reload = reload
        self._crashes: Counter[int] = Counter()  # deaths in a row of the worker in each slot, before it loaded
        self._watchdog: asyncio.Task[None] | None = None
        self.stopping = False

    async def start(self) -> None:
        """Start every worker and wait until each has imported its libraries."""
        for index in range(1, self.size + 1):
            self._spawn(index)
        await asyncio.wait_for(asyncio.gather(*(worker.started for worker in self.workers.values())), START_TIMEOUT_S)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        log.info("pool.started", workers=self.size, pids=[w.pid for w in self.workers.values()])

    async def stop(self) -> list[WorkerProcess]:
        """Close every worker's pipe and wait for each to exit (SIGKILL past 5 s); return them, for their requests."""
        self.stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        workers = list(self.workers.values())
        for worker in workers:
            worker.close()
        await asyncio.gather(*(asyncio.to_thread(worker.join_or_kill) for worker in workers))
        self.workers.clear()
        return workers

    def live(self) -> list[WorkerProcess]:
        return [worker for worker in self.workers.values() if worker.is_alive()]

    def holding(self, generation: int) -> bool:
        """Some live worker holds `generation`."""
        return any(worker.is_alive() and generation in worker.generations for worker in self.workers.values())

    def loaded(self, worker: WorkerProcess) -> None:
        """`worker` loaded what it was asked to: it is not crash-looping."""
        self._crashes[worker.index] = 0

    def _spawn(self, index: int) -> WorkerProcess:
        worker = self._factory(index, self._on_message, self._exited)
        self.workers[index] = worker
        return worker

    async def _watch(self) -> None:
        """Replace a worker only when it is really stuck: silent (no heartbeat) while it holds work, or one
        batch scored past HUNG_WORKER_S. Its requests are retried elsewhere, as for any dead worker."""
        while not self.stopping:
            await asyncio.sleep(HEARTBEAT_S)
            now = self._clock()
            for worker in list(self.workers.values()):
                reason = worker.stuck(now, silent_ns=_SILENT_NS, hung_ns=self._hung_ns)
                if reason is not None:
                    log.error("worker.hung", worker=worker.index, pid=worker.pid, reason=reason)
                    worker.kill()

    def _exited(self, worker: WorkerProcess) -> None:
        if self.stopping:
            return
        exitcode = worker.exitcode
        log.error("worker.died", worker=worker.index, pid=worker.pid, exitcode=exitcode, inflight=len(worker.inflight))
        self.restarts += 1
        self._crashes[worker.index] += 1
        self.last_worker_failure = (
            f"worker {worker.index} exited with code {exitcode} while serving generation(s) "
            f"{sorted(worker.generations)}"
            if worker.generations
            else f"worker {worker.index} exited with code {exitcode} "
            f"({self._crashes[worker.index]} time(s) in a row before loading its models)"
        )
        self._on_died(worker)
        asyncio.get_running_loop().create_task(self._replace(worker.index))

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
            if self.stopping:
                return
        replacement = self._spawn(index)
        try:
            await asyncio.wait_for(replacement.started, START_TIMEOUT_S)
            generations = await self._reload(replacement)
            log.info("worker.replaced", worker=index, pid=replacement.pid, generations=generations)
        except Exception as error:
            log.error("worker.replace_failed", worker=index, error=repr(error))
