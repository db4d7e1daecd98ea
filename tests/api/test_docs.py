"""The docs' example for POST /v1/predict is built from the served models: "Try it out" as-is answers 200."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RunningService

pytestmark = pytest.mark.slow


def test_the_openapi_example_of_predict_scores_as_is(demo_service: RunningService) -> None:
    service = demo_service  # DEFAULT_MODEL=lightgbm
    with service.client() as client:
        schema = client.get("/openapi.json").json()
        example = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
        answer = client.post("/v1/predict", json=example)
        features = [f["name"] for f in client.get("/v1/version").json()["models"]["lightgbm"]["features"]]
        swagger_page = client.get("/docs").text
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "lightgbm"
    assert example["model"] == "lightgbm"
    (row,) = example["instances"]
    assert list(row) == features
    # Swagger UI embeds the same schema in its page: its "Try it out" body is this example.
    assert json.dumps(row, separators=(",", ":"))[:40] in swagger_page
    # No made-up values in the answers' schemas (Litestar's generated examples read as a threshold of -957436772648.5).
    assert _examples_in(schema["components"]["schemas"]) == []


def _examples_in(node: object, path: str = "") -> list[str]:
    """Where `node` (an OpenAPI document's part) carries `examples`, by JSON path."""
    if isinstance(node, dict):
        here = [path] if "examples" in node else []
        return here + [found for key, value in node.items() for found in _examples_in(value, f"{path}/{key}")]
    if isinstance(node, list):
        return [found for index, value in enumerate(node) for found in _examples_in(value, f"{path}/{index}")]
    return []
