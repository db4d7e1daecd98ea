"""The error answers each route documents in OpenAPI, all with the same `ErrorBody`."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from fraud_inference.api.schemas import ErrorBody

__all__ = ["ADMIN_SECURITY", "error_responses"]

ADMIN_SECURITY = "AdminKey"
"""The OpenAPI security scheme of the admin routes: an `X-API-Key` header."""

_WHY: dict[int, str] = {
    400: "The body is not JSON.",
    401: "No X-API-Key header.",
    403: "A wrong X-API-Key, or the admin API is disabled (no API_KEYS configured).",
    404: "Unknown model: the detail lists the served keys.",
    409: "Another refresh is running.",
    413: "More rows than MAX_BATCH_ROWS, or a body over MAX_BODY_BYTES.",
    415: "The body's content type is not one the route reads, or not UTF-8: the detail names the accepted types.",
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
