"""The Open Inference Protocol V2 over REST (KServe, Triton, MLServer) under /v2.

Health, server and model metadata, readiness and inference, also under `/versions/{version}` for the served
version. Inputs are one tensor per feature (shape `[n]` or `[n, 1]`) or one `[n, features]` tensor in the
signature's order, as JSON or with Triton's binary tensor extension; outputs are `fraud_probability` (FP64)
and `is_fraud` (BOOL). Errors are `{"error": "..."}`.

Only HTTP lives here: routes, headers, media types, the JSON body and OpenAPI. Tensors become rows and scores
become outputs in `fraud_inference.oip`, whose `OipRequestError` answers 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Router, get, post
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath
from litestar.response import Response
from litestar.types import ASGIApp

from fraud_inference import __version__
from fraud_inference.api.body import read_body
from fraud_inference.api.error_table import answer_of, oip_message
from fraud_inference.api.errors import log_unhandled
from fraud_inference.api.protocol import (
    JSON,
    EncodedAnswer,
    OverflowAsInfinityDecoder,
    non_finite_hint,
    note_scored,
    require_media_type,
    service_of,
)
from fraud_inference.api.request_id import request_id_of
from fraud_inference.dataplane import ScoredRows, Selection
from fraud_inference.errors import NotReadyError, PredictionError
from fraud_inference.models.signature_errors import clip_names
from fraud_inference.oip import (
    DATATYPE_NAMES,
    OUTPUTS,
    InferRequest,
    InferResponse,
    ModelMetadata,
    OipRequestError,
    ServerMetadata,
    columns_of,
    infer_response,
    metadata_of,
    read_binary_extension,
)
from fraud_inference.oip.explain import explain_of, plain_outputs, with_explanation
from fraud_inference.reasons.explain import ExplainedRows, explain_rows
from fraud_inference.service import FraudService

__all__ = ["Liveness", "ModelReadiness", "OipError", "Readiness", "oip_router"]

OCTET_STREAM = "application/octet-stream"
_HEADER_LENGTH = "inference-header-content-length"
_RETRY_AFTER = {"Retry-After": "1"}


class OipError(msgspec.Struct):
    """Every OIP error answer: what is wrong."""

    error: str


class Liveness(msgspec.Struct):
    live: bool


class Readiness(msgspec.Struct):
    ready: bool


class ModelReadiness(msgspec.Struct):
    name: str
    ready: bool


_decode_infer = OverflowAsInfinityDecoder(InferRequest).decode
_encode = msgspec.json.encode


# -- model lookup ----------------------------------------------------------------------------------


def _select(service: FraudService, model: str, version: str | None) -> Selection:
    """The served `model`, and when a version is named, only if it is the one served now (else 404)."""
    selection = service.dataplane.select(model)
    served = selection.artifact.ref.version
    if version is not None and version != served:
        raise HTTPException(status_code=404, detail=f"model {model[:64]!r} version {version[:64]!r} is not served")
    return selection


def _model_ready(request: Request[Any, Any, Any], model: str, version: str | None) -> Response[ModelReadiness]:
    try:
        _select(service_of(request), model, version)
    except NotReadyError:
        return Response(ModelReadiness(name=model[:64], ready=False), status_code=503, headers=_RETRY_AFTER)
    return Response(ModelReadiness(name=model, ready=True))


# -- request bodies and answers --------------------------------------------------------------------


def _split_body(request: Request[Any, Any, Any], body: bytes) -> tuple[bytes, bytes]:
    """The JSON part of an infer body and, with Triton's binary tensor extension, the binary rest."""
    length = request.headers.get(_HEADER_LENGTH)
    if length is None:
        return body, b""
    if not (length.isascii() and length.isdigit()) or int(length) > len(body):  # isdigit() alone takes '²'
        raise OipRequestError(f"{_HEADER_LENGTH} must be the length of the JSON part of the body, at most {len(body)}")
    return body[: int(length)], body[int(length) :]


