"""The error answers each route documents in OpenAPI, all with the same `ErrorBody`; and the one answer to a fault."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Response

from fraud_inference.api.request_id import request_id_of
from fraud_inference.api.schemas import ErrorBody
from fraud_inference.observability.logging import get_logger

__all__ = ["ADMIN_SECURITY", "error_responses", "log_unhandled", "render_unhandled"]

log = get_logger("fraud_inference.api")

ADMIN_SECURITY = "AdminKey"
"""The OpenAPI security scheme of the admin routes: an `X-API-Key` header."""

_WHY: dict[int, str] = {
    400: "The body is not JSON, or not what its Content-Encoding says.",
    401: "No X-API-Key header.",
    403: "A wrong X-API-Key, or the admin API is disabled (no API_KEYS configured).",
    404: "Unknown model: the detail lists the served keys.",
    408: "The body did not arrive within BODY_READ_TIMEOUT_S.",
    409: "Another refresh is running.",
    413: "More rows than MAX_BATCH_ROWS, a body over MAX_BODY_BYTES (on the wire or decoded), or in pieces under "
    "MIN_BODY_PIECE_BYTES.",
    415: "The body's content type is not one the route reads, or not UTF-8, or its Content-Encoding is not gzip, "
    "deflate or br: the detail names the accepted ones.",
    422: "The body does not fit the model's signature: the detail names the row and the feature.",
    502: "The registry cannot be asked; the current models keep serving.",
    503: "Not ready yet, or no worker could score (see Retry-After).",
    504: "No answer from the inference pool within INFERENCE_TIMEOUT_S.",
}


def error_responses(*status_codes: int, **why: str) -> dict[int, ResponseSpec]:
    """OpenAPI responses for `status_codes`; `why` overrides a description, keyed `_422=...`."""
    return {
        code: ResponseSpec(
            data_container=ErrorBody,
            description=why.get(f"_{code}", _WHY[code]),
            generate_examples=False,
        )
        for code in status_codes
    }


def log_unhandled(request: Request[Any, Any, Any], error: Exception) -> None:
    """Log an exception no handler expected (a 500), with its traceback, route and request id: the answer says
    only "Internal Server Error", so this line is where an on-call engineer finds the cause."""
    log.error(
        "http.unhandled_error", method=request.method, path=request.url.path, request_id=request_id_of(request.scope),
        exc_info=error,
    )  # fmt: skip


def render_unhandled(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    """Any route's 500 (registered under status 500: Litestar's HTTPExceptions keep their own answers), logged."""
    log_unhandled(request, error)
    return Response(ErrorBody(status_code=500, detail="Internal Server Error"), status_code=500)
