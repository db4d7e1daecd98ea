"""MLflow's scoring protocol (`mlflow models serve`): /invocations, /ping, /health, /version.

A client of `mlflow models serve` switches to this service by changing the URL: the same request bodies
(`dataframe_split`, `dataframe_records`, `instances`, `inputs`, `params`; CSV with a header), the same
answers (`{"predictions": ...}`, what MLflow's pyfunc wrapper of the version returns), and errors in
MLflow's shape (`{"error_code": "BAD_REQUEST", "message": ...}`) with its status codes.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
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
from pandas._libs.parsers import STR_NA_VALUES

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
    service_of,
)
from fraud_inference.api.request_id import request_id_of
from fraud_inference.dataplane import Selection
from fraud_inference.errors import InvalidRowsError, PredictionError
from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.flavors import flavor_named
from fraud_inference.models.signature_errors import ErrorDetail, clip_names
from fraud_inference.pool import Columns
from fraud_inference.pool.messages import PYFUNC_ANSWER
from fraud_inference.rows import columns_body, encode_rows, refuse_empty

__all__ = ["MlflowError", "MlflowPredictions", "mlflow_router"]

CSV = "text/csv"
TEXT = "text/plain"
_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# What MLflow says when a body holds none or several of them (mlflow/pyfunc/scoring_server/__init__.py).
_REQUIRED_INPUT_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'dataframe_records', 'instances', 'inputs'}"
)
# MLflow passes the `params` that XGBoost's `predict` takes on to it (XGBClassifier's and a raw Booster's): each
# changes the answer, and this service scores without them, so they are refused, not ignored.
_XGBOOST_PREDICT_PARAMS = frozenset(
    {
        "output_margin", "base_margin", "iteration_range", "validate_features", "pred_leaf", "pred_contribs",
        "approx_contribs", "pred_interactions", "training", "strict_shape",
    }
)  # fmt: skip
_RETRY_AFTER = {"Retry-After": "1"}
_EMPTY_ARRAY = re.compile(rb"\s*\[\s*\]\s*")


class MlflowError(msgspec.Struct, kw_only=True):
    """An error answer in MLflow's shape: the error code name (`BAD_REQUEST`, ...) and a message."""

    error_code: str
    message: str


class MlflowPredictions(msgspec.Struct):
    """What MLflow's pyfunc wrapper of the version returns, per row (`mlflow.pyfunc.load_model(uri).predict`):
    the model's own class labels for scikit-learn-API classifiers (`0`/`1`, `"fraud"`/`"legit"`, `true`/`false`),
    the probability for raw Boosters, `[p(class 0), p(class 1)]` for `pyfunc_predict_fn: predict_proba`, a custom
    model's output (a DataFrame as its records)."""

    predictions: list[Any]


class _Split(msgspec.Struct):
    """pandas' `orient="split"`: `columns`, then `data` row by row; `index` (one label per row) is ignored."""

    data: list[list[Any]]
    columns: list[str] | None = None
    index: Any = None


class _Invocation(msgspec.Struct):
    """An /invocations JSON body; other keys are ignored, as MLflow does."""

    dataframe_split: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    dataframe_records: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    instances: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    inputs: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    params: dict[str, Any] | None = None


_decode_invocation = msgspec.json.Decoder(_Invocation).decode
_encode = msgspec.json.Encoder().encode
_decode_split = OverflowAsInfinityDecoder(_Split).decode
_decode_columns = OverflowAsInfinityDecoder(dict[str, list[Any]]).decode