def _parse(request: Request[Any, Any, Any], body: bytes) -> InferRequest:
    header, binary = _split_body(request, body)
    try:
        infer = _decode_infer(header)
    except msgspec.ValidationError as error:
        raise OipRequestError(f"request body: {clip_names(str(error))}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise OipRequestError(f"malformed JSON: {error}{non_finite_hint(header)}") from None
    return read_binary_extension(infer, binary)


def _answer(infer: InferRequest, scored: ScoredRows, request_id: str, explained: ExplainedRows | None) -> ASGIApp:
    answer, blobs = infer_response(infer, scored, request_id)
    if explained is not None:
        answer = with_explanation(answer, explained)
    header = _encode(answer)
    if not blobs:
        return EncodedAnswer(header)
    return EncodedAnswer(
        b"".join((header, *blobs)),
        media_type=OCTET_STREAM.encode(),
        headers=[(b"inference-header-content-length", b"%d" % len(header))],
    )


async def _infer(request: Request[Any, Any, Any], model: str, version: str | None) -> ASGIApp:
    service = service_of(request)
    service.dataplane.check_capacity()
    require_media_type(request, (JSON, OCTET_STREAM))
    body = await read_body(request, service.settings)
    selection = _select(service, model, version)
    infer = _parse(request, body)
    request_id = request_id_of(request.scope)
    rows = columns_of(
        infer, selection.artifact.features, detail=service.settings.error_detail, extra=service.settings.extra_features
    )
    explained, explain = None, explain_of(infer)
    if explain is None:
        scored = await service.dataplane.predict(selection, rows, request_id, protocol="oip")
    else:
        explained = await explain_rows(service.dataplane, selection, rows, request_id, explain, protocol="oip")
        scored, infer = explained.scored, plain_outputs(infer)
    note_scored(request, scored, "oip")
    return _answer(infer, scored, request_id, explained)


# -- routes ----------------------------------------------------------------------------------------


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    why = {
        400: "The body is not an inference request, or its tensors do not fit the model's signature.",
        404: "Unknown model, or a version that is not served.",
        408: "The body did not arrive within BODY_READ_TIMEOUT_S.",
        413: "More rows than MAX_BATCH_ROWS, a body over MAX_BODY_BYTES (on the wire or decoded), or in pieces under "
        "MIN_BODY_PIECE_BYTES.",
        415: "Not JSON (or application/octet-stream with Triton's binary tensor extension), or not UTF-8, or a "
        "Content-Encoding other than gzip, deflate, br.",
        503: "Not ready, or overloaded (see Retry-After).",
        504: "No answer from the inference pool within INFERENCE_TIMEOUT_S.",
    }
    return {code: ResponseSpec(OipError, description=why[code], generate_examples=False) for code in codes}


_PROBE: dict[str, Any] = {"tags": ["oip"], "opt": {"skip_access_log": True}}


@get("/health/live", summary="OIP server liveness", **_PROBE)
async def server_live() -> Liveness:
    """200 while the process serves."""
    return Liveness(live=True)


@get(
    "/health/ready",
    summary="OIP server readiness",
    responses={503: ResponseSpec(Readiness, description="Not ready.", generate_examples=False)},
    **_PROBE,
)
async def server_ready(request: Request[Any, Any, Any]) -> Response[Readiness]:
    """200 when the served models are loaded, else 503."""
    ready = service_of(request).active is not None
    return Response(Readiness(ready=ready), status_code=200 if ready else 503, headers=None if ready else _RETRY_AFTER)


@get("/", summary="OIP server metadata", tags=["oip"])
async def server_metadata() -> ServerMetadata:
    """The server's name, version and OIP extensions."""
    return ServerMetadata(name="fraud-inference", version=__version__, extensions=["binary_tensor_data"])


_MODEL_ERRORS = _errors(404, 503)


@get("/models/{model:str}", summary="OIP model metadata", tags=["oip"], responses=_MODEL_ERRORS)
async def model_metadata(request: Request[Any, Any, Any], model: FromPath[str]) -> ModelMetadata:
    """Name, served version, flavour, one input tensor per feature (signature types), the two outputs."""
    return metadata_of(_select(service_of(request), model, None))


@get("/models/{model:str}/versions/{version:str}", summary="OIP model metadata (a version)", tags=["oip"],
     responses=_MODEL_ERRORS)  # fmt: skip
async def version_metadata(
    request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]
) -> ModelMetadata:
    """As the model's metadata, when `version` is the one served (else 404)."""
    return metadata_of(_select(service_of(request), model, version))


_READY_RESPONSES = {
    404: ResponseSpec(OipError, description="Unknown model, or a version not served.", generate_examples=False),
    503: ResponseSpec(ModelReadiness, description="Not ready yet.", generate_examples=False),
}


@get("/models/{model:str}/ready", summary="OIP model readiness", responses=_READY_RESPONSES, **_PROBE)
async def model_ready(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[ModelReadiness]:
    """200 when the model is loaded and served."""
    return _model_ready(request, model, None)


@get("/models/{model:str}/versions/{version:str}/ready", summary="OIP model readiness (a version)",
     responses=_READY_RESPONSES, **_PROBE)  # fmt: skip
async def version_ready(
    request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]
) -> Response[ModelReadiness]:
    """200 when `version` of the model is the one loaded and served."""
    return _model_ready(request, model, version)


