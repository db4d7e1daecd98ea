"""Version, probes, docs and CORS, through the real app."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from fraud_inference.demo.dataset import FEATURES


def test_version_lists_models_with_features_in_training_order(client: TestClient) -> None:  # type: ignore[type-arg]
    body = client.get("/v1/version").json()
    assert body["service"] == "fraud-inference"
    # The app is shared by the package: its generation is whatever earlier tests left, the one /readyz reports.
    assert body["generation"] == client.get("/readyz").json()["generation"] >= 1
    assert set(body["models"]) == {"xgboost", "lightgbm", "sklearn"}
    for key, model in body["models"].items():
        assert model["name"] == f"fraud-{key}"
        assert model["version"] == "1"
        assert model["selected_by"] == "alias:champion"
        assert model["flavor"] == key
        assert model["run_id"]
        assert model["features"] == [{"name": f.name, "type": f.kind, "required": True} for f in FEATURES]
        assert model["positive_class"] == "1"


def test_probes_when_ready(client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.get("/livez").status_code == 200
    # The app is shared by the package: its generation is whatever earlier tests left, the one /v1/version serves.
    generation = client.get("/v1/version").json()["generation"]
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "generation": generation, "workers": 2, "live_workers": 2}


@pytest.mark.parametrize(("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_docs_pages_load_their_assets_from_the_service(client: TestClient, page: str, asset: str) -> None:  # type: ignore[type-arg]
    html = client.get(page)
    assert html.status_code == 200
    assert f"/docs-static/{asset}" in html.text
    assert "https://" not in html.text  # no CDN: the docs must render on a host without internet
    assert client.get(f"/docs-static/{asset}").status_code == 200


def test_openapi_schema_documents_the_surface(client: TestClient) -> None:  # type: ignore[type-arg]
    schema = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/version", "/livez", "/readyz", "/invocations", "/invocations/{model}", "/ping",
                 "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/ready"):  # fmt: skip
        assert path in schema["paths"]
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["instances"]


def test_cors_only_for_configured_origins(client: TestClient) -> None:  # type: ignore[type-arg]
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = client.options("/v1/predict", headers={"Origin": "https://fraud-console.example", **preflight})
    denied = client.options("/v1/predict", headers={"Origin": "https://evil.example", **preflight})
    assert allowed.headers.get("access-control-allow-origin") == "https://fraud-console.example"
    assert "access-control-allow-origin" not in denied.headers


def test_not_ready_answers_503_with_reason_and_retry_after(unready_client: TestClient) -> None:  # type: ignore[type-arg]
    assert unready_client.get("/livez").status_code == 200
    ready = unready_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["retry-after"]
    predict = unready_client.post("/v1/predict", json={"instances": [{"amount": 1.0}]})
    assert predict.status_code == 503
    assert predict.headers["retry-after"]
    assert "not ready" in predict.json()["detail"]


@pytest.mark.parametrize("path", ["/foo", "/no/such/path", "/v2x", "/invocation"])
def test_unknown_paths_answer_json_404(client: TestClient, path: str) -> None:  # type: ignore[type-arg]
    for method in ("GET", "POST"):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/predict"), ("GET", "/invocations"), ("DELETE", "/livez")])
def test_wrong_methods_answer_json_405(client: TestClient, method: str, path: str) -> None:  # type: ignore[type-arg]
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv"])
def test_a_body_that_is_not_json_is_415_naming_json(client: TestClient, content_type: str) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", content=b'{"instances": []}', headers={"content-type": content_type})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    json_variant = client.post(
        "/v1/predict", content=b'{"instances": []}', headers={"content-type": "application/json; charset=utf-8"}
    )
    assert json_variant.status_code == 422  # read as JSON: empty instances


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/predict", '{"instances": [{"amount": NaN}]}'),
        ("/invocations", '{"dataframe_split": {"columns": ["amount"], "data": [[-Infinity]]}}'),
        (
            "/v2/models/xgboost/infer",
            '{"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": [Infinity]}]}',
        ),
    ],
)
def test_nan_or_infinity_written_into_json_is_400_saying_json_has_none(
    client: TestClient, path: str, body: str
) -> None:  # type: ignore[type-arg]
    response = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert "JSON has no NaN or Infinity: send null for a missing value" in (
        answer.get("detail") or answer.get("message") or answer["error"]
    )


@pytest.mark.parametrize("path", ["/v1/predict", "/v2/models/xgboost/infer"])
def test_a_body_in_another_charset_than_utf8_is_415(client: TestClient, path: str) -> None:  # type: ignore[type-arg]
    latin = client.post(path, content='{"instances": []}'.encode("latin-1"),
                        headers={"content-type": "application/json; charset=latin-1"})  # fmt: skip
    assert latin.status_code == 415, latin.text
    message = latin.json().get("detail") or latin.json()["error"]
    assert "send application/json" in message
    assert "in UTF-8" in message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/predict", b'{"model": "\xff", "instances": []}'),
        ("/invocations", b'{"dataframe_split": {"columns": ["am\xffount"], "data": [[1]]}}'),
        ("/invocations", b'{"dataframe_records": [{"amount": 1}], "params": {"k\xff": 1}}'),
        ("/v2/models/xgboost/infer", b'{"id": "\xff", "inputs": []}'),
    ],
)
def test_bytes_that_are_not_utf8_inside_a_json_string_are_400_in_each_protocols_format(
    client: TestClient, path: str, body: bytes
) -> None:  # type: ignore[type-arg]
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert "utf-8" in (answer.get("detail") or answer.get("message") or answer["error"])
    assert set(answer) & {"detail", "message", "error"}  # the protocol's own shape, never a bare 500


def test_a_method_http_does_not_define_is_counted_under_one_label(client: TestClient) -> None:  # type: ignore[type-arg]
    for method in ("FOOBAR1", "FOOBAR2"):
        assert client.request(method, "/no/such/path").status_code in {404, 405}
    exposition = client.get("/metrics").text
    assert "FOOBAR" not in exposition
    assert 'method="other",route="<unmatched>"' in exposition
