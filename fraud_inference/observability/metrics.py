"""Prometheus metrics. Workers measure and report through their messages; the HTTP process records everything.

NOTE: one process holds every metric: the pool's workers send their timings with each answer, so totals
need no multiprocess files, cannot go backwards when a worker is replaced, and cannot leak dead workers' files.
"""

from __future__ import annotations

import itertools
import os
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fraud_inference.pool.pool import PoolStatus

__all__ = ["CONTENT_TYPE", "Metrics"]

# NOTE: no charset here: Litestar appends "; charset=utf-8" to every text/* media type itself.
CONTENT_TYPE = "text/plain; version=0.0.4"
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
        self.http_duration = BucketHistogram(
            f"{_PREFIX}_http_request_duration_seconds", "HTTP request duration", "route", _LATENCY_BUCKETS
        )
        self.http_in_flight = Gauge(f"{_PREFIX}_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.grpc_requests = Counter(f"{_PREFIX}_grpc_requests", "gRPC calls answered", ["method", "code"], registry=r)
        self.grpc_duration = BucketHistogram(
            f"{_PREFIX}_grpc_request_duration_seconds", "gRPC call duration", "method", _LATENCY_BUCKETS
        )
        self.predictions = Counter(f"{_PREFIX}_predictions", "Requests scored", ["model", "version"], registry=r)
        self.rows_scored = Counter(f"{_PREFIX}_rows_scored", "Rows scored", ["model", "version"], registry=r)
        self.fraud_flagged = Counter(
            f"{_PREFIX}_fraud_flagged", "Rows at or over the model's threshold", ["model", "version"], registry=r
        )
        self.inference_duration = BucketHistogram(
            f"{_PREFIX}_inference_duration_seconds", "Model scoring time, measured in the worker", "model",
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_rows = BucketHistogram(f"{_PREFIX}_batch_rows", "Rows per scored request", "model", _ROW_BUCKETS)
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
        self.fraud_score = BucketHistogram(
            f"{_PREFIX}_fraud_score", "Fraud probabilities served", "model", _SCORE_BUCKETS
        )
        # The decision log's writer thread counts these (prometheus-client's counters take their own lock).
        self.decision_records_written = Counter(
            f"{_PREFIX}_decision_log_records_written", "Scored rows written to the decision log", ["model"],
            registry=r,
        )  # fmt: skip
        self.decision_records_dropped = Counter(
            f"{_PREFIX}_decision_log_records_dropped",
            "Scored rows the decision log could not write (backlog: the writer fell behind; write_failed: the disk "
            "refused; unreadable_rows: the rows did not decode again)",
            ["reason"], registry=r,
        )  # fmt: skip
        self.decision_bytes_written = Counter(
            f"{_PREFIX}_decision_log_bytes_written", "Bytes of decision-log files written", registry=r
        )
        self.decision_files_written = Counter(
            f"{_PREFIX}_decision_log_files_written", "Decision-log files written", registry=r
        )
        # NOTE: imported here: the challengers' metrics build on BucketHistogram, defined below.
        from fraud_inference.observability.shadow_metrics import ShadowMetrics

        self.shadow = ShadowMetrics(r)
        self._read_at_scrape = _ReadAtScrape(
            (self.http_duration, self.inference_duration, self.batch_rows, self.fraud_score, self.grpc_duration,
             *self.shadow.histograms)
        )  # fmt: skip
        self._scored_series: dict[tuple[str, str], _ScoredSeries] = {}
        r.register(self._read_at_scrape)

    def render(self, pool: PoolStatus) -> bytes:
        """The exposition text, with the pool's state and every process's CPU and memory read now."""
        self._read_at_scrape.pool = pool
        return generate_latest(self.registry)

    def record_scores(
        self, model: str, version: str, probabilities: npt.NDArray[np.float64], threshold: float, seconds: float
    ) -> None:
        """Count one scored request and its rows, and add its probabilities to the score histogram."""
        rows = len(probabilities)
        series = self._scored_series.get((model, version))
        if series is None:  # NOTE: prometheus-client's labels() costs ~3 us a call: look each series up once
            series = self._scored_series[(model, version)] = _ScoredSeries(
                requests=self.predictions.labels(model, version),
                rows=self.rows_scored.labels(model, version),
                flagged=self.fraud_flagged.labels(model, version),
            )
        series.requests.inc()
        series.rows.inc(rows)
        series.flagged.inc(int(np.count_nonzero(probabilities >= threshold)))
        self.inference_duration.observe(model, seconds)
        self.batch_rows.observe(model, rows)
        self.fraud_score.observe_many(model, probabilities)

    def record_loads(self, errors: Mapping[str, str], seconds: Mapping[str, float]) -> None:
        for model, took in seconds.items():
            self.model_loads.labels(model, "failure" if model in errors else "success").inc()
            self.model_load_duration.labels(model).observe(took)


@dataclass(frozen=True, slots=True)
class _ScoredSeries:
    """One model version's series of `record_scores`, looked up once."""

    requests: Counter
    rows: Counter
    flagged: Counter


class BucketHistogram:
    """A Prometheus histogram with one label, exported by the scrape collector; every update is on the event loop.

    NOTE: not prometheus-client's `Histogram`: its `observe` walks the buckets in Python and takes a lock per
    update (~3 us; three a request were ~10% of the HTTP process's own time per 1-row request, measured with
    `python -m benchmarks.http_process`), and it has no bulk observe (one call per row cost a 1,000-row batch
    ~1.5 ms). Here one value is one `bisect`, and a batch one numpy pass.
    """

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self._label = label
        self._bounds = [float(bound) for bound in buckets]
        self._bounds_array = np.array([*self._bounds, np.inf], dtype=np.float64)
        # As prometheus-client writes `le`.
        self._les = [*(floatToGoString(bound) for bound in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, label: str, value: float) -> None:
        """Count `value` in the first bucket whose upper bound is >= it (exported cumulatively)."""
        self._series(label)[bisect_left(self._bounds, value)] += 1
        self._sums[label] += value

    def observe_many(self, label: str, values: npt.NDArray[np.float64]) -> None:
        """`observe` each of `values`, in one numpy pass."""
        if len(values) == 1:
            self.observe(label, float(values[0]))
            return
        added = np.bincount(np.searchsorted(self._bounds_array, values, side="left"), minlength=len(self._les))
        counts = self._series(label)
        self._counts[label] = [held + new for held, new in zip(counts, added.tolist(), strict=True)]
        self._sums[label] += float(values.sum())

    def _series(self, label: str) -> list[int]:
        """The per-bucket counts of `label`: empty ones, and a zero sum, the first time it is seen."""
        counts = self._counts.get(label)
        if counts is None:
            counts = self._counts[label] = [0] * len(self._les)
            self._sums[label] = 0.0
        return counts

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self._label])
        for label, counts in self._counts.items():
            cumulative = list(itertools.accumulate(counts))
            family.add_metric([label], list(zip(self._les, cumulative, strict=True)), self._sums[label])
        return family


class _ReadAtScrape(Collector):
    """What is read when Prometheus scrapes: the pool's state and running totals, the score histograms, and the
    CPU and resident memory of the HTTP process and of each inference worker (from /proc)."""

    def __init__(self, histograms: tuple[BucketHistogram, ...]) -> None:
        self.pool: PoolStatus | None = None
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        pool = self.pool or PoolStatus(
            size=0, live_workers=0, ready_workers=0, active_generation=None, queued=0, restarts=0
        )
        ready = pool.active_generation is not None and pool.ready_workers > 0
        yield GaugeMetricFamily(
            f"{_PREFIX}_ready", "1 when /readyz answers 200: a live worker holds the models", value=ready
        )
        yield GaugeMetricFamily(f"{_PREFIX}_pool_workers", "Live inference workers", value=pool.live_workers)
        yield CounterMetricFamily(f"{_PREFIX}_worker_restarts", "Inference workers replaced", value=pool.restarts)
        yield GaugeMetricFamily(
            f"{_PREFIX}_queue_depth", "Requests sent to workers and not answered", value=pool.queued
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_pool_batches", "Batches sent to workers (one model call each)", value=pool.batches
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_pool_batched_requests",
            "Requests in those batches: over batches, the coalescing",
            value=pool.batched_requests,
        )
        for histogram in self._histograms:
            yield histogram.family()
        cpu = CounterMetricFamily(
            f"{_PREFIX}_process_cpu_seconds", "CPU time (user and system) of each process", labels=["process"]
        )
        memory = GaugeMetricFamily(
            f"{_PREFIX}_process_resident_memory_bytes", "Resident memory of each process", labels=["process"]
        )
        processes = {"server": os.getpid(), **{f"worker {i}": pid for i, pid in sorted(pool.worker_pids.items())}}
        for process, pid in processes.items():
            usage = _process_usage(pid)
            if usage is not None:
                cpu.add_metric([process], usage[0])
                memory.add_metric([process], usage[1])
        yield cpu
        yield memory


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _process_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a live process from /proc; None once it is gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
        statm = (Path("/proc") / str(pid) / "statm").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS, int(statm.split()[1]) * _PAGE_SIZE
