"""What every protocol router shares: the service, the content-type rule, and the access-log fields of an answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException

from fraud_inference.api.request_id import note_for_access_log
from fraud_inference.service import FraudService, ScoredRows

__all__ = [
    "JSON",
    "UnsupportedMediaTypeError",
    "media_type_of",
    "note_scored",
    "require_media_type",
    "rows_of_columns",
    "service_of",
]

JSON = "application/json"


class UnsupportedMediaTypeError(HTTPException):
    """A body whose content type the route does not read: 415, naming the types it does."""

    status_code = 415

    def __init__(self, sent: str, accepted: Sequence[str]) -> None:
        super().__init__(
            detail=f"content type {sent[:100]!r} is not accepted here; send {' or '.join(accepted)}",
        )
        self.sent = sent[:100]
        self.accepted = tuple(accepted)


def service_of(request: Request[Any, Any, Any]) -> FraudService:
    service: FraudService = request.app.state.service
    return service


def media_type_of(request: Request[Any, Any, Any]) -> str:
    """The request's media type, lower case, without parameters; JSON when the client sent none."""
    sent = request.headers.get("content-type")
    if not sent:
        return JSON
    return sent.partition(";")[0].strip().lower()


def require_media_type(request: Request[Any, Any, Any], accepted: Sequence[str] = (JSON,)) -> str:
    """The request's media type when the route reads it (`application/*+json` counts as JSON), else 415."""
    media_type = media_type_of(request)
    if media_type in accepted:
        return media_type
    if JSON in accepted and media_type.startswith("application/") and media_type.endswith("+json"):
        return JSON
    raise UnsupportedMediaTypeError(request.headers.get("content-type", ""), accepted)


def note_scored(request: Request[Any, Any, Any], scored: ScoredRows, protocol: str) -> None:
    """Put the model, version, generation, row count and protocol of an answer on its access-log line."""
    note_for_access_log(
        request.scope,
        protocol=protocol,
        model=scored.selection.key,
        version=scored.ref.version,
        generation=scored.selection.generation.number,
        rows=len(scored.probabilities),
    )


def rows_of_columns(columns: dict[str, list[Any]]) -> bytes:
    """Columns (name to one value per row, all as long) as the pool takes every protocol's rows: the raw JSON of
    an array of row objects. Built with C-level zips: no Python call per value."""
    names = list(columns)
    return _encode([dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)])


_encode = msgspec.json.encode
