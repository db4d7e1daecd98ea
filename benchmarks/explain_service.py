"""Reason codes through the service: the cost of an explained request against a plain one, and plain requests'
throughput while a tenth of requests ask for reasons against none asking (issue #27's figures).

    uv run python -m benchmarks.explain_service [--rounds 3] [--requests 40] [--seconds 8]
        [--only cost|share|beside|paced] [--explain-connections 8] [--pause-ms 25]

Seeds the demo registry in a temporary home and serves it once (2 workers, compiled trees as configured).
1. Cost: for XGBoost and LightGBM at 1, 10 and 100 rows, blocks of `--requests` sequential /v1/predict requests
   on one connection, plain and with `"explain": 3`, alternated (the order swaps every round); per block the median
   latency and the service's CPU per request (HTTP process and workers, from /proc). Prints the medians over rounds.
2. Share: wrk at 64 connections sending 1-row XGBoost requests for `--seconds`: A cycles 10 plain bodies, B the
   same 10 with the first asking for reasons (so exactly one request in ten); alternated A/B/B/A. The figure is
   the rate of the same nine plain bodies in B against A: 0.9 of each arm's total (wrk cycles the bodies in order),
   so B/A of the totals. (B's nine against all ten of A's, also printed, is at most 0.9x by construction.)
   Prints each round and the median ratios. On a closed loop an explained request holds its connection for its
   whole (longer) latency, so B also measures fewer plain requests in flight, not only the CPU they lost.
3. Beside: the plain load alone (A: wrk, 56 connections, plain 1-row XGBoost bodies) against the same load with a
   second wrk beside it sending explained ones (B: `--explain-connections`, 8 by default: about a tenth of the
   requests); alternated A/B/B/A. The figure is the plain wrk's requests/s B/A, with the explained share of B's
   requests; run it with EXPLAIN_NICE=0 and 19 to see what the priority does.
4. Paced: as `beside`, but below saturation, as a service runs: each connection waits `--pause-ms` after each
   answer (36 plain connections, and in B 4 explained ones at the same pace: about a tenth of the requests; ~1,500
   requests/s in all at 25 ms, about 60% of what this machine serves). The plain wrk's requests/s, p50 and p99
   B/A say whether plain requests slow down when a tenth ask for reasons and the CPU is there for them.
wrk checks every answer; a failed request ends the run (exit 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec

from benchmarks.loadgen import LoadResult, run_beside, run_load
from benchmarks.scenarios import Scenario, our_requests
from benchmarks.service import OurService
from fraud_inference.demo.seeding import embedded_registry, seed_demo

REASONS = 3
SHARE_CONNECTIONS = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40, help="per block of the cost figure")
    parser.add_argument("--seconds", type=float, default=8.0, help="per arm and round of the share figure")
    parser.add_argument("--only", choices=("cost", "share", "beside", "paced"), help="measure one figure, not all")
    parser.add_argument("--explain-connections", type=int, default=8, help="the explained wrk's, in `beside`")
    parser.add_argument("--pause-ms", type=int, default=25, help="each connection's pause after an answer, `paced`")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as home:
        tracking_uri, artifact_location = embedded_registry(Path(home))
        seed_demo(tracking_uri, artifact_location=artifact_location, progress=lambda _line: None)
        service = OurService.start(tracking_uri, workers=2, log_dir=Path(home), timeout_s=300)
        try:
            if args.only in {None, "cost"}:
                _cost(service, args.rounds, args.requests)
            if args.only in {None, "share"}:
                _share(service, args.rounds, args.seconds)
            if args.only in {None, "beside"}:
                _beside(service, args.rounds, args.seconds, args.explain_connections)
            if args.only in {None, "paced"}:
                _paced(service, args.rounds, args.seconds, args.pause_ms)
        finally:
            service.stop(timeout_s=60)
    return 0


def explained_bodies(bodies: list[bytes]) -> list[bytes]:
    return [msgspec.json.encode({**msgspec.json.decode(body), "explain": REASONS}) for body in bodies]


def _block(service: OurService, client: httpx.Client, url: str, bodies: list[bytes], count: int) -> tuple[float, float]:
    """`count` sequential requests: their median latency (ms) and the service's CPU per request (us)."""
    latencies = []
    before = service.cpu()
    for index in range(count):
        started = time.perf_counter()
        answer = client.post(url, content=bodies[index % len(bodies)], headers={"content-type": "application/json"})
        latencies.append((time.perf_counter() - started) * 1e3)
        if answer.status_code != 200:
            sys.exit(f"{url}: {answer.status_code} {answer.text[:200]}")
    after = service.cpu()
    if before is None or after is None:
        sys.exit("the service's processes cannot be read in /proc")
    return statistics.median(latencies), after.minus(before).total / count * 1e6


