"""The example body of POST /v1/predict, built from what is served now so that posting it as-is answers 200."""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

from fraud_inference.models.artifact import FeatureSpec, ModelArtifact
from fraud_inference.service import FraudService

__all__ = ["PREDICT_PATH", "predict_example", "with_predict_example"]

PREDICT_PATH = "/v1/predict"
Value = float | int | bool


def with_predict_example(openapi_schema: dict[str, Any], service: FraudService | None) -> dict[str, Any]:
    """`openapi_schema` with the predict body's example set from the active generation (unchanged before one)."""
    operation = openapi_schema.get("paths", {}).get(PREDICT_PATH, {}).get("post")
    if service is None or service.active is None or operation is None or "requestBody" not in operation:
        return openapi_schema
    model = service.settings.default_model
    example = predict_example(service.active.models[model], model)
    schema = {**openapi_schema, "paths": {**openapi_schema["paths"]}}
    schema["paths"][PREDICT_PATH] = {**schema["paths"][PREDICT_PATH], "post": copy.deepcopy(operation)}
    schema["paths"][PREDICT_PATH]["post"]["requestBody"]["content"]["application/json"]["example"] = example
    return schema


def predict_example(artifact: ModelArtifact, key: str) -> dict[str, Any]:
    """`{"model": key, "instances": [row]}`: the first row of the version's logged input example, in the types
    of its signature; a feature the example lacks (or a version logged without one) gets 0."""
    logged = _logged_example_row(artifact.path)
    row = {feature.name: _typed(feature, logged.get(feature.name)) for feature in artifact.features}
    return {"model": key, "instances": [row]}


@functools.lru_cache(maxsize=32)
def _logged_example_row(path: str) -> dict[str, Any]:
    """The first row of the input example logged in the model directory `path`; {} when there is none."""
    from mlflow.models import Model

    try:
        example = Model.load(path).load_input_example(path)
    except Exception:  # no example, or one this MLflow cannot read: the signature alone still gives a valid row
        return {}
    if example is None or not hasattr(example, "iloc") or len(example) == 0:
        return {}
    row: dict[str, Any] = example.iloc[0].to_dict()
    return row


def _typed(feature: FeatureSpec, value: Any) -> Value:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not math.isfinite(number):
        number = 0.0
    if feature.type == "boolean":
        return bool(number)
    if feature.type in {"long", "integer"}:
        return round(number)
    return number
