"""Model selection against a real MLflow registry: alias first, then the newest version per stage."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import embedded_registry, log_fraud_model
from fraud_inference.demo.training import train_model
from fraud_inference.registry import Registry, ResolutionError


class Versions:
    """Registers versions of real logged models under fresh names, so each test has its own model."""

    def __init__(self, tracking_uri: str, logged: ModelVersion) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self._logged = logged

    def register(self, name: str, count: int) -> list[str]:
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        return [
            str(self.client.create_model_version(name, source=self._logged.source, run_id=self._logged.run_id).version)
            for _ in range(count)
        ]

    def stage(self, name: str, version: str, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated but still served
            self.client.transition_model_version_stage(name, version, stage)

    def registry(self, *, alias: str = "champion", stages: tuple[str, ...] = ("Production", "Staging")) -> Registry:
        return Registry(self.tracking_uri, alias=alias, stages=stages, timeout_s=10)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    tracking_uri, artifact_location = embedded_registry(tmp_path_factory.mktemp("registry") / Path("home"))
    features, labels = make_transactions(2_000, seed=3)
    model = train_model("lightgbm", features, labels, seed=3)
    logged = log_fraud_model(
        tracking_uri,
        flavor="lightgbm",
        model=model,
        X_example=features,
        registered_name="fraud-base",
        artifact_location=artifact_location,
    )
    return Versions(tracking_uri, logged)


def test_alias_wins_over_stages(versions: Versions) -> None:
    v1, _v2, v3 = versions.register("alias-first", 3)
    versions.stage("alias-first", v3, "Production")
    versions.client.set_registered_model_alias("alias-first", "champion", v1)
    ref = versions.registry().resolve("m", "alias-first")
    assert (ref.version, ref.selected_by) == (v1, "alias:champion")


def test_without_alias_the_newest_production_version_is_served(versions: Versions) -> None:
    v1, v2, v3 = versions.register("prod-fallback", 3)
    versions.stage("prod-fallback", v1, "Production")
    versions.stage("prod-fallback", v2, "Production")
    versions.stage("prod-fallback", v3, "Staging")
    ref = versions.registry().resolve("m", "prod-fallback")
    assert (ref.version, ref.selected_by) == (v2, "stage:Production")


def test_without_alias_or_production_staging_is_served(versions: Versions) -> None:
    v1, _v2 = versions.register("staging-fallback", 2)
    versions.stage("staging-fallback", v1, "Staging")
    ref = versions.registry().resolve("m", "staging-fallback")
    assert (ref.version, ref.selected_by) == (v1, "stage:Staging")


def test_configured_alias_and_stage_order_are_honoured(versions: Versions) -> None:
    v1, v2 = versions.register("custom-order", 2)
    versions.stage("custom-order", v1, "Production")
    versions.stage("custom-order", v2, "Staging")
    versions.client.set_registered_model_alias("custom-order", "champion", v1)
    ref = versions.registry(alias="challenger", stages=("Staging", "Production")).resolve("m", "custom-order")
    assert (ref.version, ref.selected_by) == (v2, "stage:Staging")


def test_model_with_no_candidate_names_model_and_what_was_tried(versions: Versions) -> None:
    versions.register("unpromoted", 1)
    with pytest.raises(ResolutionError) as caught:
        versions.registry().resolve("fraud", "unpromoted")
    message = str(caught.value)
    assert "'fraud'" in message
    assert "'unpromoted'" in message
    assert "alias 'champion'" in message
    assert "stage 'Production'" in message
    assert "stage 'Staging'" in message


def test_missing_registered_model_is_a_resolution_error(versions: Versions) -> None:
    with pytest.raises(ResolutionError, match="no registered model named 'no-such-model'"):
        versions.registry().resolve("m", "no-such-model")


def test_a_models_entry_can_pin_a_version_or_its_own_alias(versions: Versions) -> None:
    v1, v2, v3 = versions.register("pinnable", 3)
    versions.client.set_registered_model_alias("pinnable", "champion", v3)
    versions.client.set_registered_model_alias("pinnable", "challenger", v2)
    registry = versions.registry()
    assert (registry.resolve("m", f"pinnable/{v1}").version, registry.resolve("m", f"pinnable/{v1}").selected_by) == (
        v1,
        "pinned",
    )
    challenger = registry.resolve("m", "pinnable@challenger")
    assert (challenger.name, challenger.version, challenger.selected_by) == ("pinnable", v2, "alias:challenger")
    assert registry.resolve("m", "pinnable").version == v3


def test_a_pin_that_matches_nothing_says_so_without_falling_back(versions: Versions) -> None:
    (version,) = versions.register("pinned-staged", 1)
    versions.stage("pinned-staged", version, "Production")
    with pytest.raises(ResolutionError, match="has no version 99"):
        versions.registry().resolve("m", "pinned-staged/99")
    # An alias named in MODELS is that alias only: no fall back to MODEL_STAGES.
    with pytest.raises(ResolutionError, match="tried alias 'shadow'"):
        versions.registry().resolve("m", "pinned-staged@shadow")


def test_threshold_tag_is_read_and_checked(versions: Versions) -> None:
    (good,) = versions.register("tagged", 1)
    versions.client.set_model_version_tag("tagged", good, "threshold", "0.35")
    versions.client.set_registered_model_alias("tagged", "champion", good)
    assert versions.registry().resolve("m", "tagged").threshold == 0.35
    versions.client.set_model_version_tag("tagged", good, "threshold", "high")
    with pytest.raises(ResolutionError, match="threshold"):
        versions.registry().resolve("m", "tagged")


def test_version_without_threshold_tag_uses_one_half(versions: Versions) -> None:
    (version,) = versions.register("untagged", 1)
    versions.client.set_registered_model_alias("untagged", "champion", version)
    assert versions.registry().resolve("m", "untagged").threshold == 0.5


def test_concurrent_fetches_of_one_version_download_it_once_and_share_it(demo_registry: str, tmp_path: Path) -> None:
    """Served keys on the same (name, version) are fetched at once by a refresh: one download, one folder."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import msgspec

    from fraud_inference.models.artifact import ModelArtifact
    from fraud_inference.models.reading import fetch_artifact

    registry = Registry(demo_registry, alias="champion", stages=(), timeout_s=10)
    ref = registry.resolve("xgboost", "fraud-xgboost")
    keys = [f"key-{n}" for n in range(8)]
    start = threading.Barrier(len(keys))

    def fetch(key: str) -> ModelArtifact:
        start.wait()
        return fetch_artifact(registry, msgspec.structs.replace(ref, key=key), tmp_path, dependency_policy="off")

    with ThreadPoolExecutor(len(keys)) as threads:
        artifacts = list(threads.map(fetch, keys))
    assert [artifact.ref.key for artifact in artifacts] == keys
    assert {artifact.path for artifact in artifacts} == {artifacts[0].path}
    assert sorted(path.name for path in (tmp_path / "fraud-xgboost").iterdir()) == [ref.version]
