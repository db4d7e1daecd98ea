"""COMPILED_TREES=on: compiled XGBoost and LightGBM trees score MLflow's own numbers, or the version stays native.

Real models of every tree shape (tests/real_models.py: NaN in numeric columns, pandas category columns, raw
Boosters, early stopping) are fetched from a real SQLite registry and loaded as the workers load them, with a
compiled-trees cache; their scores are compared with `mlflow.<flavour>.load_model` on rows with missing values
and unseen categories.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.compiled import CompiledTreesScorer, _crashed_loads, _loading, crashed_libraries
from fraud_inference.models.flavors.lightgbm import LightGBMScorer
from fraud_inference.models.flavors.xgboost import XGBoostScorer
from fraud_inference.models.reading import fetch_artifact, read_artifact
from fraud_inference.models.scoring import ServedModel, load_model
from fraud_inference.models.trust import ModelTrust
from fraud_inference.parity import check_parity, check_parity_isolated
from fraud_inference.registry import Registry
from tests.conftest import slow_xgboost_copy
from tests.models.test_real_models import reference
from tests.real_models import NUMERIC, make_fraud_table, request_rows

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

COMPILED = [
    "xgb-numeric",
    "xgb-booster",
    "xgb-early-stopped",
    "lgb-classifier",
    "lgb-booster",
    "lgb-booster-categorical",
]
"""Shapes whose trees compile exactly: NaN, LightGBM categorical splits, raw Boosters, early stopping."""
NATIVE = ["xgb-classifier", "xgb-booster-categorical"]
"""XGBoost models that record their categories (an encoder in the model): treelite 4.8 cannot read them."""


@pytest.fixture(scope="module")
def registry(real_models: tuple[str, dict[str, str]]) -> Registry:
    return Registry(real_models[0], alias="champion", stages=(), timeout_s=10)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compiled-trees cache for the module, as FRAUD_INFERENCE_HOME keeps one across restarts."""
    return tmp_path_factory.mktemp("compiled-trees")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    table, _labels = make_fraud_table(80, seed=21)
    return request_rows(table)


def artifact_of(registry: Registry, key: str, downloads: Path, cache: Path) -> ModelArtifact:
    ref = registry.resolve(key, f"real-{key}")
    return fetch_artifact(
        registry, ref, downloads, dependency_policy="compatible", trust=ModelTrust(), compiled_trees=cache
    )


def served_scores(served: ServedModel, rows: list[dict[str, Any]]) -> np.ndarray:
    return np.concatenate(
        [served.score(json.dumps([row]).encode()) for row in rows] + [served.score(json.dumps(rows).encode())]
    )


@pytest.mark.parametrize("key", COMPILED)
def test_compiled_trees_score_as_mlflow_flavor_loader(
    registry: Registry,
    real_models: tuple[str, dict[str, str]],
    cache: Path,
    tmp_path: Path,
    rows: list[dict[str, Any]],
    key: str,
) -> None:
    tracking_uri, names = real_models
    artifact = artifact_of(registry, key, tmp_path, cache)
    served = load_model(artifact, extra="ignore")
    assert isinstance(served.scorer, CompiledTreesScorer)
    assert any(row.get("device_age_days") is None for row in rows), "some rows must miss a value"
    expected = reference(tracking_uri, names[key], key, rows)
    np.testing.assert_allclose(served_scores(served, rows), np.concatenate([expected, expected]), rtol=0, atol=1e-6)
    report = check_parity(artifact)
    assert report.ok, report.failures