def _check_servable(selection: Selection, params: dict[str, Any] | None) -> None:
    artifact = selection.artifact
    served = flavor_named(artifact.flavor).pyfunc_predict_fns
    if artifact.pyfunc_predict_fn not in served:
        raise _Refusal(
            501,
            "NOT_IMPLEMENTED",
            f"the version's pyfunc_predict_fn {artifact.pyfunc_predict_fn!r} is not served here "
            f"({', '.join(served)} are)",
        )
    declared = sorted(set(artifact.pyfunc_params).intersection(params or {}))
    if declared and artifact.flavor == "python_function":
        # MLflow passes a custom model the params its signature declares; this service calls predict without them
        # (with their defaults, as MLflow does when none is sent).
        raise _Refusal(
            400,
            "INVALID_PARAMETER_VALUE",
            f"params {', '.join(declared)} would reach the model's predict through MLflow; this service scores with "
            "their logged defaults: leave them out",
        )
    if params and artifact.flavor == "xgboost":
        changing = sorted(_XGBOOST_PREDICT_PARAMS.intersection(params))
        if changing:
            raise _Refusal(
                400,
                "INVALID_PARAMETER_VALUE",
                f"params {', '.join(changing)} would change what the model computes; this service scores "
                "without them: leave them out",
            )


# NOTE: pandas's own list (private, but the rule MLflow's server applies through read_csv's defaults).
_CSV_MISSING: frozenset[str] = frozenset(STR_NA_VALUES)
_CSV_BOOLEANS = frozenset({"true", "false", "1", "0"})


class _Refusal(HTTPException):
    """A request this protocol refuses before scoring, with MLflow's error code."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(status_code=status, detail=message)
        self.error_code = error_code


def _parse_invocation(body: bytes) -> tuple[str, bytes, dict[str, Any] | None]:
    """A JSON body's input form (`dataframe_split`, ...), the raw JSON of its input, and its params."""
    try:
        invocation = _decode_invocation(body)
    except msgspec.ValidationError as error:
        message = clip_names(str(error))
        if "got `array`" in message and "$" not in message.partition(" - at ")[2]:
            message = f"{_REQUIRED_INPUT_FORMAT}. Received a list."
        raise _Refusal(400, "BAD_REQUEST", message) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _Refusal(
            400,
            "BAD_REQUEST",
            f"Ensure that input is a valid JSON formatted string. Error: {error}{non_finite_hint(body)}",
        ) from None
    present = [name for name in _FORMATS if getattr(invocation, name) is not msgspec.UNSET]
    if len(present) != 1:
        raise _Refusal(400, "BAD_REQUEST", f"{_REQUIRED_INPUT_FORMAT}. Received input fields: {present}")
    return present[0], bytes(getattr(invocation, present[0])), invocation.params


def _rows_of_json(name: str, raw: bytes, detail: ErrorDetail) -> bytes | Columns:
    """The rows of the input form `name` as the pool takes them.

    Row-oriented inputs (`dataframe_records`, or `instances`/`inputs` holding an array) pass through untouched, as
    raw JSON; columnar ones (`dataframe_split`, `inputs`/`instances` as an object of columns) go as `Columns`.
    """
    if name == "dataframe_split":
        return _rows_of_split(raw, detail)
    if name != "dataframe_records" and raw.lstrip()[:1] == b"{":
        return _rows_of_columns(raw, name, detail)
    if _EMPTY_ARRAY.fullmatch(raw):
        raise refuse_empty(name)
    return raw


