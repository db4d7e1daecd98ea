"""Each feature's cost beside the plain service, measured in one run (issue #29, goal 5).

    uv run python -m benchmarks.features [--rounds 3] [--seconds 6]

Seeds the demo registry once in a temporary home and registers a second XGBoost version as `challenger`. The load
is the same in every arm: wrk, 56 connections, 1-row XGBoost `/v1/predict` (the plain path). The arms:
- plain: the service without a challenger (CHALLENGER_ALIAS=) and without a decision log, the load alone;
- challenger: the service scoring the challenger beside its champion at SHADOW_SHARE=1 (#26 allows 0.95x);
- decision log: DECISION_LOG set, every decision written to Parquet (#25 allows 0.9x);
- reasons beside: the plain service, with a second wrk beside the load sending explained requests (`"explain": 3`)
  over 8 connections (#27 allows 0.95x for a tenth of requests; the share they reached is printed);
- gRPC beside: the plain service, with tritonclient.grpc beside the load over 2 connections (OIP `ModelInfer`).
Every round serves the three configurations in turn (the order rotates each round), each warmed up for 4 s; the
plain service is loaded alone before and after its two "beside" arms. A configuration's ratio is to the plain
service's first load alone (measured as long after its start as theirs: a service still speeds up for a while
after its warm-up), a "beside" arm's to the mean of the plain service's two loads alone, in the same round.
Prints each measurement and per feature the median ratio over the rounds of the plain load's requests/s and of
its CPU per request (all the service's processes, from /proc; the beside load's requests are in the numerator's
CPU, so read that ratio per plain request served). wrk checks every answer: a failed request ends the run (exit 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import msgspec

from benchmarks.ab import register_challenger
from benchmarks.explain_service import explained_bodies
from benchmarks.loadgen import LoadResult, run_beside, run_load
from benchmarks.scenarios import Requests, Scenario, our_requests
from benchmarks.service import OurService
from fraud_inference.demo.seeding import embedded_registry, seed_demo

PLAIN = Scenario("xgboost 1 row c56", ("xgboost",), 1, 56)
BESIDE_CONNECTIONS = {"reasons beside": 8, "gRPC beside": 2}
"""The beside loads' connections: about a tenth of the requests each (a tritonclient.grpc client is a Python process
of its own on the same 2 cores, so its share is kept small)."""
ALLOWED = {"challenger": 0.95, "decision log": 0.9, "reasons beside": 0.95}
"""What each feature's own issue allows the plain load's requests/s to fall to (gRPC's states none)."""


class Measured(msgspec.Struct, frozen=True):
    arm: str
    requests_per_s: float
    p99_ms: float
    cpu_us: float
    """The service's CPU per plain request (µs)."""
    beside: str = ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per arm and round")
    args = parser.parse_args(argv)
    ratios: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as home:
        tracking_uri, artifact_location = embedded_registry(Path(home))
        seed_demo(tracking_uri, artifact_location=artifact_location, progress=lambda _line: None)
        print(f"challenger: fraud-xgboost version {register_challenger(tracking_uri, artifact_location)}")
        configurations = {
            "plain": {"CHALLENGER_ALIAS": ""},
            "challenger": {"SHADOW_SHARE": "1"},
            "decision log": {"CHALLENGER_ALIAS": "", "DECISION_LOG": str(Path(home) / "decisions")},
        }
        names = list(configurations)
        for round_ in range(args.rounds):
            measured: list[Measured] = []
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                measured += _serve(name, configurations[name], tracking_uri, Path(home), args.seconds)
            for each in measured:
                print(
                    f"round {round_ + 1} {each.arm}: plain {each.requests_per_s:.0f} req/s, p99 {each.p99_ms:.1f} ms, "
                    f"CPU per plain request {each.cpu_us:.0f} us{each.beside}",
                    flush=True,
                )
            alone = [each for each in measured if each.arm == "plain"]
            for each in measured:
                if each.arm == "plain":
                    continue
                base = alone if "beside" in each.arm else alone[:1]
                rate = each.requests_per_s / statistics.mean(other.requests_per_s for other in base)
                cpu = each.cpu_us / statistics.mean(other.cpu_us for other in base)
                ratios.setdefault(each.arm, []).append((rate, cpu))
    for arm, pairs in ratios.items():
        allowed = f" (its issue allows {ALLOWED[arm]:.2f}x)" if arm in ALLOWED else ""
        print(
            f"{arm}: plain requests/s {statistics.median(rate for rate, _ in pairs):.2f}x{allowed}, CPU per plain "
            f"request {statistics.median(cpu for _, cpu in pairs):.2f}x (median of {len(pairs)} rounds)"
        )
    return 0


def _serve(name: str, settings: dict[str, str], tracking_uri: str, home: Path, seconds: float) -> list[Measured]:
    """Serve one configuration and load it: once for a feature's configuration; alone, with reasons beside, with
    gRPC beside and alone again for the plain one."""
    service = OurService.start(tracking_uri, workers=2, log_dir=home, settings=settings, timeout_s=300)
    try:
        plain = our_requests(PLAIN, service.base_url)
        run_load("wrk", plain.url, plain.bodies, connections=PLAIN.connections, seconds=4)  # warm-up
        if name != "plain":
            return [_measure(service, name, seconds)]
        explained = msgspec.structs.replace(plain, bodies=explained_bodies(plain.bodies))
        grpc = our_requests(
            Scenario("grpc", ("xgboost",), 1, BESIDE_CONNECTIONS["gRPC beside"], protocol="grpc"),
            service.base_url,
            service.grpc_target,
        )
        return [
            _measure(service, "plain", seconds),
            _measure(service, "reasons beside", seconds, beside=explained),
            _measure(service, "gRPC beside", seconds, beside=grpc),
            _measure(service, "plain", seconds),
        ]
    finally:
        service.stop(timeout_s=60)


def _measure(service: OurService, arm: str, seconds: float, *, beside: Requests | None = None) -> Measured:
    """The plain load for `seconds`, with `beside` (a wrk, or tritonclient.grpc for a grpc:// URL) sent meanwhile."""
    plain = our_requests(PLAIN, service.base_url)
    before = service.cpu()
    side_load = None if beside is None else (beside.url, beside.bodies, BESIDE_CONNECTIONS[arm], beside.expect)
    result, side = run_beside(plain.url, plain.bodies, connections=PLAIN.connections, seconds=seconds, beside=side_load)
    after = service.cpu()
    failed = result.errors + (0 if side is None else side.errors)
    if failed or before is None or after is None:
        sys.exit(f"{arm}: {failed} request(s) failed (or /proc unreadable): the figures would mean nothing")
    return Measured(
        arm, result.requests_per_s, result.p99_ms, after.minus(before).total / max(result.requests, 1) * 1e6,
        beside="" if side is None else _beside(side, result),
    )  # fmt: skip


def _beside(side: LoadResult, plain: LoadResult) -> str:
    share = side.requests_per_s / (side.requests_per_s + plain.requests_per_s)
    return (
        f"; beside: {side.requests_per_s:.0f} req/s ({share:.1%} of all), p99 {side.p99_ms:.0f} ms, its load generator "
        f"{side.loadgen_cpu_s / side.duration_s:.2f} cores"
    )


if __name__ == "__main__":
    sys.exit(main())
