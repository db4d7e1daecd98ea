"""COMPILED_TREES: compile time of each demo tree model, and its in-process scoring compiled against native.

    uv run python -m benchmarks.compiled_trees [--rounds 7] [--calls 2000]

Seeds the demo registry in a temporary home, then for the XGBoost and LightGBM demo models (200 trees, depth 6):
1. loads the version as a worker does (`load_model`) with an empty compiled-trees cache (the compile, with its
   probe-row check), then again on the full cache (what a restart or a second worker pays);
2. scores the same decoded 1-, 100- and 1,000-row batches through the native scorer and the compiled one (as
   served: an XGBoost batch of 256 rows or more goes to XGBoost's own predictor), one thread,
   alternating native and compiled for several rounds (the machine is noisy: only ratios measured in one run mean
   something), and prints the median per-call time of each and the median of the per-round ratios;
3. reports the largest difference of the compiled trees from the native scorer on 2,000 unseen rows.
"""

from __future__ import annotations

import os

# NOTE: one thread, as in the workers, before any model library starts its OpenMP pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import embedded_registry, seed_demo
from fraud_inference.models.artifact import ModelArtifact, fetch_artifact
from fraud_inference.models.compiled import CompiledTreesScorer, compiler_versions
from fraud_inference.models.scoring import ServedModel, load_model
from fraud_inference.registry import Registry


def per_call_us(score: Callable[[Any], Any], batch: Any, calls: int) -> float:
    """Median microseconds of one call, over `calls` calls timed in blocks of 100."""
    blocks = []
    for _ in range(max(1, calls // 100)):
        started = time.perf_counter_ns()
        for _ in range(100):
            score(batch)
        blocks.append((time.perf_counter_ns() - started) / 100 / 1000)
    return statistics.median(blocks)


def compare(native: ServedModel, compiled: ServedModel, bodies: dict[int, bytes], rounds: int, calls: int) -> list[str]:
    """One table row per batch size: native and compiled per-call times, alternated round by round."""
    lines = []
    for rows, body in bodies.items():
        batch = native.decoder.decode(body)
        native_us: list[float] = []
        compiled_us: list[float] = []
        for _ in range(rounds):
            native_us.append(per_call_us(native.scorer.fraud_probability, batch, calls))
            compiled_us.append(per_call_us(compiled.scorer.fraud_probability, batch, calls))
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
    features, _ = make_transactions(2_000, seed=99)
    records = json.loads(features.to_json(orient="records"))
    bodies = {rows: json.dumps(records[:rows]).encode() for rows in (1, 100, 1000)}
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
            f"{warm:.2f} s, native {native_load:.2f} s; max |compiled - native| on 2,000 rows {difference:.3g}"
        )
        print("| rows | native us/call | compiled us/call | native / compiled (range over rounds) |")
        print("|---:|---:|---:|---|")
        for line in compare(native, compiled, bodies, args.rounds, args.calls):
            print(line)


if __name__ == "__main__":
    main()
