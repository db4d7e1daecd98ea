"""The challengers' metrics: what each one scored, skipped or failed, how its decisions compare with its champion's,
how far its scores move, and how long it takes. Recorded in the HTTP process from the workers' `Shadowed` reports."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from fraud_inference.observability.metrics import BucketHistogram
from fraud_inference.pool.shadow_messages import Shadowed

__all__ = ["ShadowMetrics"]

_PREFIX = "fraud_inference_shadow"
# challenger - champion: most rows of a retrained version move by less than 0.01; fine there, coarse past 0.1.
_DIFFERENCE_BUCKETS = (
    -1.0, -0.5, -0.2, -0.1, -0.05, -0.02, -0.01, -0.005, -0.001, -0.0001, 0.0,
    0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
)  # fmt: skip
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# `Shadowed.decisions` order: (champion, challenger) decisions.
_DECISIONS = (("fraud", "fraud"), ("fraud", "legit"), ("legit", "fraud"), ("legit", "legit"))


class ShadowMetrics:
    """`fraud_inference_shadow_*`, per model key: rows by outcome, rows by both decisions, the score difference
    and the challenger's scoring time. `histograms` are exported by the scrape collector of `Metrics`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            f"{_PREFIX}_rows", "Rows a challenger scored or skipped (scored, skipped_busy, skipped_sampled, failed)",
            ["model", "outcome"], registry=registry,
        )  # fmt: skip
        self.decisions = Counter(
            f"{_PREFIX}_decisions", "Rows the challenger scored, by each version's decision at its own threshold",
            ["model", "champion", "challenger"], registry=registry,
        )  # fmt: skip
        self.difference = BucketHistogram(
            f"{_PREFIX}_score_difference", "Challenger minus champion fraud probability, per row", "model",
            _DIFFERENCE_BUCKETS,
        )  # fmt: skip
        self.duration = BucketHistogram(
            f"{_PREFIX}_duration_seconds", "Challenger scoring time per batch, measured in the worker", "model",
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.histograms = (self.difference, self.duration)

    def record(self, report: Shadowed) -> None:
        """Add one worker's report on challenger `report.model`."""
        model = report.model
        for outcome, rows in report.rows.items():
            self.rows.labels(model, outcome).inc(rows)
        for (champion, challenger), rows in zip(_DECISIONS, report.decisions, strict=True):
            if rows:
                self.decisions.labels(model, champion, challenger).inc(rows)
        if report.differences:
            self.difference.observe_many(model, np.frombuffer(report.differences, dtype=np.float64))
        if report.seconds is not None:
            self.duration.observe(model, report.seconds)
