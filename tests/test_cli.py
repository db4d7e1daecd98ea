"""The command's fast failures: each says in one line what is wrong and what to do, before any slow work."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fraud_inference import __version__
from fraud_inference.settings import settings_reference
from tests.conftest import free_port, run_cli


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = run_cli(["--version"], {}, tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"fraud-inference {__version__}"


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_busy_port_fails_at_once_naming_host_and_port(command: str, demo_registry: str, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            "MLFLOW_TRACKING_URI": demo_registry,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "GRPC_PORT": str(free_port()),
        }
        result = run_cli([command], {**env, "FRAUD_INFERENCE_HOME": str(tmp_path / "home")}, tmp_path, timeout_s=60)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "Traceback" not in result.stdout + result.stderr
    # demo checks the port before seeding: it trained nothing.
    assert not (tmp_path / "home").exists()


def test_a_typo_in_models_names_the_registered_models(demo_registry: str, tmp_path: Path) -> None:
    result = run_cli(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "MODELS": "xgboost=fraud-xgbost"}, tmp_path)
    assert result.returncode == 1
    assert "no registered model named 'fraud-xgbost'" in result.stderr
    assert "did you mean 'fraud-xgboost'?" in result.stderr
    assert "registered: fraud-lightgbm, fraud-sklearn, fraud-xgboost" in result.stderr


def test_serve_does_not_create_a_missing_sqlite_registry(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    for command in (["serve"], ["check"]):
        result = run_cli(command, {"MLFLOW_TRACKING_URI": f"sqlite:///{missing}"}, tmp_path)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert f"no SQLite registry at {missing}" in line
        assert line.startswith("fraud-inference: configuration error: MLFLOW_TRACKING_URI: ")
    assert not missing.exists()
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("uri", "package"),
    [("postgresql://fraud:pw@db:5432/mlflow", "psycopg2-binary"), ("mysql://fraud:pw@db/mlflow", "mysqlclient")],
)
def test_a_database_registry_without_its_driver_says_what_to_install(uri: str, package: str, tmp_path: Path) -> None:
    result = run_cli(["serve"], {"MLFLOW_TRACKING_URI": uri}, tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert repr(package) in line
    assert "pw" not in line


def test_help_shows_every_setting_with_its_variable_and_default(tmp_path: Path) -> None:
    result = run_cli(["--help"], {}, tmp_path)
    assert result.returncode == 0
    for setting in settings_reference():
        assert f"  {setting.variable} (default: {setting.shown_default}" in result.stdout
    assert "  WORKERS (default: CPU count; 1..64)" in result.stdout
