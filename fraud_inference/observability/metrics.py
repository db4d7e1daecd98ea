"""Prometheus metrics. Workers measure and report through their messages; the HTTP process records everything.

NOTE: one process holds every metric: the pool's workers send their timings with each answer, so totals
need no multiprocess files, cannot go backwards when a worker is replaced, and cannot leak dead workers' files.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from fraud_inference.pool.pool import PoolStatus

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# Probabilities: fine at both ends, where fraud models put nearly every transaction and the alerts live.
_SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_PREFIX = "fraud_inference"


class Metrics:
    """Every metric of the service, in a registry of its own (one per app, so tests can build several)."""

    def __init__(self) -> None:
        # `_created` series double the output and no dashboard here reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            f"{_PREFIX}_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.http_duration = Histogram(
            f"{_PREFIX}_http_request_duration_seconds", "HTTP request duration", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_in_flight = Gauge(f"{_PREFIX}_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.predictions = Counter(f"{_PREFIX}_predictions", "Requests scored", ["model", "version"], registry=r)
        self.rows_scored = Counter(f"{_PREFIX}_rows_scored", "Rows scored", ["model", "version"], registry=r)
        self.fraud_flagged = Counter(
            f"{_PREFIX}_fraud_flagged", "Rows at or over the model's threshold", ["model", "version"], registry=r
        )
        self.inference_duration = Histogram(
            f"{_PREFIX}_inference_duration_seconds", "Model scoring time, measured in the worker", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            f"{_PREFIX}_batch_rows", "Rows per scored request", ["model"], buckets=_ROW_BUCKETS, registry=r
        )
        self.fraud_score = Histogram(
            f"{_PREFIX}_fraud_score", "Fraud probabilities served", ["model"], buckets=_SCORE_BUCKETS, registry=r
        )
        self.model_loads = Counter(f"{_PREFIX}_model_loads", "Model loads in workers", ["model", "outcome"], registry=r)
        self.model_load_duration = Histogram(
            f"{_PREFIX}_model_load_duration_seconds", "Model load time in a worker", ["model"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )  # fmt: skip
        self.generation = Gauge(f"{_PREFIX}_generation", "The active generation", registry=r)
        self.model_info = Gauge(
            f"{_PREFIX}_model_info", "1 for each model version served now",
            ["model", "name", "version", "selected_by", "flavor"], registry=r,
        )  # fmt: skip
        self.refreshes = Counter(f"{_PREFIX}_refreshes", "Model refreshes", ["outcome"], registry=r)
        self.pool_workers = Gauge(f"{_PREFIX}_pool_workers", "Live inference workers", registry=r)
        self.worker_restarts = Counter(f"{_PREFIX}_worker_restarts", "Inference workers replaced", registry=r)
        self.queue_depth = Gauge(f"{_PREFIX}_queue_depth", "Requests sent to workers and not answered", registry=r)
        self.pool_batches = Counter(
            f"{_PREFIX}_pool_batches", "Batches sent to workers (one model call each)", registry=r
        )
        self.pool_batched_requests = Counter(
            f"{_PREFIX}_pool_batched_requests", "Requests in those batches: over batches, the coalescing", registry=r
        )
        self._counted: dict[Counter, int] = {}  # the pool's running totals, as far as each counter has them

    def render(self, pool: PoolStatus) -> bytes:
        """The exposition text, with the pool's gauges read now."""
        self.pool_workers.set(pool.live_workers)
        self.queue_depth.set(pool.queued)
        self._catch_up(self.worker_restarts, pool.restarts)
        self._catch_up(self.pool_batches, pool.batches)
        self._catch_up(self.pool_batched_requests, pool.batched_requests)
        return generate_latest(self.registry)

    def _catch_up(self, counter: Counter, total: int) -> None:
        """Bring `counter` up to a running `total` the pool keeps (Prometheus counters only increase)."""
        counter.inc(total - self._counted.get(counter, 0))
        self._counted[counter] = total

    def record_scores(
        self, model: str, version: str, probabilities: npt.NDArray[np.float64], threshold: float, seconds: float
    ) -> None:
        """Count one scored request and its rows, and add its probabilities to the score histogram."""
        rows = len(probabilities)
        self.predictions.labels(model, version).inc()
        self.rows_scored.labels(model, version).inc(rows)
        self.fraud_flagged.labels(model, version).inc(int(np.count_nonzero(probabilities >= threshold)))
        self.inference_duration.labels(model).observe(seconds)
        self.batch_rows.labels(model).observe(rows)
        _observe_many(self.fraud_score.labels(model), probabilities)

    def record_loads(self, errors: Mapping[str, str], seconds: Mapping[str, float]) -> None:
        for model, took in seconds.items():
            self.model_loads.labels(model, "failure" if model in errors else "success").inc()
            self.model_load_duration.labels(model).observe(took)


def _observe_many(histogram: Histogram, values: npt.NDArray[np.float64]) -> None:
    """`observe` for every value, in one numpy pass instead of one Python call per row.

    NOTE: prometheus-client has no bulk observe; this adds to the child's bucket and sum values directly
    (its `_buckets` / `_sum`, as `observe` does), which a 1,000-row batch would otherwise pay ~1.5 ms for.
    """
    upper_bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    # Prometheus buckets are cumulative on export but stored per bucket: value v goes to the first bound >= v.
    indexes = np.searchsorted(upper_bounds, values, side="left")
    counts = np.bincount(indexes, minlength=len(upper_bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))