def _cost(service: OurService, rounds: int, count: int) -> None:
    with httpx.Client(timeout=60) as client:
        for model in ("xgboost", "lightgbm"):
            for rows in (1, 10, 100):
                requests = our_requests(Scenario(f"{model} {rows}", (model,), rows, 1), service.base_url)
                arms = {"plain": list(requests.bodies), "explained": explained_bodies(list(requests.bodies))}
                for body in (*arms["plain"][:3], *arms["explained"][:3]):  # warm both paths
                    client.post(requests.url, content=body, headers={"content-type": "application/json"})
                measured: dict[str, list[tuple[float, float]]] = {"plain": [], "explained": []}
                for round_ in range(rounds):
                    for arm in ("plain", "explained") if round_ % 2 == 0 else ("explained", "plain"):
                        measured[arm].append(_block(service, client, requests.url, arms[arm], count))
                plain_ms = statistics.median(ms for ms, _ in measured["plain"])
                explained_ms = statistics.median(ms for ms, _ in measured["explained"])
                plain_cpu = statistics.median(cpu for _, cpu in measured["plain"])
                explained_cpu = statistics.median(cpu for _, cpu in measured["explained"])
                print(
                    f"cost {model} {rows:>3} rows: latency plain {plain_ms:.2f} ms, explained {explained_ms:.2f} ms "
                    f"({explained_ms / plain_ms:.1f}x); CPU per request plain {plain_cpu:,.0f} us, explained "
                    f"{explained_cpu:,.0f} us ({explained_cpu / plain_cpu:.1f}x; "
                    f"{(explained_cpu - plain_cpu) / rows:,.0f} us more per row)",
                    flush=True,
                )


def _share(service: OurService, rounds: int, seconds: float) -> None:
    requests = our_requests(Scenario("xgboost 1 row", ("xgboost",), 1, SHARE_CONNECTIONS), service.base_url)
    plain = list(requests.bodies)[:10]
    arms = {"A": plain, "B": [*explained_bodies(plain[:1]), *plain[1:]]}
    run_load("wrk", requests.url, plain, connections=SHARE_CONNECTIONS, seconds=2)  # warm-up
    ratios, cpu_ratios = [], []
    for round_ in range(rounds):
        got = {}
        for arm in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            before = service.cpu()
            result = run_load("wrk", requests.url, arms[arm], connections=SHARE_CONNECTIONS, seconds=seconds)
            after = service.cpu()
            failed = result.non_2xx + result.bad_body + result.connect_errors + result.read_errors + result.timeouts
            if failed or before is None or after is None:
                sys.exit(f"share {arm}: {failed} request(s) failed: the figures would mean nothing")
            nine_per_s = result.requests_per_s * 0.9  # the nine bodies plain in both arms
            used = after.minus(before)
            cpu_us = used.total / max(result.requests, 1) * 1e6
            got[arm] = (result.requests_per_s, cpu_us)
            print(
                f"share round {round_ + 1} {arm}: {result.requests_per_s:.0f} req/s, the nine plain bodies "
                f"{nine_per_s:.0f} req/s, p99 (all requests) {result.p99_ms:.1f} ms, CPU per request {cpu_us:.0f} us "
                f"(cores busy: HTTP {used.http / result.duration_s:.2f}, "
                f"workers {used.workers / result.duration_s:.2f})",
                flush=True,
            )
        ratios.append(got["B"][0] / got["A"][0])
        cpu_ratios.append(got["B"][1] / got["A"][1])
    print(
        f"share: the nine plain bodies' requests/s with the tenth explained (B) / plain (A) "
        f"{statistics.median(ratios):.2f}x (B's nine against A's ten: {0.9 * statistics.median(ratios):.2f}x); CPU "
        f"per request {statistics.median(cpu_ratios):.2f}x (median of {rounds} rounds)"
    )


