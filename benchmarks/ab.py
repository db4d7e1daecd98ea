"""One build or setting of fraud-inference against another, alternated in one run (the machine is noisy: only
ratios measured side by side mean something).

    uv run python -m benchmarks.ab --a-checkout ../other        # that checkout's build (A) against this one (B)
    uv run python -m benchmarks.ab --a-checkout ../old --b-checkout ../new    # two other builds
    uv run python -m benchmarks.ab --b-setting DECISION_LOG=/tmp/decisions   # a setting off (A) and on (B)
    uv run python -m benchmarks.ab --challenger --a-setting CHALLENGER_ALIAS=   # no challenger (A), one (B)

Seeds the demo registry once in a temporary home. Each round serves it with A, loads it with every scenario
(XGBoost, 1 row at 64 connections and 100 rows at 8, through /v1/predict unless `--protocol`), stops it, then
does the same with B; A and B swap order every round. wrk checks every answer; a failed request ends the run
(exit 1). Prints each round's requests/s, p99 and CPU microseconds per request (the HTTP process and the
workers, from /proc) per arm, and per scenario the median ratio B/A of each over the rounds. CPU per request
moves far less than requests/s when other work shares the machine: read it first on a busy one. With
`--challenger` it also loads 1-row requests at 4 connections, and prints for each load the share of rows a
challenger scored (scored / (scored + skipped_busy), from /metrics' fraud_inference_shadow_rows_total).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.loadgen import LoadResult, run_load
from benchmarks.scenarios import Scenario, our_requests
from benchmarks.service import CpuSeconds, OurService
from fraud_inference.demo.seeding import embedded_registry, seed_demo

SCENARIOS = (
    Scenario("xgboost 1 row c64", ("xgboost",), 1, 64),
    Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8),
)
CHALLENGER_SCENARIOS = (Scenario("xgboost 1 row c4", ("xgboost",), 1, 4),)
"""Loaded too with `--challenger`: the issue's light load, at which a challenger should score about every row."""
# A worker reports rows it skipped at least this often (worker_shadow's period and a heartbeat): wait this long
# after a load before reading its counts.
_SHADOW_REPORTED_S = 1.6


