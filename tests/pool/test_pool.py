"""The pool's public API with real worker processes: exact generations, all-or-nothing loads, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.reading import read_artifact
from fraud_inference.models.scoring import load_scorer
from fraud_inference.pool import (
    BatchPolicy,
    InferencePool,
    InferenceTimeoutError,
    NoWorkerError,
    RequestRefusedError,
    Scores,
    WorkerLostError,
    WorkerOptions,
)
from fraud_inference.pool.messages import EXPLANATION
from fraud_inference.registry import Registry
from tests.conftest import slow_xgboost_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifacts(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelArtifact]:
    registry = Registry(demo_registry, alias="champion", stages=("Production",), timeout_s=10)
    destination = tmp_path_factory.mktemp("downloads")
    found = {}
    for key, name in {"xgboost": "fraud-xgboost", "lightgbm": "fraud-lightgbm", "sklearn": "fraud-sklearn"}.items():
        ref = registry.resolve(key, name)
        found[key] = read_artifact(ref, registry.download(ref, destination / key))
    return found


@pytest.fixture(scope="module")
def slow_xgboost(artifacts: dict[str, ModelArtifact], tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    """The demo XGBoost model with its trees repeated 100 times, served as "slow" (see `slow_xgboost_copy`)."""
    import msgspec

    source = artifacts["xgboost"]
    directory = slow_xgboost_copy(Path(source.path), tmp_path_factory.mktemp("slow-xgboost") / "model")
    return msgspec.structs.replace(source, path=str(directory), ref=msgspec.structs.replace(source.ref, key="slow"))


def under_key(artifact: ModelArtifact, key: str) -> ModelArtifact:
    """The same artifact served under another model key."""
    import msgspec

    return msgspec.structs.replace(artifact, ref=msgspec.structs.replace(artifact.ref, key=key))


async def until(condition: Callable[[], bool], *, timeout_s: float = 30.0) -> bool:
    """Whether `condition` (of the pool's public state) held within `timeout_s`: polled, never a fixed sleep."""
    deadline_ns = time.monotonic_ns() + round(timeout_s * 1e9)
    while not condition():
        if time.monotonic_ns() >= deadline_ns:
            return False
        await asyncio.sleep(0.01)
    return True


def run_with_pool(
    size: int,
    scenario: Callable[[InferencePool], Awaitable[None]],
    *,
    timeout_s: float = 30.0,
    max_rows: int = 10_000,
    hung_worker_s: float = 120.0,
    batching: BatchPolicy | None = None,
    explain_nice: int = 0,
) -> None:
    def options(index: int) -> WorkerOptions:
        return WorkerOptions(index, "WARNING", "json", max_rows=max_rows, explain_nice=explain_nice)

    async def main() -> None:
        pool = InferencePool(size, options, timeout_s=timeout_s, hung_worker_s=hung_worker_s, batching=batching)
        await pool.start()
        try:
            await scenario(pool)
        finally:
            await pool.stop()

    asyncio.run(main())


def matrix(frame: pd.DataFrame, rows: slice) -> np.ndarray:
    return np.ascontiguousarray(frame.iloc[rows].to_numpy(dtype=np.float64))


def instances(frame: pd.DataFrame, rows: slice) -> bytes:
    """The rows as a request's `instances`: a JSON array of feature objects."""
    return frame.iloc[rows].to_json(orient="records").encode()


def test_each_request_is_scored_by_exactly_the_generation_it_names(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    features = matrix(transactions, slice(0, 64))
    body = instances(transactions, slice(0, 64))
    by_xgboost = load_scorer(artifacts["xgboost"]).fraud_probability(features)
    by_lightgbm = load_scorer(artifacts["lightgbm"]).fraud_probability(features)
    assert not np.allclose(by_xgboost, by_lightgbm)

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [under_key(artifacts["xgboost"], "fraud")])).errors == {}
        pool.activate(1)
        assert (await pool.load(2, [under_key(artifacts["lightgbm"], "fraud")])).errors == {}
        # Both generations are held until 2 is activated: interleave requests for each.
        results = await asyncio.gather(*(pool.score(1 + i % 2, "fraud", body, f"req-{i}") for i in range(40)))
        for i, probabilities in enumerate(result.probabilities for result in results):
            expected = by_xgboost if i % 2 == 0 else by_lightgbm
            np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)

    run_with_pool(2, scenario)