def _beside(service: OurService, rounds: int, seconds: float, explain_connections: int) -> None:
    plain_connections = SHARE_CONNECTIONS - explain_connections
    requests = our_requests(Scenario("xgboost 1 row", ("xgboost",), 1, plain_connections), service.base_url)
    plain = list(requests.bodies)[:10]
    explained = explained_bodies(plain)
    run_load("wrk", requests.url, plain, connections=plain_connections, seconds=2)  # warm-up
    ratios: list[float] = []
    shares: list[float] = []
    for round_ in range(rounds):
        got = {}
        for arm in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            result, explaining = run_beside(
                requests.url, plain, connections=plain_connections, seconds=seconds,
                beside=(requests.url, explained, explain_connections, requests.expect) if arm == "B" else None,
            )  # fmt: skip
            failed = result.errors + (0 if explaining is None else explaining.errors)
            if failed:
                sys.exit(f"beside {arm}: {failed} request(s) failed: the figures would mean nothing")
            got[arm] = result.requests_per_s
            line = (
                f"beside round {round_ + 1} {arm}: plain {result.requests_per_s:.0f} req/s p99 {result.p99_ms:.1f} ms"
            )
            if explaining is not None:
                line += _explained_part(result, explaining, shares)
            print(line, flush=True)
        ratios.append(got["B"] / got["A"])
    print(
        f"beside: plain requests/s with explained requests beside (B) / alone (A) {statistics.median(ratios):.2f}x, "
        f"explained {statistics.median(shares):.1%} of B's requests (median of {rounds} rounds)"
    )


def _paced(service: OurService, rounds: int, seconds: float, pause_ms: int) -> None:
    plain_connections, explain_connections = 36, 4
    requests = our_requests(Scenario("xgboost 1 row", ("xgboost",), 1, plain_connections), service.base_url)
    plain = list(requests.bodies)[:10]
    explained = explained_bodies(plain)
    run_load("wrk", requests.url, plain, connections=plain_connections, seconds=4, pause_ms=pause_ms)  # warm-up
    figures: dict[str, list[float]] = {"requests/s": [], "p50": [], "p99": []}
    shares: list[float] = []
    for round_ in range(rounds):
        got = {}
        for arm in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            before = service.cpu()
            result, explaining = run_beside(
                requests.url, plain, connections=plain_connections, seconds=seconds, pause_ms=pause_ms,
                beside=(requests.url, explained, explain_connections, requests.expect) if arm == "B" else None,
                beside_pause_ms=pause_ms,
            )  # fmt: skip
            after = service.cpu()
            failed = result.errors + (0 if explaining is None else explaining.errors)
            if failed or before is None or after is None:
                sys.exit(f"paced {arm}: {failed} request(s) failed: the figures would mean nothing")
            got[arm] = result
            used = after.minus(before)
            line = (
                f"paced round {round_ + 1} {arm}: plain {result.requests_per_s:.0f} req/s p50 {result.p50_ms:.2f} ms "
                f"p99 {result.p99_ms:.2f} ms (cores busy: HTTP {used.http / result.duration_s:.2f}, "
                f"workers {used.workers / result.duration_s:.2f})"
            )
            if explaining is not None:
                line += _explained_part(result, explaining, shares)
            print(line, flush=True)
        figures["requests/s"].append(got["B"].requests_per_s / got["A"].requests_per_s)
        figures["p50"].append(got["B"].p50_ms / got["A"].p50_ms)
        figures["p99"].append(got["B"].p99_ms / got["A"].p99_ms)
    medians = ", ".join(f"{name} {statistics.median(ratios):.2f}x" for name, ratios in figures.items())
    print(
        f"paced ({pause_ms} ms pause): plain requests with explained ones beside (B) / alone (A): {medians}, "
        f"explained {statistics.median(shares):.1%} of B's requests (median of {rounds} rounds)"
    )


def _explained_part(plain: LoadResult, explaining: LoadResult, shares: list[float]) -> str:
    """The explained load's figures for a round's line; its share of all requests is appended to `shares`."""
    share = explaining.requests_per_s / (explaining.requests_per_s + plain.requests_per_s)
    shares.append(share)
    return f"; explained {explaining.requests_per_s:.0f} req/s p99 {explaining.p99_ms:.1f} ms ({share:.1%})"


if __name__ == "__main__":
    sys.exit(main())