class Arm(msgspec.Struct, frozen=True):
    """One side of the comparison: which `fraud-inference` it runs (None: this environment's) and its settings."""

    name: str
    executable: Path | None
    settings: dict[str, str]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-checkout", type=Path, help="A runs this checkout's .venv/bin/fraud-inference")
    parser.add_argument("--b-checkout", type=Path, help="B runs this checkout's (default: this environment's)")
    parser.add_argument("--a-setting", action="append", default=[], metavar="NAME=VALUE", help="a variable of A's")
    parser.add_argument("--b-setting", action="append", default=[], metavar="NAME=VALUE", help="a variable of B's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per scenario and round")
    parser.add_argument("--protocol", choices=("v1", "mlflow", "oip"), default="v1")
    parser.add_argument(
        "--challenger",
        action="store_true",
        help="also register a second XGBoost version, trained as the demo's is on another seed, under the alias "
        "`challenger` (both arms see it: turn it off in one with CHALLENGER_ALIAS=)",
    )
    args = parser.parse_args(argv)
    arms = (
        Arm("A", _executable(args.a_checkout, parser), _settings(args.a_setting, parser)),
        Arm("B", _executable(args.b_checkout, parser), _settings(args.b_setting, parser)),
    )
    chosen = (*SCENARIOS, *CHALLENGER_SCENARIOS) if args.challenger else SCENARIOS
    scenarios = [msgspec.structs.replace(scenario, protocol=args.protocol) for scenario in chosen]
    results: dict[tuple[str, str], list[tuple[LoadResult, CpuSeconds]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as home:
        tracking_uri, artifact_location = embedded_registry(Path(home))
        seed_demo(tracking_uri, artifact_location=artifact_location, progress=lambda _line: None)
        if args.challenger:
            print(f"challenger: fraud-xgboost version {register_challenger(tracking_uri, artifact_location)}")
        for round_ in range(args.rounds):
            for arm in arms if round_ % 2 == 0 else arms[::-1]:
                loads = _load(arm, tracking_uri, Path(home), scenarios, args.seconds, shadow=args.challenger)
                for scenario, result, cpu, shadowed in loads:
                    results.setdefault((arm.name, scenario.name), []).append((result, cpu))
                    print(
                        f"round {round_ + 1} {arm.name} {scenario.name}: {result.requests_per_s:.0f} req/s, "
                        f"p99 {result.p99_ms:.1f} ms, CPU per request: HTTP {_per_request_us(cpu.http, result):.0f} "
                        f"us, workers {_per_request_us(cpu.workers, result):.0f} us{_share(shadowed)}",
                        flush=True,
                    )
    for arm in arms:
        print(f"{arm.name}: {arm.executable or 'this checkout'} {arm.settings or ''}")
    for scenario in scenarios:
        pairs = list(zip(results[("A", scenario.name)], results[("B", scenario.name)], strict=True))
        throughput = statistics.median(b.requests_per_s / a.requests_per_s for (a, _), (b, _) in pairs)
        p99 = statistics.median(b.p99_ms / a.p99_ms for (a, _), (b, _) in pairs)
        cpu_ratio = statistics.median(
            _per_request_us(b_cpu.total, b) / _per_request_us(a_cpu.total, a) for (a, a_cpu), (b, b_cpu) in pairs
        )
        print(
            f"{scenario.name}: B/A requests/s {throughput:.2f}x, p99 {p99:.2f}x, CPU per request {cpu_ratio:.2f}x "
            f"(median of {len(pairs)} rounds)"
        )
    return 0


def register_challenger(tracking_uri: str, artifact_location: str | None) -> str:
    """A second version of the demo's XGBoost model, the same size trained on another seed, under `challenger`."""
    from mlflow import MlflowClient

    from fraud_inference.demo.dataset import make_transactions
    from fraud_inference.demo.seeding import log_fraud_model
    from fraud_inference.demo.training import train_model

    features, labels = make_transactions(20_000, seed=97)
    model = train_model("xgboost", features, labels, seed=97)
    version = log_fraud_model(
        tracking_uri, flavor="xgboost", model=model, X_example=features, registered_name="fraud-xgboost",
        artifact_location=artifact_location,
    )  # fmt: skip
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias("fraud-xgboost", "challenger", str(version.version))
    return str(version.version)


def _per_request_us(seconds: float, result: LoadResult) -> float:
    return seconds / max(result.requests, 1) * 1e6


def _shadow_rows(base_url: str) -> Counter[str]:
    """fraud_inference_shadow_rows_total on the service's /metrics, by outcome (every model summed)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    rows: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fraud_inference_shadow_rows_total":
                rows[sample.labels["outcome"]] += int(sample.value)
    return rows


def _share(shadowed: Counter[str]) -> str:
    """`, challenger scored 97% of 1234 rows` for a load a challenger saw; empty for one it did not."""
    offered = shadowed["scored"] + shadowed["skipped_busy"]
    if not offered:
        return ""
    return f", challenger scored {shadowed['scored'] / offered:.0%} of {offered} rows"


def _load(
    arm: Arm, tracking_uri: str, home: Path, scenarios: list[Scenario], seconds: float, *, shadow: bool
) -> list[tuple[Scenario, LoadResult, CpuSeconds, Counter[str]]]:
    """Serve with `arm`, warm up, and load every scenario once; exit 1 on any failed or wrong answer. With
    `shadow`, also what became of each load's rows as a challenger saw them (`_shadow_rows`'s difference)."""
    service = OurService.start(
        tracking_uri, workers=2, log_dir=home, settings=arm.settings, executable=arm.executable, timeout_s=300
    )
    measured = []
    try:
        for scenario in scenarios:
            requests = our_requests(scenario, service.base_url, service.grpc_target)
            run_load("wrk", requests.url, requests.bodies, connections=scenario.connections, seconds=2,
                     expect=requests.expect)  # fmt: skip
            if shadow:
                time.sleep(_SHADOW_REPORTED_S)
            shadowed_before = _shadow_rows(service.base_url) if shadow else Counter()
            before = service.cpu()
            result = run_load("wrk", requests.url, requests.bodies, connections=scenario.connections,
                              seconds=seconds, expect=requests.expect)  # fmt: skip
            after = service.cpu()
            if shadow:
                time.sleep(_SHADOW_REPORTED_S)
            shadowed = _shadow_rows(service.base_url) - shadowed_before if shadow else Counter()
            if before is None or after is None:
                sys.exit(f"{arm.name}: its processes cannot be read in /proc")
            failed = result.non_2xx + result.bad_body + result.connect_errors + result.read_errors + result.timeouts
            if failed:
                sys.exit(f"{arm.name} {scenario.name}: {failed} request(s) failed: the figures would mean nothing")
            measured.append((scenario, result, after.minus(before), shadowed))
    finally:
        service.stop(timeout_s=60)
    return measured


def _executable(checkout: Path | None, parser: argparse.ArgumentParser) -> Path | None:
    if checkout is None:
        return None
    executable = checkout.resolve() / ".venv/bin/fraud-inference"
    if not executable.exists():
        parser.error(f"{executable} is missing: run `uv sync` in {checkout} first")
    return executable


def _settings(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            parser.error(f"{pair!r}: expected NAME=VALUE")
        settings[name] = value
    return settings


if __name__ == "__main__":
    sys.exit(main())
