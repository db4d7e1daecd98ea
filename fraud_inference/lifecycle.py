"""The served generations' lifecycle: which version to serve (the registry), fetching it, gating it, loading it in
every worker, refreshing it, and the one generation active now."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import shutil
import tempfile
from collections.abc import Collection, Mapping
from functools import partial
from pathlib import Path

import msgspec

from fraud_inference.challengers import Challengers, prepare_challengers, still_unreachable
from fraud_inference.models.artifact import ModelArtifact, UnservableModelError
from fraud_inference.models.reading import fetch_artifact
from fraud_inference.observability.logging import get_logger
from fraud_inference.observability.metrics import Metrics
from fraud_inference.parity import check_parity_isolated
from fraud_inference.pool import InferencePool
from fraud_inference.pool.shadow_messages import CHALLENGER_LOAD_ERROR
from fraud_inference.registry import ModelRef, Registry, RegistryUnavailableError, ResolutionError
from fraud_inference.settings import Settings

__all__ = [
    "Generation",
    "GenerationLoadError",
    "ModelLifecycle",
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


class Generation(msgspec.Struct, frozen=True):
    """A numbered set of served models that every worker holds; requests are scored by exactly one."""

    number: int
    models: dict[str, ModelArtifact]
    positive_classes: dict[str, str | None] = msgspec.field(default_factory=dict)
    """Per model, the class whose probability is scored, as the workers found it at load (None: a custom model)."""
    explain_refusals: dict[str, str] = msgspec.field(default_factory=dict)
    """Per model whose loaded form cannot explain (a scikit-learn pipeline's steps), why not, as the workers found."""
    challengers: Challengers = msgspec.field(default_factory=Challengers)
    """Per model, its challenger (CHALLENGER_ALIAS) loaded beside it in every worker, or refused and why."""


class VersionChange(msgspec.Struct, frozen=True, rename={"previous": "from", "current": "to"}):
    """A served model whose selected version moved, e.g. `{"from": "3", "to": "4"}`."""

    previous: str | None
    current: str


class RefreshOutcome(msgspec.Struct, frozen=True):
    """What a refresh did: the generation now active and which models changed version."""

    generation: Generation
    changed: dict[str, VersionChange]
    challengers_changed: tuple[str, ...] = ()
    """Models whose challenger was set, moved or deleted (its alias), or is tried again."""


class ModelLifecycle:
    """Resolve, fetch, gate and load generations into `pool`; hold the active one (`active`).

    The pool must have started (`workers_started` set) before a generation is loaded; everything before the load
    (the registry, downloads, the parity gate) runs while the workers still import their libraries.
    """

    def __init__(self, settings: Settings, metrics: Metrics, pool: InferencePool) -> None:
        if settings.mlflow_tracking_uri is None:
            raise ValueError("MLFLOW_TRACKING_URI is required")
        self.settings = settings
        self.metrics = metrics
        self.pool = pool
        self.active: Generation | None = None
        self.serving = asyncio.Event()
        """Set when the first generation becomes active: the service answers predictions from then on."""
        self.workers_started = asyncio.Event()
        self.not_ready_reason = "starting: the inference workers are loading"
        self._tracking_uri = settings.mlflow_tracking_uri
        self._registry: Registry | None = None
        self._generations = itertools.count(1)
        self._downloads = Path(tempfile.mkdtemp(prefix="fraud-inference-models-"))
        self._refresh_lock = asyncio.Lock()
        self._frozen = False

    def close(self) -> None:
        """Remove the downloaded model files."""
        shutil.rmtree(self._downloads, ignore_errors=True)

    async def load_first_generation(self) -> None:
        """Resolve and load the first generation, retrying with backoff (0.5 s doubling to 30 s) until it is active."""
        delay = 0.5
        for attempt in itertools.count(1):
            try:
                await self.load_generation(await self.resolve())
                return
            except RegistryUnavailableError as error:
                # NOTE: clients see that the registry is down, not where it is; the operator's log line says both.
                self.not_ready_reason = "the model registry cannot be reached; retrying"
                log.warning(
                    "startup.registry_unavailable", attempt=attempt, error=str(error), retry_in_s=round(delay, 2)
                )
            except (GenerationLoadError, ResolutionError, UnservableModelError) as error:
                self.not_ready_reason = f"cannot load the served models: {error}"
                log.error("startup.load_failed", attempt=attempt, error=str(error), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 30.0)

    async def refresh(self) -> RefreshOutcome:
        """Refresh (see `_refresh`), counting the outcome: swapped, unchanged, busy, registry_unavailable, refused."""
        try:
            outcome = await self._refresh()
        except RefreshInProgressError:
            self.metrics.refreshes.labels("busy").inc()
            raise
        except RegistryUnavailableError as error:
            self.metrics.refreshes.labels("registry_unavailable").inc()
            log.warning("refresh.registry_unavailable", error=str(error))
            raise
        except GenerationLoadError as error:
            self.metrics.refreshes.labels("refused").inc()
            # The admin's 422 carries the cause too, but an on-call engineer reads the logs.
            log.error("refresh.refused", errors=error.errors)
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
            challengers = await self.resolve_challengers(refs)
            settled = active.challengers.refs()
            challengers_changed = tuple(
                sorted(key for key in {*challengers, *settled} if challengers.get(key) != settled.get(key))
            )
            if not changed and not challengers_changed:
                log.info("refresh.unchanged", generation=active.number)
                return RefreshOutcome(generation=active, changed={})
            retried = active.challengers.unreachable(challengers)
            # NOTE: a challenger refused because its download failed is tried again at each refresh; while it still
            # fails, loading every champion again in a new generation would change nothing but cost every worker.
            if not changed and set(retried) == set(challengers_changed):
                registry = await self._get_registry()
                if await still_unreachable(retried, fetch=partial(self._fetch, registry)):
                    log.info("refresh.unchanged", generation=active.number, challengers_unreachable=sorted(retried))
                    return RefreshOutcome(generation=active, changed={})
            generation = await self.load_generation(
                refs, gate=changed.keys(), challengers=challengers, previous=active.challengers
            )
            log.info(
                "refresh.swapped",
                generation=generation.number,
                previous=active.number,
                changed={key: msgspec.to_builtins(change) for key, change in changed.items()},
                challengers_changed=challengers_changed,
            )
            return RefreshOutcome(generation=generation, changed=changed, challengers_changed=challengers_changed)

    async def refresh_periodically(self, interval_s: float) -> None:
        """Poll the registry so every replica converges on a promotion, wherever the admin's POST landed."""
        while True:
            await asyncio.sleep(interval_s)
            if self.active is None or self._refresh_lock.locked():
                continue
            try:
                await self.refresh()
            except RefreshInProgressError as error:
                log.warning("refresh.periodic_failed", error=str(error))
            except (RegistryUnavailableError, GenerationLoadError):
                pass  # `refresh` logged it with its cause

    async def resolve(self) -> dict[str, ModelRef]:
        """Ask the registry which version each served model should be, now."""
        registry = await self._get_registry()
        # NOTE: awaited to its end, not abandoned at a deadline: each HTTP call is bounded by REGISTRY_TIMEOUT_S
        # (two attempts, see registry.py), so a hung registry fails the call itself, and no call of a refresh
        # that has given up is left running in a thread to overlap the next one.
        return await asyncio.to_thread(registry.resolve_all, self.settings.models)

    async def resolve_challengers(self, refs: Mapping[str, ModelRef]) -> dict[str, ModelRef]:
        """Ask the registry which challenger (CHALLENGER_ALIAS) each served model has now; none when it is empty."""
        alias = self.settings.challenger_alias
        if not alias:
            return {}
        registry = await self._get_registry()
        try:
            return await asyncio.to_thread(registry.challengers, refs, alias)
        except ResolutionError as error:  # a bad threshold tag on a challenger: it is not served, nor compared
            log.warning("challenger.unresolved", error=str(error))
            return {}

    async def load_generation(
        self,
        refs: Mapping[str, ModelRef],
        *,
        gate: Collection[str] = (),
        challengers: Mapping[str, ModelRef] | None = None,
        previous: Challengers | None = None,
    ) -> Generation:
        """Download, gate the models named in `gate` (PARITY_CHECK), load in every worker, and (only if all
        loaded) activate a new generation.

        Each model's challenger (`challengers`, else asked of the registry) goes through the same gates (reusing
        what `previous` settled for the same version) but never fails the generation: one that fails a gate, or
        its load, is left out and reported refused.
        """
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
        await gate_parity([artifact for artifact in artifacts if artifact.ref.key in gate], self.settings)
        shadows = await prepare_challengers(
            await self.resolve_challengers(refs) if challengers is None else challengers,
            previous or Challengers(),
            fetch=partial(self._fetch, registry),
            gate=self._gate_challengers,
        )
        await self.workers_started.wait()
        while True:
            number = next(self._generations)
            loaded = await self.pool.load(number, artifacts, list(shadows.active.values()))
            failed = {
                key.removeprefix(CHALLENGER_LOAD_ERROR): f"cannot load: {error}"
                for key, error in loaded.errors.items()
                if key.removeprefix(CHALLENGER_LOAD_ERROR) in shadows.active and key.startswith(CHALLENGER_LOAD_ERROR)
            }
            if not failed or len(failed) != len(loaded.errors):
                break
            # Only challengers failed: the champions load again without them, in a generation of their own.
            shadows = shadows.refuse(failed)
        if loaded.errors:
            raise GenerationLoadError(loaded.errors)
        generation = Generation(
            number=number, models={a.ref.key: a for a in artifacts}, positive_classes=loaded.positive_classes,
            explain_refusals=loaded.explain_refusals, challengers=shadows,
        )  # fmt: skip
        self.pool.activate(number)
        self.active = generation
        self.serving.set()
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
            challengers={key: f"{a.ref.name}/{a.ref.version}" for key, a in generation.challengers.active.items()},
            refused_challengers={key: r.reason for key, r in generation.challengers.refused.items()},
        )
        return generation

    async def _gate_challengers(self, artifacts: list[ModelArtifact]) -> dict[str, str]:
        """The parity gate's refusals of challengers, by model key (they never fail the generation)."""
        try:
            await gate_parity(artifacts, self.settings)
        except GenerationLoadError as error:
            return error.errors
        return {}

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
            compiled_trees=self.settings.compiled_trees_cache(),
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


async def gate_parity(artifacts: list[ModelArtifact], settings: Settings) -> None:
    """Refuse versions whose served numbers differ from MLflow's loader (PARITY_CHECK=strict), or log them (warn).

    Runs in a spawned process: the model libraries and a custom model's code stay out of the HTTP process.
    Raises `GenerationLoadError` naming each refused model.
    """
    if not artifacts or settings.parity_check == "off":
        return
    reports = await asyncio.to_thread(
        check_parity_isolated, artifacts, log_level=settings.log_level, log_format=settings.log_format
    )
    failures = {report.model: "; ".join(report.failures) for report in reports if report.failures}
    for report in reports:
        log.info(
            "model.parity_checked", model=report.model, version=report.version, rows=report.rows,
            rows_from=report.rows_from, example_unused=report.example_unused, max_abs_diff=report.max_abs_diff,
            seconds=report.seconds,
        )  # fmt: skip
    if not failures:
        return
    if settings.parity_check == "strict" or any(not report.loaded for report in reports if report.failures):
        raise GenerationLoadError(failures)
    for key, failure in failures.items():
        log.warning("model.parity_mismatch", model=key, detail=failure)
