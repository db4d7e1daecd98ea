"""What logging and metrics cost per request, measured in one run.

    uv run python -m benchmarks.observability_overhead [--seconds 8] [--connections 16]

1. Metrics: the per-request metric calls of a prediction (HTTP counters and histogram, model counters,
   score histogram), timed in-process, against the whole request time measured next.
2. Logging: the same service under wrk with the access log on (LOG_LEVEL=INFO) and off (LOG_LEVEL=WARNING),
   one after the other in this run. Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def serve_and_load(tracking_uri: str, log_level: str, body: bytes, seconds: int, connections: int) -> LoadResult:
    """Serve the registry at `log_level`, warm up, then load it; every answer is checked."""
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as log_dir:
        service = OurService.start(tracking_uri, workers=2, log_dir=Path(log_dir), log_level=log_level)
        try:
            run_load("wrk", service.predict_url, [body], connections=connections, seconds=2)  # warm-up
            result = run_load("wrk", service.predict_url, [body], connections=connections, seconds=seconds)
        finally:
            service.stop(timeout_s=60)
    if result.errors:
        sys.exit(f"{result.errors} request(s) failed at LOG_LEVEL={log_level}: the figures would mean nothing")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
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
    results = {
        level: serve_and_load(tracking_uri, level, body, args.seconds, args.connections)
        for level in ("INFO", "WARNING")
    }
    on, off = results["INFO"].requests_per_s, results["WARNING"].requests_per_s
    on_p99, off_p99 = results["INFO"].p99_ms, results["WARNING"].p99_ms
    print(f"1-row req/s, {args.connections} connections: access log on {on:,.0f} (p99 {on_p99:.1f} ms), "
          f"off {off:,.0f} (p99 {off_p99:.1f} ms); on/off = {on / off:.3f}")  # fmt: skip
    print(f"request time at that rate: {1e6 / on:.0f} us of server time per request (2 cores, all processes)")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