def _rows_of_split(raw: bytes, detail: ErrorDetail) -> bytes | Columns:
    try:
        split = _decode_split(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _Refusal(400, "BAD_REQUEST", f"dataframe_split: {clip_names(str(error))}") from None
    if split.columns is None:
        raise _Refusal(400, "BAD_REQUEST", "dataframe_split: name the columns in `columns`")
    if split.index is not None and (not isinstance(split.index, list) or len(split.index) != len(split.data)):
        labels = f"index length {len(split.index)}" if isinstance(split.index, list) else "an index that is not a list"
        raise _Refusal(
            400,
            "BAD_REQUEST",
            f"dataframe_split: {labels} does not match the {len(split.data)} rows of data: send one label per row, "
            "or leave index out",
        )
    if not split.data:
        raise refuse_empty("dataframe_split.data")
    width = len(split.columns)
    if set(map(len, split.data)) != {width}:
        index, row = next((index, row) for index, row in enumerate(split.data) if len(row) != width)
        raise _Refusal(400, "BAD_REQUEST", f"dataframe_split: data[{index}] has {len(row)} values for {width} columns")
    _refuse_repeated("dataframe_split: column", split.columns)
    # Transposed in C.
    return columns_body(dict(zip(split.columns, zip(*split.data, strict=True), strict=True)), detail=detail)


def _rows_of_columns(raw: bytes, name: str, detail: ErrorDetail) -> bytes | Columns:
    try:
        columns = _decode_columns(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _Refusal(400, "BAD_REQUEST", f"{name}: {clip_names(str(error))}") from None
    counts = {len(values) for values in columns.values()}
    if len(counts) > 1:
        raise _Refusal(400, "BAD_REQUEST", f"{name}: every column must hold as many values as the others")
    if counts in (set(), {0}):
        raise refuse_empty(name)
    return columns_body(columns, detail=detail)


def _rows_of_csv(body: bytes, features: tuple[FeatureSpec, ...], detail: ErrorDetail) -> bytes:
    """CSV with a header row, as `pandas.DataFrame.to_csv(index=False)` writes it; cells typed by the signature."""
    try:
        # NOTE: utf-8-sig: a byte-order mark (Excel writes one) is dropped, as pandas' read_csv drops it.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _Refusal(
            400, "BAD_REQUEST", f"Ensure that input is a valid UTF-8 encoded string. Error: {error}"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))  # the csv module reads CR, LF and CRLF line ends itself
    try:
        header = next(reader, None)
        if not header:
            raise _Refusal(400, "BAD_REQUEST", "CSV input needs a header row naming the columns")
        _refuse_repeated("CSV header: column", header)
        types = {spec.name: spec.type for spec in features}
        rows = []
        for number, record in enumerate(reader):
            if not record:
                continue
            if len(record) != len(header):
                raise _Refusal(400, "BAD_REQUEST", f"CSV row {number}: {len(record)} values for {len(header)} columns")
            rows.append({name: _cell(cell, types.get(name)) for name, cell in zip(header, record, strict=True)})
    except csv.Error as error:  # e.g. a cell over the csv module's field limit: an unclosed quote runs on
        raise _Refusal(
            400, "BAD_REQUEST", f"CSV input is malformed at line {reader.line_num}: {error} (an unclosed quote?)"
        ) from None
    if not rows:
        raise refuse_empty("the CSV input under its header row")
    return encode_rows(rows, detail=detail)


