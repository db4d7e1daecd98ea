"""The HTTP routes: prediction, version, probes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Router, get, post
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.response import Response
from litestar.types import ASGIApp

from fraud_inference import __version__
from fraud_inference.api.body import read_body
from fraud_inference.api.error_table import answer_of
from fraud_inference.api.errors import error_responses
from fraud_inference.api.protocol import EncodedAnswer, non_finite_hint, note_scored, require_media_type, service_of
from fraud_inference.api.reasons import with_reasons
from fraud_inference.api.request_id import request_id_of
from fraud_inference.api.schemas import (
    ChallengerInfo,
    DependencyInfo,
    ErrorBody,
    FeatureInfo,
    ModelInfo,
    Prediction,
    PredictRequest,
    PredictResponse,
    Probe,
    VersionResponse,
)
from fraud_inference.challengers import Challengers
from fraud_inference.errors import InvalidRowsError, PredictionError, TooManyRowsError
from fraud_inference.lifecycle import Generation
from fraud_inference.models.signature_errors import clip_names, instances_message
from fraud_inference.observability.metrics import CONTENT_TYPE
from fraud_inference.reasons.explain import explain_rows

__all__ = ["livez", "metrics", "model_infos", "predict", "readyz", "v1_router", "version"]

_decode_request = msgspec.json.Decoder(PredictRequest).decode


def explain_value(raw: msgspec.Raw) -> Any:
    """`explain` as the request sent it: None when absent or null; `raw` itself when it does not decode (a number
    out of a float's range), which `reasons.explain.reason_count` refuses naming `explain` and that JSON text."""
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.ValidationError:
        return raw


_encode = msgspec.json.Encoder().encode
_RETRY_AFTER = {"Retry-After": "1"}


@dataclass
class _PredictOperation(Operation):
    """Document the body that `predict` decodes itself (per model signature, for precise 422s)."""

    def __post_init__(self) -> None:
        row = Schema(
            type=OpenAPIType.OBJECT,
            description="One transaction: every feature of the model's signature (see GET /v1/version); null, or an "
            "optional feature left out, is a missing value.",
            additional_properties=Schema(
                one_of=[
                    Schema(type=OpenAPIType.NUMBER),
                    Schema(type=OpenAPIType.BOOLEAN),
                    Schema(type=OpenAPIType.STRING),
                    Schema(type=OpenAPIType.NULL),
                ]
            ),
            examples=[{"amount": 120.5, "hour_of_day": 3}],
        )
        body = Schema(
            type=OpenAPIType.OBJECT,
            required=["instances"],
            properties={
                "model": Schema(type=OpenAPIType.STRING, description="Served model key; default DEFAULT_MODEL."),
                "instances": Schema(type=OpenAPIType.ARRAY, items=row, min_items=1),
                "explain": Schema(
                    type=OpenAPIType.INTEGER,
                    minimum=1,
                    description="Each prediction carries its K top reasons (XGBoost models; see README 'Reason "
                    "codes'): feature, value received, contribution in log-odds, and the version's reason code.",
                ),
            },
        )
        self.request_body = RequestBody(content={"application/json": OpenAPIMediaType(schema=body)}, required=True)


def _render_error(_request: Request[Any, Any, Any], error: PredictionError) -> Response[ErrorBody]:
    """/v1's convention for the core's errors: Litestar's `{"status_code", "detail"}`, Retry-After on 503."""
    status = answer_of(error).v1
    if isinstance(error, InvalidRowsError):
        detail = instances_message(error.message, row=error.row, feature=error.feature)
    elif isinstance(error, TooManyRowsError):
        detail = f"{error.rows} instances exceed MAX_BATCH_ROWS={error.limit}"
    else:
        detail = str(error)
    return Response(
        ErrorBody(status_code=status, detail=detail),
        status_code=status,
        headers=_RETRY_AFTER if status == 503 else None,
    )


@post(
    "/v1/predict",
    status_code=200,
    operation_class=_PredictOperation,
    summary="Score transactions",
    raises=[],
    responses={
        200: ResponseSpec(
            PredictResponse, description="One prediction per instance, in request order.", generate_examples=False
        ),
        **error_responses(400, 404, 408, 413, 415, 422, 503, 504),
    },
    tags=["prediction"],
)
async def predict(request: Request[Any, Any, Any]) -> ASGIApp:
    """Score each instance with the served model; predictions come back in request order."""
    service = service_of(request)
    service.dataplane.check_capacity()
    require_media_type(request)
    body = await read_body(request, service.settings)
    try:
        parsed = _decode_request(body)
    except msgspec.ValidationError as error:
        raise HTTPException(status_code=422, detail=f"request body: {clip_names(str(error))}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as error:  # a string that is not UTF-8: msgspec's own error
        raise HTTPException(status_code=400, detail=f"malformed JSON: {error}{non_finite_hint(body)}") from None
    except RecursionError:
        raise HTTPException(status_code=400, detail="malformed JSON: nested too deeply") from None
    request_id = request_id_of(request.scope)
    explained = None
    explain = explain_value(parsed.explain)
    if explain is None:
        scored = await service.dataplane.predict(parsed.model, bytes(parsed.instances), request_id, protocol="v1")
    else:
        explained = await explain_rows(
            service.dataplane, parsed.model, bytes(parsed.instances), request_id, explain, protocol="v1"
        )
        scored = explained.scored
    note_scored(request, scored, "v1")
    ref = scored.ref
    answer = PredictResponse(
        model=scored.selection.key,
        model_name=ref.name,
        model_version=ref.version,
        selected_by=ref.selected_by,
        generation=scored.selection.generation.number,
        threshold=ref.threshold,
        request_id=request_id,
        predictions=[
            Prediction(fraud_probability=p, is_fraud=f)
            for p, f in zip(scored.probabilities.tolist(), scored.flagged.tolist(), strict=True)
        ],
    )
    if explained is not None:
        answer = with_reasons(answer, explained)
    return EncodedAnswer(_encode(answer))


@get("/v1/version", tags=["service"], summary="Served model versions")
async def version(request: Request[Any, Any, Any]) -> VersionResponse:
    """Which registry version each served model is, why it was chosen, and its features in training order."""
    generation = service_of(request).active
    return VersionResponse(
        service="fraud-inference",
        version=__version__,
        generation=None if generation is None else generation.number,
        models={}
        if generation is None
        else model_infos(generation, shadow_share=service_of(request).settings.shadow_share),
    )


def model_infos(generation: Generation, *, shadow_share: float) -> dict[str, ModelInfo]:
    """What `/v1/version` (and a refresh) says about each model of a generation (`shadow_share`: SHADOW_SHARE)."""
    return {
        key: ModelInfo(
            name=served.ref.name,
            version=served.ref.version,
            selected_by=served.ref.selected_by,
            flavor=served.flavor,
            run_id=served.ref.run_id,
            threshold=served.ref.threshold,
            features=[FeatureInfo(name=f.name, type=f.type, required=f.required) for f in served.features],
            dependencies=[
                DependencyInfo(package=d.package, recorded=d.recorded, installed=d.installed, rule=d.rule, ok=d.ok)
                for d in served.dependencies
            ],
            positive_class=generation.positive_classes.get(key),
            challenger=challenger_info(generation.challengers, key, shadow_share),
        )
        for key, served in generation.models.items()
    }


def challenger_info(challengers: Challengers, key: str, share: float) -> ChallengerInfo | None:
    """Model `key`'s challenger as `/v1/version` shows it; None when it has none."""
    active, refused = challengers.active.get(key), challengers.refused.get(key)
    if active is not None:
        ref = active.ref
        return ChallengerInfo(
            name=ref.name, version=ref.version, selected_by=ref.selected_by, state="active", share=share
        )
    if refused is not None:
        ref = refused.ref
        return ChallengerInfo(
            name=ref.name, version=ref.version, selected_by=ref.selected_by, state="refused", share=share,
            reason=refused.reason,
        )  # fmt: skip
    return None


@get("/metrics", tags=["probes"], summary="Prometheus metrics", opt={"skip_access_log": True}, media_type=CONTENT_TYPE)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every metric of the service in the Prometheus text format (the workers report through the server)."""
    service = service_of(request)
    return Response(service.metrics.render(service.readiness().pool), media_type=CONTENT_TYPE)


@get("/livez", tags=["probes"], summary="Liveness", opt={"skip_access_log": True})
async def livez() -> Probe:
    """200 while the process serves."""
    return Probe(status="alive")


@get(
    "/readyz",
    tags=["probes"],
    summary="Readiness",
    opt={"skip_access_log": True},
    responses={
        503: ResponseSpec(Probe, description="Not ready: the reason, with Retry-After.", generate_examples=False)
    },
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Probe]:
    """200 when a generation is active and a worker holds it; 503 with the reason otherwise."""
    readiness = service_of(request).readiness()
    pool = readiness.pool
    if not readiness.ready:
        probe = Probe(status="not ready", reason=readiness.reason, workers=pool.size, live_workers=pool.live_workers)
        return Response(probe, status_code=503, headers=_RETRY_AFTER)
    probe = Probe(status="ready", generation=readiness.generation, workers=pool.size, live_workers=pool.ready_workers)
    return Response(probe, status_code=200)


def v1_router() -> Router:
    """/v1 (this service's own protocol) and the probes, with the core's errors rendered in /v1's convention."""
    return Router(
        path="/",
        route_handlers=[predict, version, livez, readyz, metrics],
        exception_handlers={PredictionError: _render_error},
    )
