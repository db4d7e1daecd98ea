"""The fraud-scoring service: resolves models, loads generations into the pool, and scores requests."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import shutil
import tempfile
from collections.abc import Collection, Coroutine, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from fraud_inference.models.artifact import ModelArtifact, UnservableModelError
from fraud_inference.models.reading import fetch_artifact
from fraud_inference.observability.logging import get_logger
from fraud_inference.observability.metrics import Metrics
from fraud_inference.observers import Observers, ProtocolName, ScoredRequest
from fraud_inference.parity import check_parity_isolated
from fraud_inference.pool import (
    BatchPolicy,
    Columns,
    InferencePool,
    InferenceTimeoutError,
    PoolError,
    PoolOverloadedError,
    RequestRefusedError,
    Scores,
    WorkerOptions,
)
from fraud_inference.pool.messages import PYFUNC_ANSWER, GenerationLoaded
from fraud_inference.readiness import Readiness, readiness_of
from fraud_inference.registry import ModelRef, Registry, RegistryUnavailableError, ResolutionError
from fraud_inference.settings import Settings

__all__ = [
    "FraudService",
    "Generation",
    "GenerationLoadError",
    "InferenceFailedError",
    "InvalidRowsError",
    "NotReadyError",
    "OverloadedError",
    "PredictionError",
    "RefreshInProgressError",
    "RefreshOutcome",
    "ScoredRows",
    "Selection",
    "TimedOutError",
    "TooManyRowsError",
    "UnknownModelError",
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


class PredictionError(Exception):
    """Why a prediction could not be made, in the domain's terms; each protocol renders it in its own convention."""


