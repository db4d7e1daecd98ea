"""Generation bookkeeping: what each generation holds, which one is active, which are retired, and loading them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.observability.logging import get_logger
from fraud_inference.pool.errors import PoolError
from fraud_inference.pool.messages import DropGeneration, GenerationLoaded, LoadGeneration
from fraud_inference.pool.process import WorkerProcess

__all__ = ["Generations", "LoadReport"]

log = get_logger("fraud_inference.pool")
_LOAD_TIMEOUT_S = 300.0


class LoadReport(msgspec.Struct, frozen=True):
    """What loading one generation gave: `errors` per model key (empty when every worker loaded every model),
    and each worker's own report (load seconds, positive classes) in the order the workers answered."""

    errors: dict[str, str]
    reports: tuple[GenerationLoaded, ...] = ()

    @property
    def positive_classes(self) -> dict[str, str | None]:
        """Per model key, the class whose probability is scored (None for a custom model), as the workers found it."""
        return {key: found for report in self.reports for key, found in report.positive_classes.items()}

    @property
    def explain_refusals(self) -> dict[str, str]:
        """Per model key that cannot explain as loaded (a scikit-learn pipeline's steps), why not."""
        return {key: why for report in self.reports for key, why in report.explain_refusals.items()}


class Generations:
    """Generations staged, active and retired across the workers of one pool.

    A retired generation is dropped by every worker once no request still names it (`release_idle`), so a
    request dispatched under generation G is always scored by G, however many swaps happen meanwhile.
    """

    def __init__(self, workers: Callable[[], list[WorkerProcess]]) -> None:
        self._workers = workers
        self.active: int | None = None
        self._artifacts: dict[int, tuple[ModelArtifact, ...]] = {}
        self._challengers: dict[int, tuple[ModelArtifact, ...]] = {}
        self._retired: set[int] = set()
        self._inflight: Counter[int] = Counter()
        self._loads: dict[tuple[int, int], asyncio.Future[GenerationLoaded]] = {}

    async def load(
        self, generation: int, artifacts: Sequence[ModelArtifact], challengers: Sequence[ModelArtifact] = ()
    ) -> LoadReport:
        """Load `generation` (`artifacts`, and `challengers` beside some of them) in every live worker beside what
        they serve; what they reported, errors per model key (`shadow_messages.challenger_load_error_key` for a
        challenger).

        All or nothing: when any worker fails to load any model, every worker drops the generation.
        """
        self._artifacts[generation] = tuple(artifacts)
        self._challengers[generation] = tuple(challengers)
        workers = [worker for worker in self._workers() if worker.is_alive()]
        if not workers:
            return LoadReport(errors={"*": "no live worker to load into"})
        outcomes = await asyncio.gather(
            *(self.load_in(worker, generation) for worker in workers), return_exceptions=True
        )
        errors: dict[str, str] = {}
        reports: list[GenerationLoaded] = []
        for worker, outcome in zip(workers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                errors.setdefault("*", f"worker {worker.index}: {type(outcome).__name__}: {outcome}")
            else:
                reports.append(outcome)
                for key, error in outcome.errors.items():
                    errors.setdefault(key, error)
        if errors:
            self.drop(generation)
        return LoadReport(errors=errors, reports=tuple(reports))

    def activate(self, generation: int) -> None:
        """Make `generation` the one new requests are dispatched under, in one step for every worker."""
        previous, self.active = self.active, generation
        if previous is not None and previous != generation:
            self._retired.add(previous)
            self.release_idle()

    def drop(self, generation: int) -> None:
        """Tell every worker to release `generation` (staged or retired)."""
        self._artifacts.pop(generation, None)
        self._challengers.pop(generation, None)
        self._retired.discard(generation)
        for worker in self._workers():
            worker.generations.discard(generation)
            if worker.is_alive():
                worker.send(DropGeneration(generation=generation))

    async def load_in(self, worker: WorkerProcess, generation: int) -> GenerationLoaded:
        """Load `generation` in one worker; its `GenerationLoaded` report (errors included)."""
        future: asyncio.Future[GenerationLoaded] = asyncio.get_running_loop().create_future()
        self._loads[(worker.index, generation)] = future
        try:
            worker.send(
                LoadGeneration(
                    generation=generation, models=self._artifacts[generation],
                    challengers=self._challengers.get(generation, ()),
                )
            )  # fmt: skip
            return await asyncio.wait_for(future, _LOAD_TIMEOUT_S)
        finally:
            self._loads.pop((worker.index, generation), None)

    async def reload(self, replacement: WorkerProcess) -> list[int]:
        """Load into a replacement worker every generation that may still be asked of it; return them."""
        generations = [g for g in self._artifacts if g == self.active or g in self._retired]
        for generation in generations:
            loaded = await self.load_in(replacement, generation)
            if loaded.errors:
                log.error("worker.reload_failed", worker=replacement.index, generation=generation, errors=loaded.errors)
        return generations

    def loaded(self, worker: WorkerProcess, report: GenerationLoaded) -> None:
        """A worker's report of a load: it now holds the generation, unless it failed."""
        if not report.errors:
            worker.generations.add(report.generation)
        load = self._loads.get((worker.index, report.generation))
        if load is not None and not load.done():
            load.set_result(report)

    def fail_loads(self, worker: WorkerProcess) -> None:
        """`worker` died: its loads still running fail."""
        for (index, generation), load in list(self._loads.items()):
            if index == worker.index and not load.done():
                load.set_exception(PoolError(f"worker {index} died while loading generation {generation}"))

    def request_started(self, generation: int) -> None:
        self._inflight[generation] += 1

    def request_ended(self, generation: int) -> None:
        self._inflight[generation] -= 1
        if generation in self._retired:
            self.release_idle()

    def release_idle(self) -> None:
        """Drop every retired generation no request names any more."""
        for generation in list(self._retired):
            if self._inflight[generation] == 0:
                self.drop(generation)
