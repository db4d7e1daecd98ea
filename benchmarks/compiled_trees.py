"""COMPILED_TREES: compile time of each demo tree model, and its in-process scoring compiled against native.

    uv run python -m benchmarks.compiled_trees [--rounds 7] [--calls 2000]

Seeds the demo registry in a temporary home, then for the XGBoost and LightGBM demo models (200 trees, depth 6):
1. loads the version as a worker does (`load_model`) with an empty compiled-trees cache (the compile, with its
   probe-row check), then again on the full cache (what a restart or a second worker pays);
2. scores 1-, 10-, 100-, 200-, 400- and 1,000-row batches through the native scorer and the compiled one, one
   thread, alternating native and compiled for several rounds (the machine is noisy: only ratios measured in one
   run mean something), and prints the median per-call time of each and the median of the per-round ratios. The
   compiled trees are timed whatever the batch's size (served, an XGBoost batch of `native_from_rows` or more
   goes to XGBoost's own predictor). Each size cycles through different batches of 8,000 distinct rows: the same
   rows over and over let the branch predictor learn the trees' paths, which flattered the compiled trees (XGBoost
   100 rows: 1.8x on one repeated batch, ~1.4x on distinct ones);
3. reports the largest difference of the compiled trees from the native scorer on those 8,000 unseen rows.
"""

from __future__ import annotations

import os

# NOTE: one thread, as in the workers, before any model library starts its OpenMP pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import embedded_registry, seed_demo
from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.compiled import CompiledTreesScorer, compiler_versions
from fraud_inference.models.reading import fetch_artifact
from fraud_inference.models.scoring import ServedModel, load_model
from fraud_inference.registry import Registry

_DISTINCT_ROWS = 8_000


def per_call_us(score: Callable[[Any], Any], batches: Iterator[Any], calls: int) -> float:
    """Median microseconds of one call of `score` on the next of `batches`, over `calls` calls timed in blocks of
    100 (the `next` included: ~0.1 us)."""
    blocks = []
    for _ in range(max(1, calls // 100)):
        started = time.perf_counter_ns()
        for _ in range(100):
            score(next(batches))
        blocks.append((time.perf_counter_ns() - started) / 100 / 1000)
    return statistics.median(blocks)


def compare(
    native: ServedModel, compiled: CompiledTreesScorer, bodies: dict[int, list[bytes]], rounds: int, calls: int
) -> list[str]:
    """One table row per batch size: native and compiled per-call times, alternated round by round, each cycling
    through the size's batches (`bodies[rows]`, raw JSON arrays of row objects)."""
    lines = []
    for rows, sized in bodies.items():
        batches = itertools.cycle([native.decoder.decode(body) for body in sized])
        native_us: list[float] = []
        compiled_us: list[float] = []
        for _ in range(rounds):
            native_us.append(per_call_us(native.scorer.fraud_probability, batches, calls))
            compiled_us.append(per_call_us(compiled.compiled_probability, batches, calls))
        ratios = [n / c for n, c in zip(native_us, compiled_us, strict=True)]
        lines.append(
            f"| {rows} | {statistics.median(native_us):,.1f} | {statistics.median(compiled_us):,.1f} | "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="native / compiled alternations per batch size")
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing (median of blocks of 100)")
    parser.add_argument("--train-rows", type=int, default=20_000, help="rows the demo models train on")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    home = Path(tempfile.mkdtemp(prefix="fraud-inference-compiled-bench-"))
    tracking_uri, artifact_location = embedded_registry(home)
    seed_demo(tracking_uri, artifact_location=artifact_location, progress=lambda _line: None, n_rows=args.train_rows)
    registry = Registry(tracking_uri, alias="champion", stages=("Production",), timeout_s=10)
    features, _ = make_transactions(_DISTINCT_ROWS, seed=99)
    records = json.loads(features.to_json(orient="records"))
    bodies = {
        rows: [json.dumps(records[start : start + rows]).encode() for start in range(0, len(records), rows)]
        for rows in (1, 10, 100, 200, 400, 1000)
    }
    print(f"compilers: {compiler_versions()}")
    for key in ("xgboost", "lightgbm"):
        ref = registry.resolve(key, f"fraud-{key}")
        artifact = fetch_artifact(registry, ref, home / "downloads", dependency_policy="compatible")
        native = load_model(artifact)
        cache = home / f"compiled-{key}"
        compiled_artifact: ModelArtifact = msgspec.structs.replace(artifact, compiled_trees=str(cache))
        started = time.perf_counter()
        compiled = load_model(compiled_artifact)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        load_model(compiled_artifact)
        warm = time.perf_counter() - started
        started = time.perf_counter()
        load_model(artifact)
        native_load = time.perf_counter() - started
        if not isinstance(compiled.scorer, CompiledTreesScorer):
            print(f"\n{key}: not compiled (see the compiled_trees.native_fallback line above)")
            continue
        whole = native.decoder.decode(json.dumps(records).encode())
        difference = float(
            np.max(np.abs(native.scorer.fraud_probability(whole) - compiled.scorer.compiled_probability(whole)))
        )
        print(
            f"\n{key} ({ref.name} v{ref.version}): load with compile {cold:.2f} s, with the cached library "
            f"{warm:.2f} s, native {native_load:.2f} s; max |compiled - native| on {len(records):,} rows "
            f"{difference:.3g}"
        )
        print("| rows | native us/call | compiled us/call | native / compiled (range over rounds) |")
        print("|---:|---:|---:|---|")
        for line in compare(native, compiled.scorer, bodies, args.rounds, args.calls):
            print(line)


if __name__ == "__main__":
    main()
