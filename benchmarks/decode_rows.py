"""The workers' decoding of JSON rows: CPU per request, one request at a time against a batch's requests stacked.

    uv run python -m benchmarks.decode_rows [--rounds 7] [--requests 8]

For 1, 10, 100 and 1,000 demo rows per request, a batch of `--requests` requests (different rows each) is decoded
into the float64 matrix the demo models score, two ways, alternated round by round in this one process:

- one by one (each request's matrix built and checked alone, then the matrices stacked), the worker's path before
  and still its path for a refused value, a DataFrame model or columns;
- stacked (each request decoded into row objects by msgspec, then all of them one matrix, checked once), what
  `BatchScorer` does now for JSON rows of a float64-matrix model.

Both must give the same matrix bit for bit (the run stops if not). It prints the median CPU microseconds per request
(`time.process_time_ns`) of each, and their ratio; only ratios measured in one run mean something on a shared
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import msgspec
import numpy as np

from benchmarks.scenarios import workload
from fraud_inference.demo.dataset import FEATURES
from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature import SignatureDecoder

_ROWS = (1, 10, 100, 1_000)


def _bodies(rows: int, requests: int) -> list[bytes]:
    """`requests` bodies' `instances` arrays of `rows` demo rows each, as the HTTP process hands them on."""
    batches = workload(rows)
    return [
        msgspec.json.encode(json.loads(batches[index % len(batches)].to_json(orient="records")))
        for index in range(requests)
    ]


def _one_by_one(decoder: SignatureDecoder, bodies: Sequence[bytes]) -> np.ndarray:
    stacked: np.ndarray = decoder.stack([decoder.decode(body) for body in bodies])
    return stacked


def _stacked(decoder: SignatureDecoder, bodies: Sequence[bytes]) -> np.ndarray:
    return decoder.stacked([decoder.rows(body) for body in bodies])


def _cpu_us_per_request(path: Callable[[], object], calls: int, requests: int) -> float:
    started = time.process_time_ns()
    for _ in range(calls):
        path()
    return (time.process_time_ns() - started) / calls / requests / 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="A/B rounds per row count (default 7)")
    parser.add_argument("--requests", type=int, default=8, help="requests per batch (default 8)")
    args = parser.parse_args()
    decoder = SignatureDecoder("demo", [FeatureSpec(feature.name, feature.kind) for feature in FEATURES])
    print(f"CPU us per request, batches of {args.requests} requests, median of {args.rounds} alternated rounds")
    print("rows | one by one | stacked | stacked / one by one")
    for rows in _ROWS:
        bodies = _bodies(rows, args.requests)
        if not np.array_equal(_one_by_one(decoder, bodies), _stacked(decoder, bodies)):
            raise SystemExit(f"{rows} rows: the two paths' matrices differ")
        calls = max(20, 4_000 // (rows * args.requests))
        before: list[float] = []
        after: list[float] = []
        for _ in range(args.rounds):
            before.append(_cpu_us_per_request(partial(_one_by_one, decoder, bodies), calls, args.requests))
            after.append(_cpu_us_per_request(partial(_stacked, decoder, bodies), calls, args.requests))
        old, new = statistics.median(before), statistics.median(after)
        print(f"{rows:>5} | {old:,.1f} | {new:,.1f} | {new / old:.2f}x")


if __name__ == "__main__":
    main()
