"""Training-serving consistency with real models logged against mismatched requirements."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pytest
from litestar.testing import TestClient
from mlflow import MlflowClient
from packaging.version import Version

from fraud_inference.api.app import create_app
from fraud_inference.consistency import check_dependencies
from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import default_pip_requirements, log_fraud_model
from fraud_inference.models.artifact import DependencyMismatchError, UnservableModelError
from fraud_inference.models.flavors.lightgbm import FLAVOR as LIGHTGBM
from fraud_inference.models.reading import read_artifact
from fraud_inference.registry import Registry
from fraud_inference.settings import Settings
from tests.api.conftest import wait_ready
from tests.conftest import run_cli, use_registry

SKLEARN = Version(importlib.metadata.version("scikit-learn"))
XGBOOST_VERSION = importlib.metadata.version("xgboost-cpu")
XGBOOST = Version(XGBOOST_VERSION)
OLD_SKLEARN = f"{SKLEARN.major}.{SKLEARN.minor - 1}.0"
OLD_XGBOOST = f"{XGBOOST.major - 1}.0.0"


def requirements_with(flavor: str, replaced: str, pin: str) -> list[str]:
    return [pin if line.split("==")[0] == replaced else line for line in default_pip_requirements(flavor)]


def relog(registry: str, flavor: str, name: str, *, champion: bool = True, **options: Any) -> str:
    """Log the demo model of `flavor` again as a new version of `name` (with other requirements or no signature)."""
    use_registry(registry)
    loader = {"xgboost": mlflow.xgboost, "lightgbm": mlflow.lightgbm, "sklearn": mlflow.sklearn}[flavor]
    model = loader.load_model(f"models:/{name}@champion")
    features, _ = make_transactions(50, seed=1)
    version = log_fraud_model(registry, flavor=flavor, model=model, X_example=features, registered_name=name, **options)
    if champion:
        MlflowClient(tracking_uri=registry, registry_uri=registry).set_registered_model_alias(
            name, "champion", str(version.version)
        )
    return str(version.version)


@pytest.fixture(scope="module")
def mismatched_registry(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Champions whose recorded scikit-learn is a minor behind, and xgboost a major behind, what is installed.

    One copy of the demo registry for the module: every test using it only reads it (downloads, `check`, `serve`),
    and the two versions logged here cost seconds each (load, log, register) on a busy machine.
    """
    home = tmp_path_factory.mktemp("mismatched-home")
    shutil.copy2(demo_home / "mlflow.db", home / "mlflow.db")
    registry = f"sqlite:///{home / 'mlflow.db'}"
    relog(registry, "sklearn", "fraud-sklearn",
          pip_requirements=requirements_with("sklearn", "scikit-learn", f"scikit-learn=={OLD_SKLEARN}"))  # fmt: skip
    relog(registry, "xgboost", "fraud-xgboost",
          pip_requirements=requirements_with("xgboost", "xgboost-cpu", f"xgboost=={OLD_XGBOOST}"))  # fmt: skip
    return registry


def downloaded(registry: str, name: str, destination: Path) -> Any:
    source = Registry(registry, alias="champion", stages=(), timeout_s=10)
    ref = source.resolve(name.removeprefix("fraud-"), name)
    return ref, source.download(ref, destination)


def test_compatible_policy_refuses_and_names_package_and_both_versions(
    mismatched_registry: str, tmp_path: Path
) -> None:
    ref, path = downloaded(mismatched_registry, "fraud-sklearn", tmp_path)
    with pytest.raises(DependencyMismatchError) as caught:
        read_artifact(ref, path, dependency_policy="compatible")
    message = str(caught.value)
    assert f"scikit-learn trained with {OLD_SKLEARN}, installed {SKLEARN}" in message
    assert "same major.minor" in message
    assert f"install scikit-learn=={OLD_SKLEARN}" in message


def test_warn_records_the_mismatch_and_off_checks_nothing(mismatched_registry: str, tmp_path: Path) -> None:
    ref, path = downloaded(mismatched_registry, "fraud-xgboost", tmp_path)
    warned = read_artifact(ref, path, dependency_policy="warn")
    assert [(d.package, d.recorded, d.ok) for d in warned.dependencies if not d.ok] == [
        ("xgboost-cpu", OLD_XGBOOST, False)
    ]
    assert read_artifact(ref, path, dependency_policy="off").dependencies == ()


def test_strict_policy_wants_exact_versions(demo_registry: str, tmp_path: Path) -> None:
    _ref, path = downloaded(demo_registry, "fraud-lightgbm", tmp_path)
    mlmodel = json.loads(json.dumps(mlflow.models.Model.load(str(path)).flavors["lightgbm"]))
    checks = check_dependencies(path, LIGHTGBM.packages, mlmodel.get(LIGHTGBM.version_key), "strict")
    assert {d.package for d in checks} == {"lightgbm", "numpy"}
    assert all(d.ok and d.rule == "same version" and d.recorded == d.installed for d in checks)


