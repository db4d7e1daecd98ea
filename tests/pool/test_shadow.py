"""A challenger in the real pool: scored after each answer on the same rows when the service is idle, its turn
skipped (and counted) when other requests wait or are being scored, and never an answer changed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.reading import read_artifact
from fraud_inference.models.scoring import load_scorer
from fraud_inference.pool import BatchPolicy, InferencePool, WorkerOptions
from fraud_inference.pool.shadow_messages import Shadowed
from fraud_inference.registry import Registry
from tests.conftest import slow_xgboost_copy
from tests.pool.test_pool import until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion_and_challenger(
    demo_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelArtifact, ModelArtifact]:
    """The demo XGBoost champion, and as its challenger (version "2") the same trees repeated 100 times: a real
    model whose scores differ from the champion's and which is slow enough to be still scoring when batches come."""
    registry = Registry(demo_registry, alias="champion", stages=("Production",), timeout_s=10)
    ref = registry.resolve("xgboost", "fraud-xgboost")
    champion = read_artifact(ref, registry.download(ref, tmp_path_factory.mktemp("champion")))
    slow = slow_xgboost_copy(Path(champion.path), tmp_path_factory.mktemp("challenger") / "model")
    challenger = msgspec.structs.replace(
        champion, path=str(slow), ref=msgspec.structs.replace(champion.ref, version="2")
    )
    return champion, challenger


def test_idle_turns_score_every_row_and_a_bursts_turns_are_skipped_and_counted(
    champion_and_challenger: tuple[ModelArtifact, ModelArtifact], transactions: pd.DataFrame
) -> None:
    champion, challenger = champion_and_challenger
    features = np.ascontiguousarray(transactions.iloc[:60].to_numpy(dtype=np.float64))
    by_champion = load_scorer(champion).fraud_probability(features)
    by_challenger = load_scorer(challenger).fraud_probability(features)
    reports: list[Shadowed] = []

    def rows() -> Counter[str]:
        total: Counter[str] = Counter()
        for report in reports:
            total.update(report.rows)
        return total

    async def scenario() -> None:
        pool = InferencePool(
            1, lambda index: WorkerOptions(index, "WARNING", "json"), timeout_s=60,
            batching=BatchPolicy(max_requests=1), on_shadowed=reports.append, cores=2,
        )  # fmt: skip
        await pool.start()
        try:
            assert (await pool.load(1, [champion], [challenger])).errors == {}
            pool.activate(1)
            # Idle: one request at a time, the next once the challenger has reported on the last.
            for start in range(0, 30, 6):
                body = transactions.iloc[start : start + 6].to_json(orient="records").encode()
                scores = await pool.score(1, "xgboost", body, f"idle-{start}")
                np.testing.assert_allclose(scores.probabilities, by_champion[start : start + 6], rtol=0, atol=1e-6)
                assert await until(lambda start=start: sum(rows().values()) == start + 6, timeout_s=60.0)
            assert rows() == {"scored": 30}
            differences = np.concatenate([np.frombuffer(r.differences, dtype=np.float64) for r in reports])
            np.testing.assert_allclose(differences, by_challenger[:30] - by_champion[:30], rtol=0, atol=1e-6)
            # A burst: every batch leaves the queue while other requests wait in it or are held by the worker, so on
            # two cores (`cores=2`, whatever this machine has) no challenger takes a turn; every answer is the
            # champion's, and every row is accounted for.
            bodies = [transactions.iloc[30 + n : 31 + n].to_json(orient="records").encode() for n in range(30)]
            answers = await asyncio.gather(*(pool.score(1, "xgboost", b, f"burst-{n}") for n, b in enumerate(bodies)))
            for n, answer in enumerate(answers):
                np.testing.assert_allclose(answer.probabilities, by_champion[30 + n : 31 + n], rtol=0, atol=1e-6)
            assert await until(lambda: sum(rows().values()) == 60, timeout_s=60.0)
            assert rows() == {"scored": 30, "skipped_busy": 30}
        finally:
            await pool.stop()

    asyncio.run(scenario())