@dataclass
class _InferOperation(Operation):
    """Document the body `infer` reads itself (raw: it may carry binary tensors after its JSON part)."""

    def __post_init__(self) -> None:
        value = Schema(one_of=[Schema(type=OpenAPIType.NUMBER), Schema(type=OpenAPIType.BOOLEAN),
                               Schema(type=OpenAPIType.STRING)])  # fmt: skip
        data = Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(one_of=[value, Schema(type=OpenAPIType.ARRAY)]),
            description="Row-major values, flat or nested.",
        )
        tensor = Schema(
            type=OpenAPIType.OBJECT,
            required=["name", "shape", "datatype"],
            properties={
                "name": Schema(type=OpenAPIType.STRING, description="A feature's name, or any for one [n, features]."),
                "shape": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.INTEGER, minimum=0)),
                "datatype": Schema(type=OpenAPIType.STRING, enum=list(DATATYPE_NAMES)),
                "data": data,
                "parameters": Schema(type=OpenAPIType.OBJECT),
            },
        )
        output = Schema(
            type=OpenAPIType.OBJECT,
            required=["name"],
            properties={"name": Schema(type=OpenAPIType.STRING, enum=list(OUTPUTS)),
                        "parameters": Schema(type=OpenAPIType.OBJECT)},
        )  # fmt: skip
        body = Schema(
            type=OpenAPIType.OBJECT,
            required=["inputs"],
            properties={
                "id": Schema(type=OpenAPIType.STRING),
                "parameters": Schema(type=OpenAPIType.OBJECT),
                "inputs": Schema(type=OpenAPIType.ARRAY, items=tensor, min_items=1),
                "outputs": Schema(type=OpenAPIType.ARRAY, items=output),
            },
        )
        self.request_body = RequestBody(content={JSON: OpenAPIMediaType(schema=body)}, required=True)


_INFER: dict[str, Any] = {
    "operation_class": _InferOperation,
    "status_code": 200,
    "tags": ["oip"],
    "raises": [],
    "responses": {
        200: ResponseSpec(
            InferResponse,
            description="`fraud_probability` (FP64) and `is_fraud` (BOOL), one per row.",
            generate_examples=False,
        ),
        **_errors(400, 404, 408, 413, 415, 503, 504),
    },
}


@post("/models/{model:str}/infer", summary="OIP inference", **_INFER)
async def infer(request: Request[Any, Any, Any], model: FromPath[str]) -> ASGIApp:
    """Score the rows the input tensors hold: `fraud_probability` (FP64) and `is_fraud` (BOOL) per row."""
    return await _infer(request, model, None)


@post("/models/{model:str}/versions/{version:str}/infer", summary="OIP inference (a version)", **_INFER)
async def version_infer(request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]) -> ASGIApp:
    """As the model's inference, when `version` is the one served (else 404)."""
    return await _infer(request, model, version)


def _render_prediction_error(_request: Request[Any, Any, Any], error: PredictionError) -> Response[OipError]:
    status = answer_of(error).oip
    return Response(OipError(oip_message(error)), status_code=status, headers=_RETRY_AFTER if status == 503 else None)


def _render_unhandled(request: Request[Any, Any, Any], error: Exception) -> Response[OipError]:
    """A fault no handler expected, as OIP's `{"error"}`, logged."""
    log_unhandled(request, error)
    return Response(OipError("Internal Server Error"), status_code=500)


def _render_request_error(_request: Request[Any, Any, Any], error: OipRequestError) -> Response[OipError]:
    """A request the codec (or the body's JSON part) cannot read: 400, saying what is wrong."""
    return Response(OipError(error.message), status_code=400)


def _render_http_error(_request: Request[Any, Any, Any], error: HTTPException) -> Response[OipError]:
    return Response(OipError(error.detail), status_code=error.status_code, headers=error.headers)


def oip_router() -> Router:
    """The Open Inference Protocol V2 at /v2, with the core's errors as `{"error": ...}`."""
    return Router(
        path="/v2",
        route_handlers=[
            server_live,
            server_ready,
            server_metadata,
            model_metadata,
            version_metadata,
            model_ready,
            version_ready,
            infer,
            version_infer,
        ],
        exception_handlers={
            PredictionError: _render_prediction_error,
            OipRequestError: _render_request_error,
            HTTPException: _render_http_error,
            500: _render_unhandled,
        },
    )