def test_concurrent_batches_get_exactly_their_own_rows_back(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    scorer = load_scorer(artifacts["sklearn"])
    slices = [slice(start, start + size) for start, size in zip(range(0, 400, 7), [1, 5, 13, 2, 40] * 20, strict=False)]

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["sklearn"]])).errors == {}
        pool.activate(1)
        results = await asyncio.gather(
            *(pool.score(1, "sklearn", instances(transactions, rows), f"r{i}") for i, rows in enumerate(slices))
        )
        for rows, probabilities in zip(slices, (result.probabilities for result in results), strict=True):
            np.testing.assert_allclose(probabilities, scorer.fraud_probability(matrix(transactions, rows)), atol=1e-12)

    run_with_pool(2, scenario)


def test_a_burst_is_shared_between_the_idle_workers(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    """Eight 40-row requests arriving in one event-loop turn leave as one batch per idle worker, four requests
    each, not as one batch of eight for a single worker while the other idles."""
    scorer = load_scorer(artifacts["xgboost"])
    slices = [slice(start, start + 40) for start in range(0, 320, 40)]

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        before = pool.status()
        results = await asyncio.gather(
            *(pool.score(1, "xgboost", instances(transactions, rows), f"r{i}") for i, rows in enumerate(slices))
        )
        after = pool.status()
        assert (after.batches - before.batches, after.batched_requests - before.batched_requests) == (2, 8)
        for rows, result in zip(slices, results, strict=True):
            np.testing.assert_allclose(result.probabilities, scorer.fraud_probability(matrix(transactions, rows)))

    run_with_pool(2, scenario)


def test_a_plain_request_is_scored_beside_large_explanations_on_one_worker_and_they_run_at_low_priority(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    """One worker; three 400-row explained requests (TreeSHAP: ~1 ms a row) arrive, each its own batch, then a
    1-row plain one: the worker explains on a thread of its own, so the plain request is answered before any
    explanation (it used to wait behind them, then behind the first). The explaining thread runs at EXPLAIN_NICE,
    the worker's scoring thread at its own priority."""
    big = [slice(0, 400)] * 3

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        answered: list[str] = []

        async def ask(name: str, rows: slice, wants: tuple[str, ...]) -> Scores:
            result = await pool.score(1, "xgboost", instances(transactions, rows), name, wants=wants)
            answered.append(name)
            return result

        explained = [asyncio.create_task(ask(f"explain-{i}", rows, (EXPLANATION,))) for i, rows in enumerate(big)]
        await asyncio.sleep(0)  # queued and sent first, in this turn of the loop
        plain = await ask("plain", slice(0, 1), ())
        results = await asyncio.gather(*explained)
        nices = [_thread_nices(pid) for pid in pool.status().worker_pids.values()]
        assert answered[0] == "plain", answered
        assert answered[1:] == ["explain-0", "explain-1", "explain-2"]
        assert plain.probabilities.shape == (1,)
        assert all(EXPLANATION in result.outputs and result.probabilities.shape == (400,) for result in results)
        # The worker's explaining thread is at nice 19; its scoring thread (the process's) is at 0.
        assert 19 in nices[0], nices
        assert nices[0][0] == 0, nices

    run_with_pool(1, scenario, batching=BatchPolicy(max_requests=1), explain_nice=19)


def test_an_explained_request_decoded_under_cpu_contention_does_not_silence_its_worker(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    """Every core busy at nice 0 (other processes, two per core), EXPLAIN_NICE 19: a 20,000-row explained request,
    refused for MAX_BATCH_ROWS once decoded, must not stop its worker's heartbeat nor the plain requests beside it.
    Decoding holds the GIL; at nice 19 under contention it held it for seconds, the worker went silent past 5 s,
    was killed, and the plain request it held was lost (WorkerLostError). Only TreeSHAP runs at EXPLAIN_NICE."""
    large = instances(pd.concat([transactions] * 40), slice(0, 20_000))
    small = instances(transactions, slice(0, 1))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        # Each ends by itself after 60 s too, in case this test dies before it ends them by PID.
        # Twice the cores this process may use (one hog per core did not always starve the lane), at most 32.
        hog_count = min(32, 2 * len(os.sched_getaffinity(0)))
        spin = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"
        hogs = [await asyncio.create_subprocess_exec(sys.executable, "-c", spin) for _ in range(hog_count)]
        try:
            explained = asyncio.ensure_future(pool.score(1, "xgboost", large, "large", wants=(EXPLANATION,)))
            plain: list[Scores] = []
            while not explained.done():
                plain.append(await pool.score(1, "xgboost", small, f"plain-{len(plain)}"))
            with pytest.raises(RequestRefusedError):
                explained.result()
        finally:
            for hog in hogs:
                hog.kill()
                await hog.wait()
        assert pool.restarts == 0
        assert all(len(scores.probabilities) == 1 for scores in plain)

    run_with_pool(1, scenario, timeout_s=60.0, explain_nice=19)


def _thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of process `pid`, its main thread first (field 19 of /proc/PID/task/TID/stat)."""
    tids = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    tids.remove(pid)
    return [int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16]) for tid in [pid, *tids]]


def test_coalesced_requests_get_exactly_their_own_rows_scores_and_errors(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    """A burst far beyond what the workers take at once: requests are coalesced into batches, yet each
    answer equals scoring its rows alone, with its own model and generation; a bad request fails alone."""
    scorers = {key: load_scorer(artifacts[key]) for key in ("xgboost", "lightgbm")}
    sizes = [1, 3, 1, 17, 1, 1, 150, 2, 1, 40]
    plan = []  # (generation, model, rows, valid)
    start = 0
    for i in range(300):
        size = sizes[i % len(sizes)]
        plan.append((1 + (i // 7) % 2, ("xgboost", "lightgbm")[i % 2], slice(start, start + size), i % 23 != 5))
        start = (start + size) % 300  # 500 rows: every slice stays inside
    bad_row = b'[{"amount": 1.0}]'  # misses every other feature of the signature

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"], artifacts["lightgbm"]])).errors == {}
        pool.activate(1)
        swapped = [under_key(artifacts["lightgbm"], "xgboost"), under_key(artifacts["xgboost"], "lightgbm")]
        assert (await pool.load(2, swapped)).errors == {}  # generation 2 scores each key with the other model
        outcomes = await asyncio.gather(
            *(
                pool.score(generation, model, instances(transactions, rows) if valid else bad_row, f"r{i}")
                for i, (generation, model, rows, valid) in enumerate(plan)
            ),
            return_exceptions=True,
        )
        for (generation, model, rows, valid), outcome in zip(plan, outcomes, strict=True):
            if not valid:
                assert isinstance(outcome, RequestRefusedError)
                assert (outcome.refusal.reason, outcome.refusal.row) == ("invalid_rows", 0)
                assert outcome.refusal.message.startswith("Object missing required field")
                continue
            assert isinstance(outcome, Scores)
            scorer_key = model if generation == 1 else {"xgboost": "lightgbm", "lightgbm": "xgboost"}[model]
            expected = scorers[scorer_key].fraud_probability(matrix(transactions, rows))
            np.testing.assert_allclose(outcome.probabilities, expected, rtol=0, atol=1e-12)
        status = pool.status()
        assert status.batched_requests == len(plan)
        assert status.batches < len(plan) / 2, "a burst of 300 requests on 2 workers should have been coalesced"

    run_with_pool(2, scenario)


def test_a_value_refused_in_a_coalesced_batch_is_named_in_its_own_rows_and_fails_alone(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    """Coalesced requests' rows are checked as one matrix; a request holding a fraction in an integer column, or
    too many rows, is still refused alone, naming the row of its own body and the feature, and the others of its
    batch are scored exactly as alone."""
    scorer = load_scorer(artifacts["xgboost"])
    plan = [(slice(i, i + 1 + i % 3), i % 11 == 3, i % 13 == 7) for i in range(200)]  # (rows, fraction, too many)

    def body(rows: slice, fraction: bool, too_many: bool) -> bytes:
        if too_many:
            return instances(transactions, slice(0, 21))
        records = json.loads(instances(transactions, rows))
        if fraction:
            records[-1]["hour_of_day"] = 7.5
        return json.dumps(records).encode()

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        outcomes = await asyncio.gather(
            *(pool.score(1, "xgboost", body(*planned), f"r{i}") for i, planned in enumerate(plan)),
            return_exceptions=True,
        )
        for (rows, fraction, too_many), outcome in zip(plan, outcomes, strict=True):
            if too_many:
                assert isinstance(outcome, RequestRefusedError)
                assert (outcome.refusal.reason, outcome.refusal.rows) == ("too_many_rows", 21)
            elif fraction:
                assert isinstance(outcome, RequestRefusedError)
                refusal = outcome.refusal
                assert (refusal.reason, refusal.row, refusal.feature) == (
                    "invalid_rows",
                    rows.stop - rows.start - 1,
                    "hour_of_day",
                )
                assert refusal.message == "Expected `int`, got a fraction (the model expects type long)"
            else:
                assert isinstance(outcome, Scores)
                expected = scorer.fraud_probability(matrix(transactions, rows))
                np.testing.assert_array_equal(outcome.probabilities, expected)
        assert pool.status().batches < len(plan) / 2, "a burst of 200 requests on 2 workers should have been coalesced"

    run_with_pool(2, scenario, max_rows=20)


def test_rows_past_max_batch_rows_are_refused(artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame) -> None:
    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        with pytest.raises(RequestRefusedError) as refused:
            await pool.score(1, "xgboost", instances(transactions, slice(0, 11)), "too-many")
        assert (refused.value.refusal.reason, refused.value.refusal.rows) == ("too_many_rows", 11)
        assert "MAX_BATCH_ROWS=10" in refused.value.refusal.message
        assert len((await pool.score(1, "xgboost", instances(transactions, slice(0, 10)), "ok")).probabilities) == 10

    run_with_pool(1, scenario, max_rows=10)


def test_a_generation_that_fails_to_load_anywhere_is_dropped_everywhere(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame, tmp_path: Path
) -> None:
    # A fault we cannot get from a healthy registry: a model file corrupted on disk.
    broken_dir = tmp_path / "broken"
    shutil.copytree(artifacts["lightgbm"].path, broken_dir)
    for model_file in broken_dir.glob("model.*"):
        model_file.write_bytes(b"not a model")
    import msgspec

    broken = msgspec.structs.replace(artifacts["lightgbm"], path=str(broken_dir))
    features = instances(transactions, slice(0, 3))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"], artifacts["lightgbm"]])).errors == {}
        pool.activate(1)
        errors = (await pool.load(2, [artifacts["xgboost"], broken])).errors
        assert set(errors) == {"lightgbm"}
        assert pool.status().active_generation == 1
        assert len((await pool.score(1, "lightgbm", features, "still-served")).probabilities) == 3
        with pytest.raises(NoWorkerError):
            await pool.score(2, "xgboost", features, "never-activated")

    run_with_pool(2, scenario)


def test_kill_9_of_a_worker_loses_no_request_and_the_pool_heals(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    features = instances(transactions, slice(0, 20))
    expected = load_scorer(artifacts["xgboost"]).fraud_probability(matrix(transactions, slice(0, 20)))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        victim = pool.worker_pids()[1]
        assert victim is not None

        answered = 0
        warmed_up, killed = asyncio.Event(), asyncio.Event()

        async def client(n: int) -> list[np.ndarray]:
            nonlocal answered
            results = []
            # Keep going until well after the kill, so requests are in flight when the worker dies.
            while not killed.is_set() or len(results) < 100:
                results.append((await pool.score(1, "xgboost", features, f"c{n}-{len(results)}")).probabilities)
                answered += 1
                if answered >= 200:
                    warmed_up.set()
            return results

        async def killer() -> None:
            await warmed_up.wait()
            os.kill(victim, signal.SIGKILL)
            killed.set()

        *answers, _ = await asyncio.gather(*(client(n) for n in range(4)), killer())
        for probabilities in (p for batch in answers for p in batch):
            np.testing.assert_allclose(probabilities, expected, atol=1e-12)
        await until(lambda: pool.status().ready_workers >= 2, timeout_s=60)
        status = pool.status()
        assert (status.live_workers, status.ready_workers) == (2, 2)
        assert pool.restarts == 1
        assert victim not in pool.worker_pids().values()

    run_with_pool(2, scenario)


def test_requests_waiting_when_the_only_worker_dies_are_scored_by_its_replacement(
    artifacts: dict[str, ModelArtifact], slow_xgboost: ModelArtifact, transactions: pd.DataFrame
) -> None:
    """kill -9 of the only worker while one large request is scored and two more wait behind it: the one in
    flight has no live worker to retry on (WorkerLostError at once), the two waiting are scored by the
    replacement as soon as it holds the generation, well inside INFERENCE_TIMEOUT_S (they waited it out)."""
    large = instances(pd.concat([transactions] * 20), slice(0, 5_000))
    small = instances(transactions, slice(0, 5))
    expected = load_scorer(slow_xgboost).fraud_probability(matrix(transactions, slice(0, 5)))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [slow_xgboost])).errors == {}
        pool.activate(1)
        victim = pool.worker_pids()[1]
        assert victim is not None
        scoring = asyncio.ensure_future(pool.score(1, "slow", large, "large"))
        assert await until(lambda: pool.status().batches >= 1), "the large request never left for the worker"
        # NOTE: a worker that has held a batch for 50 ms (the dispatcher's busy-long rule) is sent no other: 0.3 s
        # after the large request left, what comes next waits in the queue. The large one costs far more (5,000
        # rows of the slow model, ~1.5 s here): it is still scoring when the worker is killed, checked below.
        await asyncio.sleep(0.3)
        waiting = [asyncio.ensure_future(pool.score(1, "slow", small, f"waiting-{i}")) for i in range(2)]
        assert await until(lambda: pool.status().queued == 3), pool.status()
        assert not scoring.done(), "the large request was scored before the kill: make the slow model slower"
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerLostError):
            await scoring
        for answer in await asyncio.gather(*waiting):
            np.testing.assert_allclose(answer.probabilities, expected, atol=1e-12)
        assert pool.restarts == 1

    run_with_pool(1, scenario, timeout_s=60.0)


def test_a_hung_worker_times_out_its_request_and_is_replaced(
    artifacts: dict[str, ModelArtifact], transactions: pd.DataFrame
) -> None:
    features = instances(transactions, slice(0, 5))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"]])).errors == {}
        pool.activate(1)
        hung = pool.worker_pids()[1]
        assert hung is not None
        # A fault we cannot get from a healthy worker: one stuck, alive and silent (no heartbeat either).
        # It stays stopped until the pool replaces it: a worker that comes back by itself is not hung.
        os.kill(hung, signal.SIGSTOP)
        try:
            outcomes = await asyncio.gather(
                *(pool.score(1, "xgboost", features, f"r{i}") for i in range(8)), return_exceptions=True
            )
            timed_out = [o for o in outcomes if isinstance(o, InferenceTimeoutError)]
            answered = [o for o in outcomes if isinstance(o, Scores)]
            assert len(timed_out) + len(answered) == 8
            assert timed_out, "the requests queued on the stopped worker should have timed out"

            def healed() -> bool:
                return hung not in pool.worker_pids().values() and pool.status().ready_workers == 2

            assert await until(healed, timeout_s=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
        assert len((await pool.score(1, "xgboost", features, "after")).probabilities) == 5

    run_with_pool(2, scenario, timeout_s=1.0)


def test_a_batch_the_model_refuses_fails_only_the_request_it_cannot_score(
    real_models: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The custom model raises on a negative amount (its own check): sent alone or coalesced with valid requests,
    only that request is a 422 with the model's reason; every other gets exactly its own rows' scores."""
    import json

    from fraud_inference.models.reading import fetch_artifact
    from fraud_inference.models.scoring import load_model
    from fraud_inference.models.trust import ModelTrust
    from tests.real_models import make_fraud_table, request_rows

    tracking_uri, names = real_models
    registry = Registry(tracking_uri, alias="champion", stages=(), timeout_s=10)
    artifact = fetch_artifact(
        registry, registry.resolve("custom", names["pyfunc-custom"]), tmp_path, dependency_policy="compatible",
        trust=ModelTrust(pyfunc="allow"),
    )  # fmt: skip
    served = load_model(artifact)
    table, _labels = make_fraud_table(120, seed=8)
    rows = [row for row in request_rows(table) if row.get("country") not in (None, "ZZ")]
    bodies = [json.dumps(rows[i % len(rows) : i % len(rows) + 2]).encode() for i in range(120)]
    refused = {i for i in range(120) if i % 9 == 4}
    for i in refused:
        bodies[i] = json.dumps([{**rows[0], "amount": -5.0}]).encode()

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifact])).errors == {}
        pool.activate(1)
        with pytest.raises(RequestRefusedError) as alone:
            await pool.score(1, "custom", bodies[4], "alone")  # a batch of one request
        assert alone.value.refusal.reason == "invalid_rows"
        assert "a negative amount is not a transaction" in alone.value.refusal.message
        outcomes = await asyncio.gather(
            *(pool.score(1, "custom", body, f"r{i}") for i, body in enumerate(bodies)), return_exceptions=True
        )
        for i, (body, outcome) in enumerate(zip(bodies, outcomes, strict=True)):
            if i in refused:
                assert isinstance(outcome, RequestRefusedError), outcome
                assert outcome.refusal.reason == "invalid_rows"
                assert "a negative amount is not a transaction" in outcome.refusal.message
                continue
            assert isinstance(outcome, Scores), outcome
            np.testing.assert_allclose(outcome.probabilities, served.score(body), rtol=0, atol=1e-12)
        assert pool.status().batches < len(bodies) / 2, "the burst should have been coalesced"

    run_with_pool(1, scenario)


