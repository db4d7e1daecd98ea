"""The physical limit: each champion scored in-process on one core, natively, on the scenarios' rows.

    uv run python -m benchmarks.baselines --tracking-uri URI [--seconds 1.0]
    uv run python -m benchmarks.baselines --tracking-uri URI --pyfunc models:/fraud-pyfunc@champion

Runs in its own process with `OMP_NUM_THREADS=1` (`native_baselines` starts it) so the harness is not
affected and the libraries start with one thread, as in the service's workers. Each call is the
native fast path the workers use: XGBoost `Booster.inplace_predict` (nthread=1), LightGBM
`Booster.predict(num_threads=1)`, scikit-learn `predict_proba`. A custom pyfunc model
(`pyfunc_baseline`) has no faster path than its own: `mlflow.pyfunc.load_model(uri).predict(DataFrame)`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence, Sized
from typing import Any, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from benchmarks.scenarios import MODEL_KEYS, workload

__all__ = [
    "BATCH_SIZES",
    "PYFUNC_BATCH_SIZES",
    "NativeBaseline",
    "PyfuncBaseline",
    "native_baselines",
    "pyfunc_baseline",
]

BATCH_SIZES = (1, 100, 1000)
PYFUNC_BATCH_SIZES = (1, 100)

Matrix = npt.NDArray[np.float64]
Batch = TypeVar("Batch", bound=Sized)
"""One call's input: a [rows, features] matrix, or a DataFrame for a pyfunc model (`len` is its rows)."""


class NativeBaseline(msgspec.Struct, frozen=True):
    """In-process scoring of `rows`-row batches of one model on one thread."""

    model: str
    rows: int
    calls: int
    us_per_call: float
    rows_per_s: float
    rows_per_cpu_s: float
    """Rows per CPU second: the ceiling of one core, however busy the machine was."""


class PyfuncBaseline(msgspec.Struct, frozen=True):
    """A custom pyfunc model in-process: its timings, and its answers that the service's must equal."""

    timings: list[NativeBaseline]
    """One per size in `PYFUNC_BATCH_SIZES`."""
    answers: dict[int, list[float]]
    """Rows per batch -> the fraud probabilities of the first `workload` batch of that size."""


def native_baselines(tracking_uri: str, *, seconds: float, timeout_s: float = 300) -> list[NativeBaseline]:
    """Measure every model and batch size in a child process with one OpenMP thread."""
    return msgspec.json.decode(_child(tracking_uri, seconds, timeout_s), type=list[NativeBaseline])


def pyfunc_baseline(
    tracking_uri: str, model_uri: str, *, key: str, seconds: float, timeout_s: float = 300
) -> PyfuncBaseline:
    """Measure `model_uri` (a custom pyfunc model, reported as `key`) in a child process with one thread."""
    output = _child(tracking_uri, seconds, timeout_s, "--pyfunc", model_uri, "--key", key)
    return msgspec.json.decode(output, type=PyfuncBaseline)


def _child(tracking_uri: str, seconds: float, timeout_s: float, *options: str) -> bytes:
    """Run this module with one OpenMP thread and return the last line it printed (its JSON result)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.baselines", "--tracking-uri", tracking_uri, "--seconds", str(seconds),
         *options],
        env=env, capture_output=True, check=False, timeout=timeout_s,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"the in-process baseline failed:\n{completed.stderr.decode(errors='replace')[-3000:]}")
    return completed.stdout.splitlines()[-1]


def _predictors(tracking_uri: str) -> dict[str, Callable[[Matrix], Any]]:
    import mlflow
    import mlflow.lightgbm
    import mlflow.sklearn
    import mlflow.xgboost
    from threadpoolctl import threadpool_limits

    from fraud_inference.demo.seeding import CHAMPION_ALIAS, DEMO_MODELS

    threadpool_limits(1)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    uri = {key: f"models:/{name}@{CHAMPION_ALIAS}" for key, name in DEMO_MODELS.items()}

    classifier = mlflow.xgboost.load_model(uri["xgboost"])
    booster = classifier.get_booster()
    booster.set_param({"nthread": 1})
    best = getattr(classifier, "best_iteration", None)
    iterations = (0, int(best) + 1) if best is not None else (0, 0)
    lightgbm = mlflow.lightgbm.load_model(uri["lightgbm"]).booster_
    sklearn = mlflow.sklearn.load_model(uri["sklearn"])
    return {
        "xgboost": lambda matrix: booster.inplace_predict(matrix, iteration_range=iterations),
        "lightgbm": lambda matrix: lightgbm.predict(matrix, num_threads=1),
        "sklearn": lambda matrix: sklearn.predict_proba(matrix),
    }


def _measure(model: str, predict: Callable[[Batch], Any], batches: Sequence[Batch], seconds: float) -> NativeBaseline:
    for matrix in batches:  # warm-up: first calls allocate
        predict(matrix)
    calls = 0
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    deadline = wall_started + seconds
    while calls < 3 or time.perf_counter() < deadline:
        predict(batches[calls % len(batches)])
        calls += 1
    wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    rows = calls * len(batches[0])
    return NativeBaseline(
        model=model,
        rows=len(batches[0]),
        calls=calls,
        us_per_call=wall / calls * 1e6,
        rows_per_s=rows / wall,
        rows_per_cpu_s=rows / cpu if cpu > 0 else rows / wall,
    )


def _pyfunc(tracking_uri: str, model_uri: str, key: str, seconds: float) -> PyfuncBaseline:
    """Time `model_uri`'s own predict on the scenarios' DataFrames and keep its answers on each first batch."""
    import mlflow
    import mlflow.pyfunc
    from threadpoolctl import threadpool_limits

    from fraud_inference.models.flavors.pyfunc import DEFAULT_PROBABILITY_COLUMN

    threadpool_limits(1)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    timings, answers = [], {}
    for rows in PYFUNC_BATCH_SIZES:
        batches = workload(rows)
        timings.append(_measure(key, model.predict, batches, seconds))
        # Read as the service reads a DataFrame answer: the probability column (the version sets no other).
        answers[rows] = [float(p) for p in model.predict(batches[0])[DEFAULT_PROBABILITY_COLUMN]]
    return PyfuncBaseline(timings=timings, answers=answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--seconds", type=float, default=1.0, help="per model and batch size")
    parser.add_argument("--pyfunc", metavar="MODEL_URI", help="measure this custom pyfunc model alone")
    parser.add_argument("--key", default="pyfunc", help="the --pyfunc model's name in the results")
    args = parser.parse_args()
    if args.pyfunc:
        result = _pyfunc(args.tracking_uri, args.pyfunc, args.key, args.seconds)
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        return
    predictors = _predictors(args.tracking_uri)
    results: list[NativeBaseline] = []
    batches = {
        rows: [np.ascontiguousarray(batch.to_numpy(dtype=np.float64)) for batch in workload(rows)]
        for rows in BATCH_SIZES
    }
    # One model at a time, as a worker serving one model would: alternating libraries costs more (FACTS.md).
    for model in MODEL_KEYS:
        results.extend(_measure(model, predictors[model], batches[rows], args.seconds) for rows in BATCH_SIZES)
    sys.stdout.write(msgspec.json.encode(results).decode() + "\n")


if __name__ == "__main__":
    main()
