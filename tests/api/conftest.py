"""An app with a real pool of worker processes over the demo registry, driven through Litestar's TestClient."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from fraud_inference.api.app import create_app
from fraud_inference.settings import Settings

MAX_BATCH_ROWS = 50
MAX_BODY_BYTES = 64 * 1024
ADMIN_KEYS = ("first-admin-key", "second-admin-key")


def wait_ready(client: TestClient, timeout_s: float = 90.0) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout_s} s: {client.get('/readyz').text}")


@pytest.fixture(scope="package")
def client(demo_registry: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    settings = Settings.from_env(
        {
            "GRPC": "off",  # in-process apps: no gRPC port to share between them
            "MLFLOW_TRACKING_URI": demo_registry,
            "WORKERS": "2",
            "MAX_BATCH_ROWS": str(MAX_BATCH_ROWS),
            "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "CORS_ORIGINS": "https://fraud-console.example",
            "API_KEYS": ",".join(ADMIN_KEYS),
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="package")
def unready_client(demo_registry: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """An app whose served model exists nowhere: it keeps retrying the registry and never becomes ready.

    One for the package, as `client`: its users only read its refusals, and each app starts a worker process.
    """
    settings = Settings.from_env(
        {"GRPC": "off", "MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "MODELS": "fraud=fraud-not-registered"}
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client
