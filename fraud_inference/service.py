"""The fraud-scoring service: resolves models, loads generations into the pool, and scores requests."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import shutil
import tempfile
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import msgspec

from fraud_inference.models.artifact import ModelArtifact, UnservableModelError, fetch_artifact
from fraud_inference.observability.logging import get_logger
from fraud_inference.observability.metrics import Metrics
from fraud_inference.pool import BatchPolicy, InferencePool, Scores, WorkerOptions
from fraud_inference.registry import ModelRef, Registry, RegistryUnavailableError, ResolutionError
from fraud_inference.settings import Settings

__all__ = [
    "FraudService",
    "Generation",
    "GenerationLoadError",
    "RefreshInProgressError",
    "RefreshOutcome",
    "VersionChange",
]

log = get_logger("fraud_inference.service")


class GenerationLoadError(Exception):
    """A generation could not be loaded; `errors` says why, per model key."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {error}" for key, error in errors.items()))
        self.errors = dict(errors)


class RefreshInProgressError(Exception):
    """Another refresh is running; refreshes never interleave."""


class VersionChange(msgspec.Struct, frozen=True, rename={"previous": "from", "current": "to"}):
    """A served model whose selected version moved, e.g. `{"from": "3", "to": "4"}`."""

    previous: str | None
    current: str


class RefreshOutcome(msgspec.Struct, frozen=True):
    """What a refresh did: the generation now active and which models changed version."""

    generation: Generation
    changed: dict[str, VersionChange]


class Generation(msgspec.Struct, frozen=True):
    """A numbered set of served models that every worker holds; requests are scored by exactly one."""

    number: int
    models: dict[str, ModelArtifact]


