"""The admin API: X-API-Key required, wrong keys refused, disabled without keys; refresh answers."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from tests.api.conftest import ADMIN_KEYS

ROUTES = ["/admin/refresh-models", "/v1/admin/refresh-models"]


@pytest.mark.parametrize("route", ROUTES)
def test_refresh_without_key_is_401(client: TestClient, route: str) -> None:  # type: ignore[type-arg]
    response = client.post(route)
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("key", ["wrong", ADMIN_KEYS[0] + "x", ADMIN_KEYS[0][:-1], ""])
def test_refresh_with_a_wrong_key_is_403(client: TestClient, route: str, key: str) -> None:  # type: ignore[type-arg]
    response = client.post(route, headers={"X-API-Key": key})
    assert response.status_code == (401 if key == "" else 403)


@pytest.mark.parametrize("key", ADMIN_KEYS)
def test_refresh_with_nothing_new_changes_nothing(client: TestClient, key: str) -> None:  # type: ignore[type-arg]
    # The app is shared by the package: its generation is whatever earlier tests left, read from the service.
    generation = client.get("/v1/version").json()["generation"]
    response = client.post("/admin/refresh-models", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["generation"] == generation
    assert body["changed"] == {}
    assert body["models"] == client.get("/v1/version").json()["models"]


def test_admin_is_disabled_for_everyone_without_configured_keys(unready_client: TestClient) -> None:  # type: ignore[type-arg]
    response = unready_client.post("/admin/refresh-models", headers={"X-API-Key": "anything"})
    assert response.status_code == 403
    assert "API_KEYS" in response.json()["detail"]


def test_the_key_is_never_logged(client: TestClient, capfd: pytest.CaptureFixture[str]) -> None:  # type: ignore[type-arg]
    client.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEYS[1]})
    client.post("/admin/refresh-models", headers={"X-API-Key": "guess-" + ADMIN_KEYS[1]})
    captured = capfd.readouterr()
    assert ADMIN_KEYS[1] not in captured.out + captured.err