@pytest.mark.parametrize("key", NATIVE)
def test_trees_treelite_cannot_read_are_served_natively_and_the_log_says_why(
    registry: Registry,
    real_models: tuple[str, dict[str, str]],
    cache: Path,
    tmp_path: Path,
    rows: list[dict[str, Any]],
    key: str,
) -> None:
    tracking_uri, names = real_models
    with capture_logs() as logs:
        served = load_model(artifact_of(registry, key, tmp_path, cache), extra="ignore")
    assert not isinstance(served.scorer, CompiledTreesScorer)
    (fallback,) = [line for line in logs if line["event"] == "compiled_trees.native_fallback"]
    assert fallback["version"] == "1"
    assert "treelite cannot read it" in fallback["reason"]
    assert "categorical encoder" in fallback["reason"]
    assert fallback["recorded"] is True, "treelite refusing the model is the model's own: no process tries again"
    expected = reference(tracking_uri, names[key], key, rows)
    np.testing.assert_allclose(served_scores(served, rows), np.concatenate([expected, expected]), rtol=0, atol=1e-6)


def test_a_second_load_reuses_the_compiled_library(registry: Registry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    artifact = artifact_of(registry, "lgb-booster", tmp_path / "downloads", cache)
    with capture_logs() as first:
        load_model(artifact)
    (library,) = cache.glob("*.so")
    built = library.stat().st_mtime_ns
    with capture_logs() as second:
        served = load_model(artifact)
    assert [line["event"] for line in first].count("compiled_trees.compiled") == 1
    assert [line["event"] for line in second].count("compiled_trees.compiled") == 0
    (serving,) = [line for line in second if line["event"] == "compiled_trees.serving"]
    assert serving["compiled_now"] is False
    assert isinstance(served.scorer, CompiledTreesScorer)
    assert served.scorer.library == library
    assert library.stat().st_mtime_ns == built


def test_two_loads_at_once_compile_the_version_once(registry: Registry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    artifact = artifact_of(registry, "xgb-numeric", tmp_path / "downloads", cache)
    with capture_logs() as logs, ThreadPoolExecutor(2) as loads:
        served = list(loads.map(lambda _: load_model(artifact), range(2)))
    assert len(served) == 2
    assert all(isinstance(model.scorer, CompiledTreesScorer) for model in served)
    assert [line["event"] for line in logs].count("compiled_trees.compiled") == 1
    assert len(list(cache.glob("*.so"))) == 1


def test_a_load_in_progress_or_just_finished_is_never_taken_for_a_crash(tmp_path: Path) -> None:
    """A load's marker seen unlocked means its process died. CI once saw a live load taken for a crash (the marker
    existed a moment before it was locked), and the other thread discarded and built the library again; a load that
    finished between the glob and the lock looked the same. One thread marks and unmarks loads while another looks.
    """
    library = tmp_path / "model.so"
    stop = threading.Event()
    taken_for_crashes: list[Path] = []

    def look() -> None:
        while not stop.is_set():
            taken_for_crashes.extend(_crashed_loads(library))

    looker = threading.Thread(target=look)
    looker.start()
    try:
        for _ in range(3000):
            with _loading(library):
                pass
    finally:
        stop.set()
        looker.join()
    assert taken_for_crashes == []
    assert crashed_libraries(tmp_path) == []


def test_a_cached_library_of_another_version_is_built_again_not_refused(registry: Registry, tmp_path: Path) -> None:
    """A valid library and its matching record, of another model, under this version's name: the record matches,
    the probe rows do not; the cache is wrong, not the model, so the version is compiled again and served."""
    downloads = tmp_path / "downloads"
    load_model(artifact_of(registry, "xgb-numeric", downloads, tmp_path / "built"))
    (other,) = (tmp_path / "built").glob("*.so")
    cache = tmp_path / "cache"
    load_model(artifact_of(registry, "xgb-booster", downloads, cache))
    (library,) = cache.glob("*.so")
    shutil.copyfile(other, library)
    shutil.copyfile(other.with_suffix(".json"), library.with_suffix(".json"))
    booster = artifact_of(registry, "xgb-booster", downloads, cache)
    with capture_logs() as logs:
        served = load_model(booster)
    assert isinstance(served.scorer, CompiledTreesScorer)
    (mismatch,) = [line for line in logs if line["event"] == "compiled_trees.cache_mismatch"]
    assert mismatch["library"] == str(library)
    assert "on probe row" in mismatch["reason"]
    assert [line["event"] for line in logs].count("compiled_trees.compiled") == 1
    assert not list(cache.glob("*.refused"))
    assert library.read_bytes() != other.read_bytes()


_LOAD_IN_A_PROCESS = """
import sys, msgspec
from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.scoring import load_model
from fraud_inference.observability.logging import configure_logging
configure_logging("INFO", "json", role="test")
served = load_model(msgspec.json.decode(sys.stdin.buffer.read(), type=ModelArtifact), extra="ignore")
print("scorer", type(served.scorer).__name__, flush=True)
"""


def load_in_a_process(artifact: ModelArtifact) -> subprocess.CompletedProcess[str]:
    """`load_model` in a fresh interpreter, as a worker loads: a crash kills that process, not pytest."""
    return subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_PROCESS], input=msgspec.json.encode(artifact).decode(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_cached_library_cut_short_is_built_again_and_never_crashes_the_loader(
    registry: Registry, tmp_path: Path
) -> None:
    """A library cut short (a partial write, a full disk) made every process loading it die with SIGBUS."""
    cache = tmp_path / "cache"
    artifact = artifact_of(registry, "lgb-booster", tmp_path / "downloads", cache)
    load_model(artifact)
    (library,) = cache.glob("*.so")
    whole = library.read_bytes()
    library.write_bytes(whole[: len(whole) // 3])
    loaded = load_in_a_process(artifact)
    assert loaded.returncode == 0, f"the loader died ({loaded.returncode}):\n{loaded.stderr[-2000:]}"
    assert "scorer CompiledTreesScorer" in loaded.stdout
    assert "compiled_trees.cache_mismatch" in loaded.stdout + loaded.stderr
    assert str(library) in loaded.stdout + loaded.stderr
    assert library.stat().st_size == len(whole)
    assert not list(cache.glob("*.refused"))


def test_a_library_that_crashed_its_loader_is_named_and_built_again(registry: Registry, tmp_path: Path) -> None:
    """A library whose record matches but whose loading kills the process (a tampered cache: a library whose
    constructor raises SIGSEGV, with a record forged to match; real gcc output, a real crash): the crash leaves
    the library named: the parity gate's report names it, and the next load builds it again."""
    cache = tmp_path / "cache"
    artifact = artifact_of(registry, "xgb-numeric", tmp_path / "downloads", cache)
    load_model(artifact)
    (library,) = cache.glob("*.so")
    source = tmp_path / "crash.c"
    source.write_text("#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGSEGV); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    content = library.read_bytes()
    record = json.loads(library.with_suffix(".json").read_text())
    record.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    library.with_suffix(".json").write_text(json.dumps(record))
    (report,) = check_parity_isolated([artifact])
    assert not report.ok
    (failure,) = report.failures
    assert f"it died loading the cached compiled trees {library}" in failure
    assert crashed_libraries(cache) == [library]
    loaded = load_in_a_process(artifact)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "scorer CompiledTreesScorer" in loaded.stdout
    assert "compiled_trees.load_crashed" in loaded.stdout
    assert crashed_libraries(cache) == []


def test_a_cross_entropy_lightgbm_model_treelite_dumps_badly_is_refused_for_good(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """treelite 4.8 dumps a LightGBM cross_entropy model's trees with `"threshold":,`: the model's own property,
    recorded, so no process compiles it again."""
    import lightgbm as lgb

    table, labels = make_fraud_table(300, seed=5)
    booster = lgb.train(
        {"objective": "cross_entropy", "num_leaves": 7, "verbose": -1, "num_threads": 1},
        lgb.Dataset(table[NUMERIC].to_numpy(dtype=np.float64), label=labels), num_boost_round=5,
    )  # fmt: skip
    # The registered lgb-booster's directory (its signature: the same numeric columns), holding this model instead.
    small = artifact_of(registry, "lgb-booster", tmp_path / "downloads", tmp_path / "cache")
    model_dir = tmp_path / "cross-entropy"
    shutil.copytree(small.path, model_dir)
    booster.save_model(str(model_dir / "model.lgb"))
    artifact = msgspec.structs.replace(read_artifact(small.ref, model_dir), compiled_trees=str(tmp_path / "cache"))
    # FAKE: the dump is made invalid as treelite 4.8 writes it for some cross_entropy models (FACTS.md, 2026-12-07);
    # the models trained here dump valid JSON, and finding the shape that does not was left out.
    read_trees = LightGBMScorer.treelite_model

    class BadDump:
        def __init__(self, model: Any) -> None:
            self._model = model

        def __getattr__(self, name: str) -> Any:
            return getattr(self._model, name)

        def dump_as_json(self, *, pretty_print: bool) -> str:
            return re.sub(
                r'"threshold":[^,]*,', '"threshold":,', self._model.dump_as_json(pretty_print=pretty_print), count=1
            )

    monkeypatch.setattr(LightGBMScorer, "treelite_model", lambda scorer: BadDump(read_trees(scorer)))
    for attempt in range(2):
        with capture_logs() as logs:
            served = load_model(artifact)
        assert not isinstance(served.scorer, CompiledTreesScorer)
        (fallback,) = [line for line in logs if line["event"] == "compiled_trees.native_fallback"]
        assert "not valid JSON" in fallback["reason"], fallback
        assert fallback["recorded"] is True
        if attempt:
            assert "recorded in" in fallback["reason"]


def test_trees_too_large_to_compile_at_load_are_served_natively(registry: Registry, tmp_path: Path) -> None:
    small = artifact_of(registry, "xgb-numeric", tmp_path / "downloads", tmp_path / "cache")
    big_dir = slow_xgboost_copy(Path(small.path), tmp_path / "big", repeat=2000)  # 16,000 trees
    big = msgspec.structs.replace(read_artifact(small.ref, big_dir), compiled_trees=str(tmp_path / "cache"))
    with capture_logs() as logs:
        served = load_model(big)
    assert not isinstance(served.scorer, CompiledTreesScorer)
    (fallback,) = [line for line in logs if line["event"] == "compiled_trees.native_fallback"]
    assert fallback["reason"].startswith("too large to compile at load: 1600")  # and the base margin's leaf
    assert not list((tmp_path / "cache").glob("*.so"))


def test_a_transient_fault_reading_the_trees_is_served_natively_once_and_the_next_load_compiles(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAKE: the first `treelite_model()` raises an OSError. A transient fault (a full disk, memory short for a
    moment) cannot be produced for real here, so the scorer's method is wrapped to fail once, then read the trees."""
    cache = tmp_path / "cache"
    artifact = artifact_of(registry, "xgb-numeric", tmp_path / "downloads", cache)
    read_trees = XGBoostScorer.treelite_model
    calls = 0

    def fails_once(scorer: XGBoostScorer) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")
        return read_trees(scorer)

    monkeypatch.setattr(XGBoostScorer, "treelite_model", fails_once)
    with capture_logs() as first:
        served = load_model(artifact)
    assert not isinstance(served.scorer, CompiledTreesScorer)
    (fallback,) = [line for line in first if line["event"] == "compiled_trees.native_fallback"]
    assert fallback["reason"].startswith("OSError: [Errno 28] No space left on device")
    assert fallback["recorded"] is False
    assert not list(cache.glob("*.refused"))
    with capture_logs() as second:
        served = load_model(artifact)
    assert isinstance(served.scorer, CompiledTreesScorer)
    (serving,) = [line for line in second if line["event"] == "compiled_trees.serving"]
    assert serving["compiled_now"] is True
