"""Memory across refreshes and under bursts of large requests: a long-running replica must not grow."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import descendants, http_process, use_registry
from tests.e2e.test_hot_swap import rows

pytestmark = [pytest.mark.slow, pytest.mark.soak]

ADMIN_KEY = "memory-admin-key-0123456789"
REFRESHES = 30


def rss_mib(pid: int) -> float:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def parent_of(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


# NOTE: its own bound, not the suite's 300 s: 30 refreshes, each gating and loading three models in two workers,
# take ~7-8 s apiece here on a quiet machine (~230 s, plus the start), and the CI run timed out on a loaded one.
@pytest.mark.timeout(900)
def test_thirty_refreshes_between_two_versions_leave_server_and_worker_memory_bounded(
    service_factory, private_registry: str
) -> None:
    use_registry(private_registry)
    client = MlflowClient(tracking_uri=private_registry, registry_uri=private_registry)
    names = ("fraud-xgboost", "fraud-lightgbm", "fraud-sklearn")
    # A second version of each model, from the same files: each swap loads every model again, from its own folder.
    for name in names:
        champion = client.get_model_version_by_alias(name, "champion")
        assert client.create_model_version(name, source=champion.source, run_id=champion.run_id).version == 2
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": private_registry, "WORKERS": "2", "API_KEYS": ADMIN_KEY, "LOG_LEVEL": "WARNING"},
    )
    service.wait_ready()
    workers = {
        pid: title for pid, title in descendants(service.process.pid).items() if "fraud-inference worker" in title
    }
    assert len(workers) == 2, workers
    server = {parent_of(pid) for pid in workers}.pop()
    watched = {server: "server", **{pid: "worker " + title.rsplit(" ", 1)[-1] for pid, title in workers.items()}}

    samples: list[dict[int, float]] = []
    with service.client() as admin:
        for n in range(1, REFRESHES + 1):
            for name in names:
                client.set_registered_model_alias(name, "champion", "2" if n % 2 else "1")
            answer = admin.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY})
            assert answer.status_code == 200, answer.text
            assert answer.json()["generation"] == n + 1
            samples.append({pid: rss_mib(pid) for pid in watched})
    # From refresh 6 (warm: both versions loaded and freed a few times) to refresh 30, both serving version 1.
    first, last = samples[5], samples[-1]
    growth = {name: last[pid] - first[pid] for pid, name in watched.items()}
    shown = (f"{name} {first[pid]:.1f} -> {last[pid]:.1f} ({growth[name]:+.1f})" for pid, name in watched.items())
    print(f"\nRSS over refreshes 6 -> {REFRESHES} (MiB): " + ", ".join(shown))
    assert set(workers) <= set(descendants(service.process.pid)), "no worker may have been replaced"
    # Measured here: with gc.freeze() after every generation each worker grew ~1.7 MiB over these refreshes
    # (~280 objects of each generation's cyclic garbage frozen for good), the server 0.5-1.5 MiB; frozen once,
    # workers +0.1 MiB. RSS moves by a MiB or two for reasons of its own (allocator arenas): the server's bound
    # is that slack, the workers' is what a generation's frozen garbage cannot stay under.
    assert growth["server"] < 8, growth
    assert all(delta < 1.0 for name, delta in growth.items() if name != "server"), growth


BURST = 24
BURST_ROUNDS = 6
BURST_ROWS = 10_000


def test_rounds_of_concurrent_large_requests_leave_the_http_process_memory_bounded(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2", "LOG_LEVEL": "WARNING"})
    service.wait_ready()
    server = http_process(service)
    records = rows(transactions, len(transactions))
    instances = (records * -(-BURST_ROWS // len(records)))[:BURST_ROWS]
    good = json.dumps({"model": "xgboost", "instances": instances}).encode()  # ~4.5 MB
    feature = next(iter(records[0]))
    # One row the worker refuses (422): a refused request's failure must not keep its body either.
    bad = json.dumps({"model": "xgboost", "instances": [*instances[:-1], {**instances[-1], feature: "x"}]}).encode()
    bodies = [bad if n % 3 == 2 else good for n in range(BURST)]

    def post(body: bytes) -> int:
        with httpx.Client(base_url=service.base_url, timeout=120.0) as client:
            return client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"}).status_code

    samples: list[float] = []
    with ThreadPoolExecutor(BURST) as clients:
        for _ in range(BURST_ROUNDS):
            statuses = list(clients.map(post, bodies))
            assert statuses == [422 if n % 3 == 2 else 200 for n in range(BURST)], statuses
            samples.append(rss_mib(server))
    print("\nHTTP process RSS after each round (MiB): " + " ".join(f"{sample:.0f}" for sample in samples))
    # Measured here: with a reference cycle per request (request <-> batch; a failure's traceback <-> its future),
    # freed only by the rare full collection of a frozen heap, the HTTP process grew ~100 MiB a round, one body per
    # request (590 682 780 873 984 1091); without, it moved within ~100 MiB of round 1 (466 558 520 559 454 456),
    # the allocator keeping what a round's bodies needed. The bound: two rounds of that growth.
    growth = samples[-1] - samples[0]
    assert growth < 200, samples