def test_a_slow_request_times_out_alone_and_no_worker_is_replaced(
    artifacts: dict[str, ModelArtifact], slow_xgboost: ModelArtifact, transactions: pd.DataFrame
) -> None:
    """INFERENCE_TIMEOUT_S bounds the client's wait, nothing more: slow is not hung, and the other worker
    goes on answering every other request meanwhile."""
    large = instances(pd.concat([transactions] * 20), slice(0, 10_000))
    small = instances(transactions, slice(0, 5))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [artifacts["xgboost"], slow_xgboost])).errors == {}
        pool.activate(1)
        pids = pool.worker_pids()
        slow = asyncio.ensure_future(pool.score(1, "slow", large, "large"))
        others: list[Scores] = []
        while not slow.done():  # requests one after another for as long as the large one waits
            others.append(await pool.score(1, "xgboost", small, f"small-{len(others)}"))
        with pytest.raises(InferenceTimeoutError):
            slow.result()
        others += await asyncio.gather(*(pool.score(1, "xgboost", small, f"after-{i}") for i in range(20)))
        assert all(len(scores.probabilities) == 5 for scores in others)
        assert len(others) > 20
        status = pool.status()
        assert (pool.restarts, pool.worker_pids(), status.ready_workers) == (0, pids, 2)

    run_with_pool(2, scenario, timeout_s=1.0)


def test_a_batch_scored_past_hung_worker_s_gets_its_worker_replaced(
    slow_xgboost: ModelArtifact, transactions: pd.DataFrame
) -> None:
    """Heartbeats go on while a call runs (the worker is alive), yet one batch past HUNG_WORKER_S is stuck."""
    large = instances(pd.concat([transactions] * 20), slice(0, 10_000))

    async def scenario(pool: InferencePool) -> None:
        assert (await pool.load(1, [slow_xgboost])).errors == {}
        pool.activate(1)
        first = pool.worker_pids()[1]
        with pytest.raises(WorkerLostError):  # killed while scoring it; no other worker holds the model
            await pool.score(1, "slow", large, "stuck")
        assert pool.restarts == 1
        assert first not in pool.worker_pids().values()
        assert "while serving generation(s) [1]" in (pool.last_worker_failure or "")

    run_with_pool(1, scenario, timeout_s=60.0, hung_worker_s=1.0)
