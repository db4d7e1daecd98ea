"""Secrets never leak: the admin key and the registry password appear in no log line, body or header."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.conftest import MlflowServer, free_port

pytestmark = pytest.mark.slow

ADMIN_KEY = "adm1n-k3y-never-logged"
# A password with a raw `@` and `:` (requests reads the userinfo up to the LAST `@`) and percent-encoded `@`
# and `/`: every fragment of it must stay hidden, not only what precedes its first `@`.
PASSWORD = "pA55@w0rdZ:QX7%40k9%2FeNd"
# A raw `/` cannot be parsed by any client, whose error message then quotes the whole URI.
RAW_SLASH_PASSWORD = "pA55/w0rdZ@QX7"
FRAGMENTS = ("pA55", "w0rdZ", "QX7", "k9", "eNd")


def with_password(tracking_uri: str, password: str = PASSWORD) -> str:
    return tracking_uri.replace("http://", f"http://fraud:{password}@", 1)


def transcript(response: httpx.Response) -> str:
    """Everything a client sees of one answer: status, headers, body."""
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    return f"{response.status_code}\n{headers}\n{response.text}"


def assert_secret_free(text: str, where: str) -> None:
    for secret in (ADMIN_KEY, *FRAGMENTS):
        assert secret not in text, f"{secret!r} leaked in {where}:\n{text[text.index(secret) - 400 :][:800]}"


def test_no_secret_in_logs_or_answers_while_serving_from_a_password_registry(
    service_factory, shared_mlflow_server: MlflowServer, transactions: pd.DataFrame
) -> None:
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": with_password(shared_mlflow_server.tracking_uri), "WORKERS": "1", "API_KEYS": ADMIN_KEY,
         "LOG_LEVEL": "DEBUG"},
    )  # fmt: skip
    service.wait_ready()
    instances: list[dict[str, Any]] = json.loads(transactions.head(3).to_json(orient="records"))
    answers: list[httpx.Response] = []
    with service.client() as client:
        answers.append(client.post("/v1/predict", json={"model": "sklearn", "instances": instances}))
        answers.append(client.post("/admin/refresh-models", headers={"X-API-Key": ADMIN_KEY}))
        answers.append(client.post("/admin/refresh-models", headers={"X-API-Key": "a-wrong-key"}))
        answers.append(client.post("/v1/admin/refresh-models"))
        for path in ("/v1/version", "/readyz", "/livez", "/metrics", "/openapi.json", "/no/such/path"):
            answers.append(client.get(path))
        answers.append(client.post("/v1/predict", json={"instances": [{"amount": "a lot"}]}))
        answers.append(client.post("/v1/predict", content=b"{not json"))
    assert [a.status_code for a in answers] == [200, 200, 403, 401, 200, 200, 200, 200, 200, 404, 422, 400]
    assert service.stop() == 0
    for answer in answers:
        assert_secret_free(transcript(answer), f"the answer to {answer.request.method} {answer.request.url.path}")
    assert_secret_free(service.log(), "the service's log")


@pytest.mark.parametrize("password", [PASSWORD, RAW_SLASH_PASSWORD])
def test_no_password_in_readiness_or_logs_while_the_registry_is_unreachable(service_factory, password: str) -> None:
    closed = with_password(f"http://127.0.0.1:{free_port()}", password)
    service = service_factory(
        ["serve"], {"MLFLOW_TRACKING_URI": closed, "WORKERS": "1", "REGISTRY_TIMEOUT_S": "1", "LOG_LEVEL": "DEBUG"}
    )
    seen: list[str] = []
    try:
        with service.client() as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if service.process.poll() is not None:
                    break
                with contextlib.suppress(httpx.TransportError):
                    seen.append(transcript(client.get("/readyz")))
                if any("registry cannot be reached" in answer for answer in seen):
                    break
                time.sleep(0.3)
    finally:
        service.stop()
    assert any("registry cannot be reached" in answer for answer in seen), seen
    for answer in seen:
        assert_secret_free(answer, "a readiness answer")
    log = service.log()
    assert "127.0.0.1" in log, f"the failure should name the registry (without its password):\n{log[-2000:]}"
    assert_secret_free(log, "the service's log")
