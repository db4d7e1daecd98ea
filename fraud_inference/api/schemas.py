"""Every HTTP body, as msgspec Structs."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fraud_inference.reasons.ranking import Reason

__all__ = [
    "DependencyInfo",
    "ErrorBody",
    "FeatureInfo",
    "ModelInfo",
    "PredictRequest",
    "PredictResponse",
    "Prediction",
    "Probe",
    "RefreshResponse",
    "VersionChangeInfo",
    "VersionResponse",
]


class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Rows to score. `instances` stays raw JSON here: it is decoded against the chosen model's signature."""

    instances: msgspec.Raw
    model: str | None = None
    explain: msgspec.Raw = msgspec.Raw()
    """With a number K: each prediction carries its K top reasons (`reasons`); checked against the model.

    NOTE: raw, decoded by the route (`explain_value`): a number JSON allows but a float cannot hold (1e999) is then
    a 400 naming `explain`, like any other bad count, not a 422 for the whole body."""


class Prediction(msgspec.Struct, array_like=False, omit_defaults=True):
    fraud_probability: float
    is_fraud: bool
    base_value: float | None = None
    """With `explain`: the model's margin before any feature (the library's bias term)."""
    reasons: list[Reason] | None = None
    """With `explain`: the features that pushed this score furthest towards fraud, largest first."""


class PredictResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    model_name: str
    model_version: str
    selected_by: str
    generation: int
    threshold: float
    request_id: str
    predictions: list[Prediction]
    margin: str | None = None
    """With `explain`: the space of `base_value` and the contributions (`log_odds` for binary:logistic)."""


class FeatureInfo(msgspec.Struct):
    name: str
    type: str
    required: bool = True


class DependencyInfo(msgspec.Struct, kw_only=True):
    """A package that decides the model's numbers: the version it trained with, the one installed."""

    package: str
    recorded: str | None
    installed: str | None
    rule: str
    ok: bool


class ChallengerInfo(msgspec.Struct, kw_only=True):
    """A model's challenger (CHALLENGER_ALIAS): `active` (scored beside the model on `share` of the requests, for
    comparison only) or `refused` (and `reason`: the gate it failed)."""

    name: str
    version: str
    selected_by: str
    state: Literal["active", "refused"]
    share: float
    reason: str | None = None


class ModelInfo(msgspec.Struct, kw_only=True):
    name: str
    version: str
    selected_by: str
    flavor: str
    run_id: str | None
    threshold: float
    features: list[FeatureInfo]
    dependencies: list[DependencyInfo]
    positive_class: str | None = None
    """The class whose probability is `fraud_probability`; null for a custom pyfunc model (its output is it)."""
    challenger: ChallengerInfo | None = None
    """The version under CHALLENGER_ALIAS, when there is one other than this one."""


class VersionResponse(msgspec.Struct, kw_only=True):
    service: str
    version: str
    generation: int | None
    models: dict[str, ModelInfo]


class Probe(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    reason: str | None = None
    generation: int | None = None
    workers: int | None = None
    live_workers: int | None = None


class VersionChangeInfo(msgspec.Struct, rename={"previous": "from", "current": "to"}):
    previous: str | None
    current: str


class RefreshResponse(msgspec.Struct, kw_only=True):
    generation: int
    changed: dict[str, VersionChangeInfo]
    models: dict[str, ModelInfo]


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every error answer (Litestar's own shape): the status and a `detail` that says what is wrong."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | None = None