def _refuse_repeated(subject: str, names: list[str]) -> None:
    """400 when a column is named twice: which of its values would score is a guess (OIP refuses it too)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _Refusal(
                400, "BAD_REQUEST", f"{subject} {name[:64]!r} is named more than once: send each column once"
            )
        seen.add(name)


def _cell(cell: str, kind: str | None) -> Any:
    """One CSV cell as the signature's type; left as text when it is not one (the worker then says so).

    Missing, in any column, are the cells `pandas.read_csv` (MLflow's server) reads as missing by default: empty,
    `nan`, `NA`, `null`, `None`, `N/A` and the rest of `STR_NA_VALUES`. `inf` and `1e999` become infinities,
    which `encode_rows` refuses.
    """
    if cell in _CSV_MISSING:
        return None
    # NOTE: ASCII without `_` only: Python's int() and float() also read full-width (any Unicode) digits and
    # `1_000`, which pandas.read_csv leaves as text, so a numeric column refuses them.
    if not cell.isascii() or "_" in cell:
        return cell
    if kind not in ("double", "float", "long", "integer"):
        return cell.lower() in ("true", "1") if kind == "boolean" and cell.lower() in _CSV_BOOLEANS else cell
    try:
        # An integer's digits exactly (float() would round past 2**53, which the worker then refuses by name).
        number: float = int(cell) if kind in ("long", "integer") and cell.lstrip("+-").isdigit() else float(cell)
    except ValueError:  # `--5`, or past Python's 4,300 digits: text, as pandas reads it
        return cell
    # `NAN`, `+nan`: float() reads any spelling of NaN, pandas only those of `_CSV_MISSING`.
    return cell if isinstance(number, float) and math.isnan(number) else number


def _only_charset(request: Request[Any, Any, Any]) -> None:
    """MLflow takes no content-type parameter but `charset` (415 otherwise; `require_media_type` checks it)."""
    _type, *parameters = (part.strip() for part in request.headers.get("content-type", "").split(";"))
    for parameter in parameters:
        key = parameter.partition("=")[0].strip()
        if key.lower() != "charset":
            raise _Refusal(415, "BAD_REQUEST", f"Unrecognized content type parameters: {key[:64]}")


async def _invoke(request: Request[Any, Any, Any], model: str | None) -> ASGIApp:
    service = service_of(request)
    service.dataplane.check_capacity()
    media_type = require_media_type(request, (JSON, CSV))
    _only_charset(request)
    body = await read_body(request, service.settings)
    selection = service.dataplane.select(model)
    detail = service.settings.error_detail
    rows: bytes | Columns
    if media_type == CSV:
        _check_servable(selection, None)
        rows = _rows_of_csv(body, selection.artifact.features, detail)
    else:
        form, raw, params = _parse_invocation(body)
        _check_servable(selection, params)
        rows = _rows_of_json(form, raw, detail)
    scored = await service.dataplane.predict(
        selection, rows, request_id_of(request.scope), protocol="mlflow", wants=(PYFUNC_ANSWER,)
    )
    note_scored(request, scored, "mlflow")
    # The worker encoded the predictions' JSON array: wrapped here, never decoded in the HTTP process.
    return EncodedAnswer(b'{"predictions":' + (scored.pyfunc_output or b"[]") + b"}")


@dataclass
class _InvocationsOperation(Operation):
    """Document the bodies `/invocations` reads itself (as MLflow does: four JSON forms, or CSV)."""

    def __post_init__(self) -> None:
        value = Schema(one_of=[Schema(type=OpenAPIType.NUMBER), Schema(type=OpenAPIType.BOOLEAN)])
        row = Schema(type=OpenAPIType.OBJECT, additional_properties=value, description="Feature name to value.")
        records = Schema(type=OpenAPIType.ARRAY, items=row, min_items=1)
        columns = Schema(
            type=OpenAPIType.OBJECT,
            additional_properties=Schema(type=OpenAPIType.ARRAY, items=value),
            description="Feature name to one value per row.",
        )
        split = Schema(
            type=OpenAPIType.OBJECT,
            required=["columns", "data"],
            properties={
                "columns": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING)),
                "data": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.ARRAY, items=value)),
                "index": Schema(type=OpenAPIType.ARRAY),
            },
        )
        params = Schema(type=OpenAPIType.OBJECT, description="Accepted; these models take none that change scores.")

        def form(name: str, schema: Schema) -> Schema:
            return Schema(type=OpenAPIType.OBJECT, required=[name], properties={name: schema, "params": params})

        body = Schema(
            one_of=[
                form("dataframe_split", split),
                form("dataframe_records", records),
                form("instances", records),
                form("inputs", Schema(one_of=[records, columns])),
            ]
        )
        csv_body = Schema(type=OpenAPIType.STRING, description="CSV with a header row of feature names.")
        self.request_body = RequestBody(
            content={JSON: OpenAPIMediaType(schema=body), CSV: OpenAPIMediaType(schema=csv_body)}, required=True
        )


_WHY = {
    400: "The body cannot be read as MLflow's scoring input, or its rows do not fit the model's signature.",
    404: "Unknown model.",
    408: "The body did not arrive within BODY_READ_TIMEOUT_S.",
    413: "A body over MAX_BODY_BYTES (on the wire or decoded), or in pieces under MIN_BODY_PIECE_BYTES.",
    415: "Not JSON or CSV (UTF-8), or a Content-Encoding other than gzip, deflate, br.",
    501: "The version's pyfunc_predict_fn is not served.",
    503: "Not ready, or overloaded (see Retry-After).",
    504: "No answer from the inference pool within INFERENCE_TIMEOUT_S.",
}
_RESPONSES = {code: ResponseSpec(MlflowError, description=why, generate_examples=False) for code, why in _WHY.items()}
_OPERATION: dict[str, Any] = {
    "status_code": 200,
    "operation_class": _InvocationsOperation,
    "raises": [],
    "responses": {
        200: ResponseSpec(
            MlflowPredictions, description="What `mlflow models serve` answers for these rows.", generate_examples=False
        ),
        **_RESPONSES,
    },
    "tags": ["mlflow"],
}


@post("/invocations", summary="Score with MLflow's scoring protocol (DEFAULT_MODEL)", **_OPERATION)
async def invocations(request: Request[Any, Any, Any]) -> ASGIApp:
    """`mlflow models serve`'s /invocations, scored by DEFAULT_MODEL: the same bodies, the same answers."""
    return await _invoke(request, None)


@post("/invocations/{model:str}", summary="Score with MLflow's scoring protocol (a named model)", **_OPERATION)
async def invocations_for_model(request: Request[Any, Any, Any], model: FromPath[str]) -> ASGIApp:
    """/invocations for the served model `model` (a key of MODELS)."""
    return await _invoke(request, model)


def _ping(request: Request[Any, Any, Any]) -> Response[bytes]:
    ready = service_of(request).active is not None
    # NOTE: MLflow answers "\n" labelled application/json, which is not JSON; the same bytes as text/plain here.
    return Response(b"\n", status_code=200 if ready else 503, media_type=TEXT, headers=None if ready else _RETRY_AFTER)


_PROBE: dict[str, Any] = {
    "tags": ["mlflow"],
    "opt": {"skip_access_log": True},
    "media_type": TEXT,
    "responses": {503: ResponseSpec(bytes, description="Not ready yet.", generate_examples=False)},
}


@get("/ping", summary="MLflow's health check", **_PROBE)
async def ping(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when the served models are loaded, else 503."""
    return _ping(request)


@get("/health", summary="MLflow's health check (as /ping)", **_PROBE)
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when the served models are loaded, else 503."""
    return _ping(request)


@get("/version", summary="The MLflow version this service speaks", tags=["mlflow"], media_type=TEXT)
async def mlflow_version() -> str:
    """The installed MLflow's version, as `mlflow models serve` answers it."""
    from mlflow.version import VERSION

    return str(VERSION)


_HTTP_ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "ENDPOINT_NOT_FOUND",
    408: "BAD_REQUEST",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
}


def _render(
    status: int, error_code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response[MlflowError]:
    if status == 503:
        headers = _RETRY_AFTER
    return Response(MlflowError(error_code=error_code, message=message), status_code=status, headers=headers)


def _render_prediction_error(_request: Request[Any, Any, Any], error: PredictionError) -> Response[MlflowError]:
    answer = answer_of(error)
    if isinstance(error, InvalidRowsError):
        located = where(error, row="row", feature="column", feature_first=False)
        message = f"Failed to enforce schema of data: {located + ': ' if located else ''}{error.message}"
    else:
        message = str(error)
    return _render(answer.mlflow, answer.mlflow_code, message)


def _render_unhandled(request: Request[Any, Any, Any], error: Exception) -> Response[MlflowError]:
    """A fault no handler expected, in MLflow's words (its server answers INTERNAL_ERROR), logged."""
    log_unhandled(request, error)
    return _render(500, "INTERNAL_ERROR", "Internal Server Error")


def _render_http_error(_request: Request[Any, Any, Any], error: HTTPException) -> Response[MlflowError]:
    error_code = error.error_code if isinstance(error, _Refusal) else _HTTP_ERROR_CODES.get(error.status_code)
    return _render(error.status_code, error_code or "INTERNAL_ERROR", error.detail, error.headers)


def mlflow_router() -> Router:
    """MLflow's scoring protocol at the root, with the core's errors in MLflow's shape."""
    return Router(
        path="/",
        route_handlers=[invocations, invocations_for_model, ping, health, mlflow_version],
        exception_handlers={
            PredictionError: _render_prediction_error,
            HTTPException: _render_http_error,
            500: _render_unhandled,
        },
    )
