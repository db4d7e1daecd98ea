"""The Open Inference Protocol V2 over REST (KServe, Triton, MLServer) under /v2.

Health, server and model metadata, readiness and inference, also under `/versions/{version}` for the served
version. Inputs are one tensor per feature (shape `[n]` or `[n, 1]`) or one `[n, features]` tensor in the
signature's order, as JSON or with Triton's binary tensor extension; outputs are `fraud_probability` (FP64)
and `is_fraud` (BOOL). Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgspec
import numpy as np
from litestar import Request, Router, get, post
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath
from litestar.response import Response
from litestar.types import ASGIApp

from fraud_inference import __version__
from fraud_inference.api.body import read_body
from fraud_inference.api.error_table import answer_of, where
from fraud_inference.api.errors import log_unhandled
from fraud_inference.api.protocol import (
    JSON,
    EncodedAnswer,
    OverflowAsInfinityDecoder,
    non_finite_hint,
    note_scored,
    require_media_type,
    score,
    service_of,
)
from fraud_inference.api.request_id import request_id_of
from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature import ErrorDetail, clip_names
from fraud_inference.pool import Columns
from fraud_inference.rows import columns_body, refuse_empty
from fraud_inference.service import (
    FraudService,
    InvalidRowsError,
    NotReadyError,
    PredictionError,
    ScoredRows,
    Selection,
)

__all__ = [
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "OipError",
    "RequestInput",
    "ResponseOutput",
    "ServerMetadata",
    "oip_router",
]

OCTET_STREAM = "application/octet-stream"
_HEADER_LENGTH = "inference-header-content-length"
# An MLflow signature's column types as OIP datatypes (MLServer's MLflow runtime maps them the same way).
DATATYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
}
_NUMPY = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
_INTEGER_RANGES = {
    **{f"INT{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)},
}
_FLOAT_MAX = {"FP16": 65504.0, "FP32": float(np.finfo(np.float32).max), "FP64": float(np.finfo(np.float64).max)}
_DATATYPE_NAMES = ", ".join(sorted({*_NUMPY, "BYTES"}))
OUTPUTS = ("fraud_probability", "is_fraud")
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


class ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct, kw_only=True):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(msgspec.Struct, kw_only=True):
    """One input tensor: its values row-major in `data` (flat or nested), or in the binary part of the body."""

    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: dict[str, Any] | None = None


class RequestOutput(msgspec.Struct, kw_only=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, kw_only=True):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    """FP64 probabilities or BOOL flags, one per row."""
    parameters: dict[str, Any] | None = None


class InferResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: str
    model_version: str
    id: str
    outputs: list[ResponseOutput]
    parameters: dict[str, Any] | None = None


_decode_infer = OverflowAsInfinityDecoder(InferRequest).decode
_encode = msgspec.json.encode


class _BadRequest(HTTPException):
    status_code = 400


# -- model lookup ----------------------------------------------------------------------------------


def _select(service: FraudService, model: str, version: str | None) -> Selection:
    """The served `model`, and when a version is named, only if it is the one served now (else 404)."""
    selection = service.select(model)
    served = selection.artifact.ref.version
    if version is not None and version != served:
        raise HTTPException(status_code=404, detail=f"model {model[:64]!r} version {version[:64]!r} is not served")
    return selection


def _metadata(selection: Selection) -> ModelMetadata:
    artifact = selection.artifact
    return ModelMetadata(
        name=selection.key,
        versions=[artifact.ref.version],
        platform=artifact.flavor,
        inputs=[TensorMetadata(f.name, DATATYPES.get(f.type, "BYTES"), [-1]) for f in artifact.features],
        outputs=[TensorMetadata("fraud_probability", "FP64", [-1]), TensorMetadata("is_fraud", "BOOL", [-1])],
    )


def _model_ready(request: Request[Any, Any, Any], model: str, version: str | None) -> Response[ModelReadiness]:
    try:
        _select(service_of(request), model, version)
    except NotReadyError:
        return Response(ModelReadiness(name=model[:64], ready=False), status_code=503, headers=_RETRY_AFTER)
    return Response(ModelReadiness(name=model, ready=True))


# -- request bodies --------------------------------------------------------------------------------


def _split_body(request: Request[Any, Any, Any], body: bytes) -> tuple[bytes, bytes]:
    """The JSON part of an infer body and, with Triton's binary tensor extension, the binary rest."""
    length = request.headers.get(_HEADER_LENGTH)
    if length is None:
        return body, b""
    if not (length.isascii() and length.isdigit()) or int(length) > len(body):  # isdigit() alone takes '²'
        raise _BadRequest(f"{_HEADER_LENGTH} must be the length of the JSON part of the body, at most {len(body)}")
    return body[: int(length)], body[int(length) :]