class FraudService:
    """Own the registry, the pool and the active generation."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if settings.mlflow_tracking_uri is None:
            raise ValueError("MLFLOW_TRACKING_URI is required")
        self.settings = settings
        self.metrics = metrics
        self.pool = InferencePool(
            settings.workers,
            lambda index: WorkerOptions(
                index=index,
                log_level=settings.log_level,
                log_format=settings.log_format,
                max_rows=settings.max_batch_rows,
                error_detail=settings.error_detail,
            ),
            timeout_s=settings.inference_timeout_s,
            hung_worker_s=settings.hung_worker_s,
            batching=BatchPolicy(
                max_requests=settings.batch_max_requests,
                max_bytes=settings.batch_max_bytes,
                wait_ns=round(settings.batch_wait_ms * 1_000_000),
            ),
            queue_limit=settings.queue_limit,
            on_generation_loaded=lambda loaded: metrics.record_loads(loaded.errors, loaded.load_seconds),
        )
        self.active: Generation | None = None
        self.not_ready_reason = "starting: the inference workers are loading"
        self._tracking_uri = settings.mlflow_tracking_uri
        self._registry: Registry | None = None
        self._generations = itertools.count(1)
        self._downloads = Path(tempfile.mkdtemp(prefix="fraud-inference-models-"))
        self._background: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self._frozen = False

    async def start(self) -> None:
        """Start the workers now; load the first generation in the background, retrying the registry."""
        await self.pool.start()
        self._run_in_background(self._load_first_generation())
        if self.settings.refresh_interval_s > 0:
            self._run_in_background(self._refresh_periodically(self.settings.refresh_interval_s))

    def _run_in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def refresh(self) -> RefreshOutcome:
        """Refresh (see `_refresh`), counting the outcome: swapped, unchanged, busy, registry_unavailable, refused."""
        try:
            outcome = await self._refresh()
        except RefreshInProgressError:
            self.metrics.refreshes.labels("busy").inc()
            raise
        except RegistryUnavailableError:
            self.metrics.refreshes.labels("registry_unavailable").inc()
            raise
        except GenerationLoadError:
            self.metrics.refreshes.labels("refused").inc()
            raise
        self.metrics.refreshes.labels("swapped" if outcome.changed else "unchanged").inc()
        return outcome

    async def _refresh(self) -> RefreshOutcome:
        """Resolve every served model again; swap every worker to a new generation if any version moved.

        Raises `RefreshInProgressError` when another refresh runs, `RegistryUnavailableError` when the
        registry cannot be asked, and `GenerationLoadError` (per model) when the new versions cannot be
        resolved, loaded or validated. On any failure the active generation keeps serving, untouched.
        """
        if self._refresh_lock.locked():
            raise RefreshInProgressError("a refresh is already running; try again when it has finished")
        async with self._refresh_lock:
            active = self.active
            if active is None:
                raise GenerationLoadError({"*": f"not ready yet: {self.not_ready_reason}"})
            try:
                refs = await self.resolve()
            except (ResolutionError, UnservableModelError) as error:
                raise GenerationLoadError({"*": str(error)}) from error
            current = {key: served.ref for key, served in active.models.items()}
            changed = {
                key: VersionChange(previous=current[key].version if key in current else None, current=ref.version)
                for key, ref in refs.items()
                if current.get(key) != ref
            }
            if not changed:
                log.info("refresh.unchanged", generation=active.number)
                return RefreshOutcome(generation=active, changed={})
            generation = await self.load_generation(refs)
            log.info(
                "refresh.swapped",
                generation=generation.number,
                previous=active.number,
                changed={key: msgspec.to_builtins(change) for key, change in changed.items()},
            )
            return RefreshOutcome(generation=generation, changed=changed)

    async def _refresh_periodically(self, interval_s: float) -> None:
        """Poll the registry so every replica converges on a promotion, wherever the admin's POST landed."""
        while True:
            await asyncio.sleep(interval_s)
            if self.active is None or self._refresh_lock.locked():
                continue
            try:
                await self.refresh()
            except (RefreshInProgressError, RegistryUnavailableError, GenerationLoadError) as error:
                log.warning("refresh.periodic_failed", error=str(error))

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.pool.stop()
        shutil.rmtree(self._downloads, ignore_errors=True)

    async def score(self, generation: Generation, model: str, instances: bytes, request_id: str) -> Scores:
        """Fraud probabilities of `generation`'s `model` for each row of `instances` (raw JSON), counted in the
        metrics. The worker checks the rows against the model's signature (`RequestRefusedError` if they fail)."""
        scores: Scores = await self.pool.score(generation.number, model, instances, request_id)
        ref = generation.models[model].ref
        self.metrics.record_scores(model, ref.version, scores.probabilities, ref.threshold, scores.seconds)
        return scores

    async def _load_first_generation(self) -> None:
        delay = 0.5
        while self.active is None:
            try:
                await self.load_generation(await self.resolve())
            except (
                RegistryUnavailableError,
                GenerationLoadError,
                ResolutionError,
                UnservableModelError,
            ) as error:
                self.not_ready_reason = f"cannot load the served models: {error}"
                log.error("startup.load_failed", error=str(error), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 30.0)

    async def resolve(self) -> dict[str, ModelRef]:
        """Ask the registry which version each served model should be, now."""
        registry = await self._get_registry()
        # NOTE: awaited to its end, not abandoned at a deadline: each HTTP call is bounded by REGISTRY_TIMEOUT_S
        # (two attempts, see registry.py), so a hung registry fails the call itself, and no call of a refresh
        # that has given up is left running in a thread to overlap the next one.
        return await asyncio.to_thread(registry.resolve_all, self.settings.models)

    async def load_generation(self, refs: Mapping[str, ModelRef]) -> Generation:
        """Download, load in every worker, and (only if all loaded) activate a new generation."""
        registry = await self._get_registry()
        fetched = await asyncio.gather(
            *(asyncio.to_thread(self._fetch, registry, ref) for ref in refs.values()), return_exceptions=True
        )
        for outcome in fetched:
            # Registry down, or a bug: neither is a property of the model version, so not a per-model 422.
            if isinstance(outcome, BaseException) and not isinstance(outcome, UnservableModelError | ResolutionError):
                raise outcome
        errors = {key: str(o) for key, o in zip(refs, fetched, strict=True) if isinstance(o, BaseException)}
        if errors:
            raise GenerationLoadError(errors)
        artifacts = [outcome for outcome in fetched if isinstance(outcome, ModelArtifact)]
        number = next(self._generations)
        errors = await self.pool.load(number, artifacts)
        if errors:
            raise GenerationLoadError(errors)
        generation = Generation(number=number, models={a.ref.key: a for a in artifacts})
        self.pool.activate(number)
        self.active = generation
        self._publish(generation)
        # NOTE: the server holds ~200k long-lived objects (MLflow, SQLAlchemy, Litestar); a full collection
        # scanning them stalled every request in flight for ~100-200 ms under load. Frozen objects are never
        # scanned again; what requests allocate is collected as before. Frozen once, after a collection: a
        # frozen cycle is never freed, so freezing at every generation kept each refresh's garbage for good.
        if not self._frozen:
            gc.collect()
            gc.freeze()
            self._frozen = True
        log.info(
            "generation.active",
            generation=number,
            models={key: f"{m.ref.name}/{m.ref.version} ({m.ref.selected_by})" for key, m in generation.models.items()},
        )
        return generation

    def _publish(self, generation: Generation) -> None:
        """What is served now, for dashboards: the generation and one `model_info` series per model."""
        self.metrics.generation.set(generation.number)
        self.metrics.model_info.clear()
        for key, served in generation.models.items():
            ref = served.ref
            self.metrics.model_info.labels(key, ref.name, ref.version, ref.selected_by, served.flavor).set(1)

    def _fetch(self, registry: Registry, ref: ModelRef) -> ModelArtifact:
        artifact = fetch_artifact(
            registry,
            ref,
            self._downloads,
            dependency_policy=self.settings.dependency_check,
            trust=self.settings.model_trust(),
        )
        for violation in artifact.dependency_violations():  # only under DEPENDENCY_CHECK=warn
            log.warning("model.dependency_mismatch", model=ref.key, version=ref.version, detail=violation)
        return artifact

    async def _get_registry(self) -> Registry:
        if self._registry is None:
            self._registry = await asyncio.to_thread(
                Registry,
                self._tracking_uri,
                alias=self.settings.model_alias,
                stages=self.settings.model_stages,
                timeout_s=self.settings.registry_timeout_s,
            )
        return self._registry