def test_version_without_signature_is_refused(private_registry: str, tmp_path: Path) -> None:
    relog(private_registry, "lightgbm", "fraud-lightgbm", with_signature=False)
    ref, path = downloaded(private_registry, "fraud-lightgbm", tmp_path)
    with pytest.raises(UnservableModelError, match="no input signature"):
        read_artifact(ref, path)


def run(command: list[str], registry: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(command, {"MLFLOW_TRACKING_URI": registry}, tmp_path)


@pytest.mark.slow
def test_startup_exits_1_listing_every_mismatch(mismatched_registry: str, tmp_path: Path) -> None:
    result = run(["serve"], mismatched_registry, tmp_path)
    assert result.returncode == 1
    assert f"scikit-learn trained with {OLD_SKLEARN}, installed {SKLEARN}" in result.stderr
    assert f"xgboost-cpu trained with {OLD_XGBOOST}, installed {XGBOOST}" in result.stderr


@pytest.mark.slow
def test_check_gate_passes_on_the_demo_and_fails_on_the_mismatch(
    demo_registry: str, mismatched_registry: str, tmp_path: Path
) -> None:
    passed = run(["check", "--json"], demo_registry, tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    report = json.loads(passed.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert all(model["scored_input_example"] for model in report["models"].values())
    failed = run(["check"], mismatched_registry, tmp_path)
    assert failed.returncode == 1
    assert f"scikit-learn trained with {OLD_SKLEARN}" in failed.stdout
    assert "checks FAILED" in failed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["warn", "off"])
def test_warn_and_off_serve_the_mismatched_models(
    service_factory, mismatched_registry: str, policy: str, transactions: Any
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": mismatched_registry, "WORKERS": "1",
                                          "DEPENDENCY_CHECK": policy})  # fmt: skip
    service.wait_ready()
    instances = json.loads(transactions.head(2).to_json(orient="records"))
    with service.client() as client:
        scored = client.post("/v1/predict", json={"model": "sklearn", "instances": instances})
        sklearn = client.get("/v1/version").json()["models"]["sklearn"]
    assert scored.status_code == 200
    assert scored.json()["model_version"] == "2"
    warned = "model.dependency_mismatch" in service.log()
    if policy == "warn":
        assert warned
        assert {d["package"]: d["ok"] for d in sklearn["dependencies"]}["scikit-learn"] is False
    else:
        assert not warned
        assert sklearn["dependencies"] == []


def test_refresh_to_a_mismatched_version_is_422_and_the_old_one_keeps_serving(private_registry: str) -> None:
    settings = Settings.from_env(
        {"GRPC": "off", "MLFLOW_TRACKING_URI": private_registry, "WORKERS": "1", "API_KEYS": "k"}
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        old = requirements_with("sklearn", "scikit-learn", f"scikit-learn=={OLD_SKLEARN}")
        relog(private_registry, "sklearn", "fraud-sklearn", pip_requirements=old)
        refused = client.post("/admin/refresh-models", headers={"X-API-Key": "k"})
        served = client.get("/v1/version").json()
    assert refused.status_code == 422
    assert f"scikit-learn trained with {OLD_SKLEARN}, installed {SKLEARN}" in refused.json()["detail"]
    assert refused.json()["extra"]["errors"].keys() == {"sklearn"}
    assert (served["generation"], served["models"]["sklearn"]["version"]) == (1, "1")
    installed = {d["package"]: (d["recorded"], d["installed"]) for d in served["models"]["sklearn"]["dependencies"]}
    assert installed["scikit-learn"] == (str(SKLEARN), str(SKLEARN))


def test_requirements_are_read_as_pip_reads_them_markers_and_hashes(tmp_path: Path) -> None:
    from fraud_inference.consistency import recorded_pins
    from fraud_inference.models.flavors.xgboost import FLAVOR as XGBOOST

    numpy = importlib.metadata.version("numpy")
    (tmp_path / "requirements.txt").write_text(
        "# exported by uv\n"
        "--index-url https://pypi.org/simple\n"
        f'numpy=={numpy} ; python_full_version >= "3.11" \\\n'
        "    --hash=sha256:0123456789abcdef \\\n"
        "    --hash=sha256:fedcba9876543210\n"
        'numpy==1.26.4 ; python_full_version < "3.11"\n'
        f"xgboost-cpu=={XGBOOST_VERSION} --hash=sha256:00ff  # the CPU wheel\n"
        'pywin32==306 ; sys_platform == "win32"\n'
    )
    assert recorded_pins(tmp_path / "requirements.txt") == {"numpy": numpy, "xgboost-cpu": XGBOOST_VERSION}
    checks = check_dependencies(tmp_path, XGBOOST.packages, None, "strict")
    assert all(check.ok for check in checks), checks