def _parse(request: Request[Any, Any, Any], body: bytes) -> InferRequest:
    header, binary = _split_body(request, body)
    try:
        infer = _decode_infer(header)
    except msgspec.ValidationError as error:
        raise _BadRequest(f"request body: {clip_names(str(error))}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _BadRequest(f"malformed JSON: {error}{non_finite_hint(header)}") from None
    offset = 0
    for tensor in infer.inputs:
        if tensor.datatype not in _NUMPY and tensor.datatype != "BYTES":
            raise _BadRequest(f"input {tensor.name[:64]!r}: datatype {tensor.datatype[:64]!r} is not an OIP datatype; "
                              f"send one of {_DATATYPE_NAMES}")  # fmt: skip
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise _BadRequest(f"input {tensor.name[:64]!r}: binary_data_size does not fit the body's binary part")
        tensor.data = _from_binary(tensor, binary[offset : offset + size])
        offset += size
    return infer


def _from_binary(tensor: RequestInput, raw: bytes) -> list[Any]:
    if tensor.datatype == "BYTES":
        values: list[Any] = []
        position = 0
        while position + 4 <= len(raw):
            length = int.from_bytes(raw[position : position + 4], "little")
            values.append(raw[position + 4 : position + 4 + length].decode("utf-8", errors="replace"))
            position += 4 + length
        return values
    dtype = _NUMPY.get(tensor.datatype)
    if dtype is None or len(raw) % dtype.itemsize:
        raise _BadRequest(f"input {tensor.name[:64]!r}: binary data does not hold {tensor.datatype} values")
    return np.frombuffer(raw, dtype=dtype).tolist()  # type: ignore[no-any-return]


def _flatten(data: Any) -> list[Any]:
    """Row-major values of a tensor's `data`, flat or nested (each level evenly: lists of lists, or of values)."""
    if not isinstance(data, list):
        return [data]
    while data and isinstance(data[0], list):
        if not all(isinstance(part, list) for part in data):
            raise _BadRequest("tensor data must be nested evenly: lists of lists, or lists of values")
        data = list(chain.from_iterable(data))
    flat: list[Any] = data
    return flat


def _values(tensor: RequestInput) -> list[Any]:
    if tensor.data is None:
        raise _BadRequest(f"input {tensor.name[:64]!r} has no data")
    if any(not isinstance(dim, int) or dim < 0 for dim in tensor.shape):
        raise _BadRequest(f"input {tensor.name[:64]!r}: shape {tensor.shape} must be non-negative sizes")
    values = _flatten(tensor.data)
    if len(values) != math.prod(tensor.shape):
        raise _BadRequest(f"input {tensor.name[:64]!r}: shape {tensor.shape} needs {math.prod(tensor.shape)} values, "
                          f"data holds {len(values)}")  # fmt: skip
    misfit = None if _fit(tensor.datatype, values) else _first_misfit(tensor.datatype, values)
    if misfit is not None:
        index, value = misfit
        raise _BadRequest(f"input {tensor.name[:64]!r}: data[{index}] = {repr(value)[:64]} does not fit datatype "
                          f"{tensor.datatype}; send values of the declared datatype")  # fmt: skip
    return values


def _fit(datatype: str, values: list[Any]) -> bool:
    """Whether every value surely fits `datatype` (null, a missing value, fits any), in C-level passes; False when
    unsure (`3.0` in an integer tensor, NaN), for `_first_misfit` to decide value by value."""
    kinds = set(map(type, values))
    if type(None) in kinds:
        kinds.discard(type(None))
        values = [value for value in values if value is not None]
    if not values:
        return True
    if datatype == "BOOL":
        return kinds == {bool}
    if datatype == "BYTES":
        return kinds == {str}
    if not kinds <= {int, float}:
        return False
    if datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        return kinds == {int} and bool(low <= min(values) and max(values) <= high)
    # An infinity or NaN lands here; `_fits` lets both through (encode_rows refuses infinity at its row and column).
    return bool(-_FLOAT_MAX[datatype] <= min(values) and max(values) <= _FLOAT_MAX[datatype])


def _first_misfit(datatype: str, values: list[Any]) -> tuple[int, Any] | None:
    return next(((i, v) for i, v in enumerate(values) if v is not None and not _fits(datatype, v)), None)


def _fits(datatype: str, value: Any) -> bool:
    """Whether one (non-null) value fits `datatype`: a JSON boolean for BOOL, a string for BYTES, a whole number in
    range for an integer type (`3.0` is 3), a number within range for a floating-point type."""
    kind = type(value)
    if datatype == "BOOL":
        return kind is bool
    if datatype == "BYTES":
        return kind is str
    if kind is not int and kind is not float:
        return False
    if datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        return (kind is int or bool(value.is_integer())) and bool(low <= value <= high)
    return not abs(value) > _FLOAT_MAX[datatype] or math.isinf(value)


def _as_booleans(values: list[Any]) -> list[Any]:
    """A boolean feature sent in a numeric tensor (0/1) as the booleans the signature asks for."""
    return [bool(v) if v in (0, 1) and not isinstance(v, bool) else v for v in values]


def _rows(infer: InferRequest, features: tuple[FeatureSpec, ...], detail: ErrorDetail) -> bytes | Columns:
    """The tensors as the pool takes them, as columns (one per feature); names and types checked by the worker."""
    names = [feature.name for feature in features]
    booleans = {feature.name for feature in features if feature.type == "boolean"}
    if not infer.inputs:
        raise _BadRequest("inputs is empty: send one tensor per feature, or one [n, features] tensor")
    if len(infer.inputs) == 1 and infer.inputs[0].name not in names and len(infer.inputs[0].shape) == 2:
        tensor = infer.inputs[0]
        width = tensor.shape[1]
        if width != len(features):
            raise _BadRequest(f"input {tensor.name[:64]!r}: shape {tensor.shape} needs {len(features)} columns, "
                              f"one per feature in signature order: {', '.join(names)}")  # fmt: skip
        values = _values(tensor)
        columns = {name: values[index::width] for index, name in enumerate(names)}
    else:
        columns = {}
        for tensor in infer.inputs:
            if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
                raise _BadRequest(f"input {tensor.name[:64]!r}: shape {tensor.shape}: send one tensor per feature "
                                  "of shape [n] or [n, 1], or one [n, features] tensor in signature order")  # fmt: skip
            if tensor.name in columns:
                raise _BadRequest(f"input {tensor.name[:64]!r} is sent more than once: send one tensor per feature")
            columns[tensor.name] = _values(tensor)
        counts = {name: len(values) for name, values in columns.items()}
        first = infer.inputs[0].name
        other = next((name for name, count in counts.items() if count != counts[first]), None)
        if other is not None:
            raise _BadRequest(f"input {other[:64]!r} holds {counts[other]} values and input {first[:64]!r} "
                              f"{counts[first]}: every input tensor must hold one value per row")  # fmt: skip
    if not next(iter(columns.values())):
        raise refuse_empty(f"input {infer.inputs[0].name[:64]!r}")
    for name in booleans.intersection(columns):
        columns[name] = _as_booleans(columns[name])
    return columns_body(columns, detail=detail)


# -- answers ---------------------------------------------------------------------------------------


def _answer(infer: InferRequest, scored: ScoredRows, request_id: str) -> ASGIApp:
    requested = {output.name: output for output in infer.outputs or ()}
    unknown = [name for name in requested if name not in OUTPUTS]
    if unknown:
        raise _BadRequest(f"unknown output {unknown[0][:64]!r}; this model's outputs are {', '.join(OUTPUTS)}")
    names = [name for name in OUTPUTS if not requested or name in requested]
    tensors = {"fraud_probability": scored.probabilities, "is_fraud": scored.flagged}
    binary_default = bool((infer.parameters or {}).get("binary_data_output", False))
    ref = scored.ref
    outputs: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for name in names:
        tensor = tensors[name]
        datatype = "FP64" if name == "fraud_probability" else "BOOL"
        output = requested.get(name)
        if bool((output.parameters or {}).get("binary_data", binary_default)) if output else binary_default:
            blob = np.ascontiguousarray(tensor, dtype=_NUMPY[datatype]).tobytes()
            blobs.append(blob)
            outputs.append(ResponseOutput(name=name, datatype=datatype, shape=[len(tensor)],
                                          parameters={"binary_data_size": len(blob)}))  # fmt: skip
        else:
            outputs.append(ResponseOutput(name=name, datatype=datatype, shape=[len(tensor)], data=tensor.tolist()))
    answer = InferResponse(
        model_name=scored.selection.key,
        model_version=ref.version,
        id=infer.id if infer.id is not None else request_id,
        outputs=outputs,
        parameters={"threshold": ref.threshold, "generation": scored.selection.generation.number,
                    "registered_model": ref.name, "selected_by": ref.selected_by},
    )  # fmt: skip
    if not blobs:
        return EncodedAnswer(_encode(answer))
    header = _encode(answer)
    return EncodedAnswer(
        b"".join((header, *blobs)),
        media_type=OCTET_STREAM.encode(),
        headers=[(b"inference-header-content-length", b"%d" % len(header))],
    )


async def _infer(request: Request[Any, Any, Any], model: str, version: str | None) -> ASGIApp:
    service = service_of(request)
    service.check_capacity()
    require_media_type(request, (JSON, OCTET_STREAM))
    body = await read_body(request, service.settings)
    selection = _select(service, model, version)
    infer = _parse(request, body)
    request_id = request_id_of(request.scope)
    rows = _rows(infer, selection.artifact.features, service.settings.error_detail)
    scored = await score(service, selection, rows, request_id)
    note_scored(request, scored, "oip")
    return _answer(infer, scored, request_id)


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
    return _metadata(_select(service_of(request), model, None))


@get("/models/{model:str}/versions/{version:str}", summary="OIP model metadata (a version)", tags=["oip"],
     responses=_MODEL_ERRORS)  # fmt: skip
async def version_metadata(
    request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]
) -> ModelMetadata:
    """As the model's metadata, when `version` is the one served (else 404)."""
    return _metadata(_select(service_of(request), model, version))


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
                "datatype": Schema(type=OpenAPIType.STRING, enum=sorted({*_NUMPY, "BYTES"})),
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
        200: ResponseSpec(InferResponse, description="`fraud_probability` (FP64) and `is_fraud` (BOOL), one per row."),
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
    if isinstance(error, InvalidRowsError):
        located = where(error, row="row", feature="input", feature_first=True)
        message = f"{located}: {error.message}" if located else error.message
    else:
        message = str(error)
    return Response(OipError(message), status_code=status, headers=_RETRY_AFTER if status == 503 else None)


def _render_unhandled(request: Request[Any, Any, Any], error: Exception) -> Response[OipError]:
    """A fault no handler expected, as OIP's `{"error"}`, logged."""
    log_unhandled(request, error)
    return Response(OipError("Internal Server Error"), status_code=500)


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
            HTTPException: _render_http_error,
            500: _render_unhandled,
        },
    )