class NotReadyError(PredictionError):
    """No generation is active yet (or none could be loaded): `reason` says why. Retry later."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not ready: {reason}")
        self.reason = reason


class UnknownModelError(PredictionError):
    """The request names a model this service does not serve; `served` lists the keys (empty under
    ERROR_DETAIL=generic, which keeps them out of answers)."""

    def __init__(self, model: str, served: tuple[str, ...]) -> None:
        listed = f"; served models: {', '.join(served)}" if served else ""
        super().__init__(f"unknown model {model[:64]!r}{listed}")
        self.model = model[:64]
        self.served = served


class InvalidRowsError(PredictionError):
    """The rows do not fit the model's signature: `message` says what, at `row` (index) and `feature` when known."""

    def __init__(self, message: str, *, row: int | None = None, feature: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = row
        self.feature = feature


class TooManyRowsError(PredictionError):
    """More rows in one request than MAX_BATCH_ROWS."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(f"{rows} rows exceed MAX_BATCH_ROWS={limit}")
        self.rows = rows
        self.limit = limit


class OverloadedError(PredictionError):
    """QUEUE_LIMIT requests already wait for a worker: refused at once. Retry later."""


class TimedOutError(PredictionError):
    """No answer from the inference workers within INFERENCE_TIMEOUT_S."""


class InferenceFailedError(PredictionError):
    """The workers could not score the rows (a worker died twice, the model failed). Retry later."""


class Selection(msgspec.Struct, frozen=True):
    """The model a request is scored by: its key, and the generation pinned for the whole request."""

    key: str
    generation: Generation

    @property
    def artifact(self) -> ModelArtifact:
        return self.generation.models[self.key]


class ScoredRows(msgspec.Struct, frozen=True):
    """The fraud probability of each row, in request order, and exactly which version and threshold decided it."""

    selection: Selection
    probabilities: npt.NDArray[np.float64]
    outputs: Mapping[str, bytes] = msgspec.field(default_factory=dict)
    """Every named output the request wanted, by name (`pool.messages`), as the worker encoded it."""

    @property
    def pyfunc_output(self) -> bytes | None:
        """When asked for: the JSON array of what MLflow's pyfunc wrapper of the version returns for the rows."""
        return self.outputs.get(PYFUNC_ANSWER)

    @property
    def ref(self) -> ModelRef:
        return self.selection.artifact.ref

    @property
    def flagged(self) -> npt.NDArray[np.bool_]:
        """`fraud_probability >= threshold` (the version's tag `threshold`, else 0.5), per row."""
        flagged: npt.NDArray[np.bool_] = self.probabilities >= self.ref.threshold
        return flagged


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
    positive_classes: dict[str, str | None] = msgspec.field(default_factory=dict)
    """Per model, the class whose probability is scored, as the workers found it at load (None: a custom model)."""


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
                extra_features=settings.extra_features,
            ),
            timeout_s=settings.inference_timeout_s,
            hung_worker_s=settings.hung_worker_s,
            batching=BatchPolicy(
                max_requests=settings.batch_max_requests,
                max_bytes=settings.batch_max_bytes,
                wait_ns=round(settings.batch_wait_ms * 1_000_000),
            ),
            queue_limit=settings.queue_limit,
            on_generation_loaded=self._on_generation_loaded,
        )
        self._positive_classes: dict[int, dict[str, str | None]] = {}
        self.active: Generation | None = None
        self.serving = asyncio.Event()
        self._pool_started = asyncio.Event()
        """Set when the first generation becomes active: the service answers predictions from then on."""
        self.not_ready_reason = "starting: the inference workers are loading"
        self._tracking_uri = settings.mlflow_tracking_uri
        self._registry: Registry | None = None
        self._generations = itertools.count(1)
        self._downloads = Path(tempfile.mkdtemp(prefix="fraud-inference-models-"))
        self._background: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self._frozen = False
        self.observers = Observers()
        """Handed every scored request (`observers.ScoredRequest`), after its answer is decided."""

    def _on_generation_loaded(self, loaded: GenerationLoaded) -> None:
        self.metrics.record_loads(loaded.errors, loaded.load_seconds)
        self._positive_classes.setdefault(loaded.generation, {}).update(loaded.positive_classes)

    def readiness(self) -> Readiness:
        """Whether the service can score now, and why not: what `/readyz` and `/metrics` report."""
        active = None if self.active is None else self.active.number
        return readiness_of(active, self.not_ready_reason, self.pool.status(), self.pool.last_worker_failure)

    async def start(self) -> None:
        """Start the workers now; load the first generation in the background, retrying the registry.

        The first generation is resolved and downloaded while the workers import their libraries (~6 s here):
        only its load waits for them.
        """
        self._run_in_background(self._load_first_generation())
        await self.pool.start()
        self._pool_started.set()
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
            if not changed:
                log.info("refresh.unchanged", generation=active.number)
                return RefreshOutcome(generation=active, changed={})
            generation = await self.load_generation(refs, gate=changed.keys())
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
            except RefreshInProgressError as error:
                log.warning("refresh.periodic_failed", error=str(error))
            except (RegistryUnavailableError, GenerationLoadError):
                pass  # `refresh` logged it with its cause

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.pool.stop()
        shutil.rmtree(self._downloads, ignore_errors=True)

    def check_capacity(self) -> None:
        """Raise `OverloadedError` when QUEUE_LIMIT requests already wait: call it before reading a body, since
        under a burst, reading megabytes only to refuse them is what hurts."""
        if self.pool.overloaded:
            raise OverloadedError(f"overloaded: {self.pool.overload_reason}")

    def select(self, model: str | None) -> Selection:
        """The active generation's `model` (DEFAULT_MODEL when None), pinned for the whole request.

        Raises `NotReadyError` before the first generation is active, `UnknownModelError` for a key not served.
        """
        generation = self.active
        if generation is None:
            raise NotReadyError(self.not_ready_reason)
        key = model or self.settings.default_model
        if key not in generation.models:
            served = () if self.settings.error_detail == "generic" else tuple(generation.models)
            raise UnknownModelError(key, served)
        return Selection(key=key, generation=generation)

    async def predict(
        self,
        model: str | Selection | None,
        rows: bytes,
        request_id: str,
        *,
        wants: tuple[str, ...] = (),
        protocol: ProtocolName = "v1",
    ) -> ScoredRows:
        """Score `rows` (raw JSON: an array of row objects) with `model`, a key or a `Selection` made earlier.

        See `_predict`, the one scoring path of every protocol.
        """
        return await self._predict(model, rows, request_id, wants=wants, protocol=protocol)

    async def predict_columns(
        self,
        model: str | Selection | None,
        columns: Columns,
        request_id: str,
        *,
        wants: tuple[str, ...] = (),
        protocol: ProtocolName = "v1",
    ) -> ScoredRows:
        """Score rows sent as `columns` (`dataframe_split`, OIP tensors), as `predict` scores rows: the worker
        decodes them straight into the model's batch, with the same checks and refusals."""
        return await self._predict(model, columns, request_id, wants=wants, protocol=protocol)

    async def _predict(
        self,
        model: str | Selection | None,
        rows: bytes | Columns,
        request_id: str,
        *,
        wants: tuple[str, ...],
        protocol: ProtocolName,
    ) -> ScoredRows:
        """Score `rows` with `model`, a key or a `Selection` made earlier; with the named outputs in `wants` too
        (`pool.messages.PYFUNC_ANSWER`: what MLflow's pyfunc wrapper of the version returns for them, scored in
        the worker by the same model call).

        The one scoring path of every protocol: which model, ready or not, which generation, counted in the
        metrics. Raises the `PredictionError`s: `NotReadyError`, `UnknownModelError`, `InvalidRowsError`,
        `TooManyRowsError`, `OverloadedError`, `TimedOutError`, `InferenceFailedError`.
        """
        selection = model if isinstance(model, Selection) else self.select(model)
        try:
            # The worker decodes the rows against this generation's signature: the server process stays free for HTTP.
            scores = await self.score(selection.generation, selection.key, rows, request_id, wants=wants)
        except RequestRefusedError as error:
            refusal = error.refusal
            if refusal.reason == "too_many_rows":
                raise TooManyRowsError(refusal.rows, self.settings.max_batch_rows) from None
            raise InvalidRowsError(refusal.message, row=refusal.row, feature=refusal.feature) from None
        except PoolOverloadedError as error:
            raise OverloadedError(f"overloaded: {error}") from None
        except InferenceTimeoutError as error:
            raise TimedOutError(str(error)) from None
        except PoolError as error:
            raise InferenceFailedError(f"inference failed: {error}") from None
        scored = ScoredRows(selection=selection, probabilities=scores.probabilities, outputs=scores.outputs)
        if self.observers:  # NOTE: a truth test, not a call, when nobody observes: the hot path stays as it was
            self.observers.notify(ScoredRequest(request_id=request_id, rows=rows, scored=scored, protocol=protocol))
        return scored

    async def score(
        self,
        generation: Generation,
        model: str,
        instances: bytes | Columns,
        request_id: str,
        *,
        wants: tuple[str, ...] = (),
    ) -> Scores:
        """Fraud probabilities of `generation`'s `model` for each row of `instances` (raw JSON, or `Columns`),
        counted in the metrics. The worker checks the rows against the model's signature (`RequestRefusedError` if
        they fail)."""
        scores: Scores = await self.pool.score(generation.number, model, instances, request_id, wants=wants)
        ref = generation.models[model].ref
        self.metrics.record_scores(model, ref.version, scores.probabilities, ref.threshold, scores.seconds)
        return scores

    async def _load_first_generation(self) -> None:
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

    async def resolve(self) -> dict[str, ModelRef]:
        """Ask the registry which version each served model should be, now."""
        registry = await self._get_registry()
        # NOTE: awaited to its end, not abandoned at a deadline: each HTTP call is bounded by REGISTRY_TIMEOUT_S
        # (two attempts, see registry.py), so a hung registry fails the call itself, and no call of a refresh
        # that has given up is left running in a thread to overlap the next one.
        return await asyncio.to_thread(registry.resolve_all, self.settings.models)

    async def load_generation(self, refs: Mapping[str, ModelRef], *, gate: Collection[str] = ()) -> Generation:
        """Download, gate the models named in `gate` (PARITY_CHECK), load in every worker, and (only if all
        loaded) activate a new generation."""
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
        await self._parity_gate([artifact for artifact in artifacts if artifact.ref.key in gate])
        number = next(self._generations)
        await self._pool_started.wait()
        errors = await self.pool.load(number, artifacts)
        positive_classes = self._positive_classes.pop(number, {})
        if errors:
            raise GenerationLoadError(errors)
        generation = Generation(
            number=number, models={a.ref.key: a for a in artifacts}, positive_classes=positive_classes
        )
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
        )
        return generation

    async def _parity_gate(self, artifacts: list[ModelArtifact]) -> None:
        """Refuse versions whose served numbers differ from MLflow's loader (PARITY_CHECK=strict), or log them (warn).

        Runs in a spawned process: the model libraries and a custom model's code stay out of the HTTP process.
        """
        if not artifacts or self.settings.parity_check == "off":
            return
        reports = await asyncio.to_thread(
            check_parity_isolated, artifacts, log_level=self.settings.log_level, log_format=self.settings.log_format
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
        if self.settings.parity_check == "strict" or any(not report.loaded for report in reports if report.failures):
            raise GenerationLoadError(failures)
        for key, failure in failures.items():
            log.warning("model.parity_mismatch", model=key, detail=failure)

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
