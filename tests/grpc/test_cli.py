"""`serve` checks GRPC_PORT before any slow work, as it checks PORT."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import free_port, run_cli


def test_a_busy_grpc_port_fails_at_once_naming_it(demo_registry: str, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        grpc_port = holder.getsockname()[1]
        env = {"MLFLOW_TRACKING_URI": demo_registry, "HOST": "127.0.0.1", "PORT": str(free_port()),
               "GRPC_PORT": str(grpc_port)}  # fmt: skip
        result = run_cli(["serve"], env, tmp_path, timeout_s=60)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{grpc_port}" in line
    assert "already in use" in line
    assert "GRPC_PORT" in line


def test_one_port_for_http_and_grpc_is_refused_at_once(demo_registry: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": demo_registry, "PORT": str(port), "GRPC_PORT": str(port)}
    same = run_cli(["serve"], env, tmp_path, timeout_s=60)
    assert same.returncode == 1
    assert "PORT and GRPC_PORT are both" in same.stderr
