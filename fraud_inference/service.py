"""The fraud-scoring service: the pool of inference workers, the generations' lifecycle and the dataplane, put
together and started and stopped as one."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fraud_inference.dataplane import DataPlane
from fraud_inference.lifecycle import Generation, ModelLifecycle, RefreshOutcome
from fraud_inference.observability.metrics import Metrics
from fraud_inference.observers import Observers
from fraud_inference.pool import BatchPolicy, InferencePool, WorkerOptions
from fraud_inference.pool.messages import GenerationLoaded
from fraud_inference.readiness import Readiness, readiness_of
from fraud_inference.settings import Settings

__all__ = ["FraudService"]


class FraudService:
    """The pool, `lifecycle` (which generation is served, and refreshing it) and `dataplane` (scoring requests
    with it), sharing one settings object and one set of metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
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
                shadow_share=settings.shadow_share,
                explain_nice=settings.explain_nice,
            ),
            timeout_s=settings.inference_timeout_s,
            hung_worker_s=settings.hung_worker_s,
            batching=BatchPolicy(
                max_requests=settings.batch_max_requests,
                max_bytes=settings.batch_max_bytes,
                wait_ns=round(settings.batch_wait_ms * 1_000_000),
            ),
            queue_limit=settings.queue_limit,
            on_load_reported=self._record_load,
            on_shadowed=metrics.shadow.record,
        )
        self.lifecycle = ModelLifecycle(settings, metrics, self.pool)
        self.dataplane = DataPlane(
            settings,
            metrics,
            self.pool,
            active=lambda: self.lifecycle.active,
            not_ready_reason=lambda: self.lifecycle.not_ready_reason,
        )
        self._background: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> Generation | None:
        """The generation new requests are scored by; None before the first is loaded."""
        return self.lifecycle.active

    @property
    def serving(self) -> asyncio.Event:
        """Set when the first generation becomes active."""
        return self.lifecycle.serving

    @property
    def observers(self) -> Observers:
        """Handed every scored request (`observers.ScoredRequest`), after its answer is decided."""
        return self.dataplane.observers

    def readiness(self) -> Readiness:
        """Whether the service can score now, and why not: what `/readyz` and `/metrics` report."""
        active = None if self.active is None else self.active.number
        return readiness_of(active, self.lifecycle.not_ready_reason, self.pool.status(), self.pool.last_worker_failure)

    async def refresh(self) -> RefreshOutcome:
        """Resolve every served model again and swap to a new generation if a version moved (`ModelLifecycle`)."""
        return await self.lifecycle.refresh()

    async def start(self) -> None:
        """Start the workers now; load the first generation in the background, retrying the registry.

        The first generation is resolved and downloaded while the workers import their libraries (~6 s here):
        only its load waits for them.
        """
        self._run_in_background(self.lifecycle.load_first_generation())
        await self.pool.start()
        self.lifecycle.workers_started.set()
        if self.settings.refresh_interval_s > 0:
            self._run_in_background(self.lifecycle.refresh_periodically(self.settings.refresh_interval_s))

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.pool.stop()
        self.lifecycle.close()

    def _run_in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _record_load(self, loaded: GenerationLoaded) -> None:
        self.metrics.record_loads(loaded.errors, loaded.load_seconds)
