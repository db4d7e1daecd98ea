"""REGISTRY_TIMEOUT_S reaches the serving process's registry calls, and none outlives the refresh that made it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from fraud_inference.observability.metrics import Metrics
from fraud_inference.registry import RegistryUnavailableError
from fraud_inference.service import FraudService
from fraud_inference.settings import Settings


class SilentRegistry:
    """A TCP server on loopback that accepts every connection and never answers: a hung registry.

    A fault that a healthy `mlflow server` cannot give on demand without stopping its processes; this one
    is a real socket all the same, so the client's real timeouts and retries run against it.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def still_open(self, grace_s: float) -> list[socket.socket]:
        """The connections the client has not closed (no EOF within `grace_s`)."""
        open_ = []
        for connection in self.connections:
            connection.settimeout(grace_s)
            try:
                while connection.recv(65536):
                    pass  # the request the client sent: keep reading until its end of the connection
            except TimeoutError:
                open_.append(connection)
            except OSError:
                pass  # reset: closed too
        return open_

    def close(self) -> None:
        self._listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def silent_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentRegistry]:
    # The registry's HTTP bounds are process-wide MLflow variables: give them back to the tests after this one.
    for name in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    registry = SilentRegistry()
    yield registry
    registry.close()


def test_registry_timeout_s_bounds_the_services_calls_and_none_outlives_its_refresh(
    silent_registry: SilentRegistry,
) -> None:
    # 1 s, not the default 10: with the default, each of the two attempts would wait 10 s.
    settings = Settings(mlflow_tracking_uri=silent_registry.url, registry_timeout_s=1)

    async def resolve() -> list[socket.socket]:
        service = FraudService(settings, Metrics())
        # A deadline far below what the default (two attempts of 10 s) would take, far above 2 x 1 s + backoff.
        with pytest.raises(RegistryUnavailableError):
            await asyncio.wait_for(service.lifecycle.resolve(), timeout=15)
        # Checked before the loop closes: asyncio.run waits for every thread still running in its executor.
        return silent_registry.still_open(grace_s=2.0)

    still_open = asyncio.run(resolve())
    assert silent_registry.connections, "the service never reached the registry"
    assert still_open == [], "the resolution gave up, yet a registry call of it still waits for an answer"
