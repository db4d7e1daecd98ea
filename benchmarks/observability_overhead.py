"""What logging and metrics cost per request, measured in one run.

    uv run python -m benchmarks.observability_overhead [--seconds 8] [--connections 64] [--rounds 3]

1. Metrics: the per-request metric calls of a prediction (HTTP counters and histogram, model counters,
   score histogram), timed in-process, against the whole request time measured next.
2. Logging: two services of the same registry side by side, the access log on (LOG_LEVEL=INFO, `serve`'s
   default, its lines to a file) and off (LOG_LEVEL=WARNING), loaded by wrk in alternation round after round
   (the machine is noisy): 1-row requests/s and the HTTP process's CPU us per request of each, each round, and
   the medians' ratio. Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

from benchmarks.loadgen import LoadResult, run_load
from benchmarks.service import OurService
from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import embedded_registry, seed_demo
from fraud_inference.observability.metrics import Metrics
from fraud_inference.pool import PoolStatus


def metrics_cost_us(rows: int) -> float:
    """Microseconds of metric updates one prediction of `rows` rows makes in the HTTP process."""
    metrics = Metrics()
    probabilities = np.random.default_rng(1).random(rows)

    def one_request() -> None:
        metrics.http_in_flight.inc()
        metrics.record_scores("xgboost", "1", probabilities, 0.5, 0.0002)
        metrics.http_in_flight.dec()
        metrics.http_requests.labels("POST", "/v1/predict", "200").inc()
        metrics.http_duration.observe("/v1/predict", 0.001)

    loops = 20_000
    seconds = min(timeit.repeat(one_request, number=loops, repeat=3))
    metrics.render(PoolStatus(size=2, live_workers=2, ready_workers=2, active_generation=1, queued=0, restarts=0))
    return seconds / loops * 1e6


def load_once(service: OurService, level: str, body: bytes, seconds: int, connections: int) -> tuple[LoadResult, float]:
    """One wrk run against `service` (every answer checked) and its HTTP process's CPU us per request."""
    before = service.cpu()
    result = run_load("wrk", service.predict_url, [body], connections=connections, seconds=seconds)
    after = service.cpu()
    if result.errors:
        sys.exit(f"{result.errors} request(s) failed at LOG_LEVEL={level}: the figures would mean nothing")
    http_us = (after.http - before.http) / result.requests * 1e6 if after and before and result.requests else 0.0
    return result, http_us


def alternate(tracking_uri: str, body: bytes, args: argparse.Namespace) -> dict[str, list[tuple[LoadResult, float]]]:
    """Both services up, warmed, then loaded in turn (on, off, on, off, ...) for `args.rounds` rounds."""
    rounds: dict[str, list[tuple[LoadResult, float]]] = {"INFO": [], "WARNING": []}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as log_dir:
        services = {
            level: OurService.start(tracking_uri, workers=2, log_dir=Path(log_dir), log_level=level, timeout_s=400)
            for level in rounds
        }
        try:
            for service in services.values():  # warm-up
                run_load("wrk", service.predict_url, [body], connections=args.connections, seconds=2)
            for _ in range(args.rounds):
                for level, service in services.items():
                    rounds[level].append(load_once(service, level, body, args.seconds, args.connections))
        finally:
            for service in services.values():
                service.stop(timeout_s=60)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="of each configuration, alternated")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    home = Path(tempfile.mkdtemp(prefix="fraud-inference-bench-"))
    tracking_uri, artifact_location = embedded_registry(home)
    seed_demo(tracking_uri, artifact_location=artifact_location, progress=lambda _line: None, n_rows=20_000)
    features, _ = make_transactions(1, seed=5)
    body = json.dumps({"model": "xgboost", "instances": json.loads(features.to_json(orient="records"))}).encode()

    one, hundred = metrics_cost_us(1), metrics_cost_us(100)
    print(f"metrics updates per 1-row prediction: {one:.1f} us; per 100-row: {hundred:.1f} us")
    rounds = alternate(tracking_uri, body, args)
    for level, label in (("INFO", "access log on "), ("WARNING", "access log off")):
        cells = ", ".join(f"{load.requests_per_s:,.0f} req/s {http_us:.0f} us" for load, http_us in rounds[level])
        print(f"1-row, {args.connections} connections, {label}: {cells} (req/s, HTTP-process CPU per request)")
    on = statistics.median(load.requests_per_s for load, _ in rounds["INFO"])
    off = statistics.median(load.requests_per_s for load, _ in rounds["WARNING"])
    on_us = statistics.median(http_us for _, http_us in rounds["INFO"])
    off_us = statistics.median(http_us for _, http_us in rounds["WARNING"])
    print(f"medians: access log on {on:,.0f} req/s, {on_us:.0f} us; off {off:,.0f} req/s, {off_us:.0f} us; "
          f"on/off req/s = {on / off:.3f}, HTTP CPU per request on/off = {on_us / off_us:.3f}")  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
