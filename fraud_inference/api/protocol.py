"""What every protocol router shares: the service, the content-type rule, and the access-log fields of an answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.types import Receive, Scope, Send

from fraud_inference.api.request_id import note_for_access_log
from fraud_inference.observers import ProtocolName
from fraud_inference.pool.messages import Columns
from fraud_inference.service import FraudService, ScoredRows, Selection

__all__ = [
    "JSON",
    "EncodedAnswer",
    "OverflowAsInfinityDecoder",
    "UnsupportedMediaTypeError",
    "header_values",
    "media_type_of",
    "non_finite_hint",
    "note_scored",
    "require_media_type",
    "score",
    "service_of",
]

JSON = "application/json"
T = TypeVar("T")


class UnsupportedMediaTypeError(HTTPException):
    """A body whose content type (or charset: UTF-8 only) the route does not read: 415, naming what it reads."""

    status_code = 415

    def __init__(self, sent: str, accepted: Sequence[str]) -> None:
        super().__init__(
            detail=f"content type {sent[:100]!r} is not accepted here; send {' or '.join(accepted)}, in UTF-8",
        )
        self.sent = sent[:100]
        self.accepted = tuple(accepted)


def service_of(request: Request[Any, Any, Any]) -> FraudService:
    service: FraudService = request.app.state.service
    return service


async def score(
    service: FraudService,
    selection: Selection,
    rows: bytes | Columns,
    request_id: str,
    *,
    protocol: ProtocolName,
    wants: tuple[str, ...] = (),
) -> ScoredRows:
    """Score a protocol's rows, raw JSON row objects or `Columns`, with the service; with the named outputs in
    `wants` too (`pool.messages.PYFUNC_ANSWER`: what MLflow's pyfunc wrapper of the version returns for them).
    `protocol` names the router, for the observers (the decision log)."""
    if isinstance(rows, bytes):
        return await service.predict(selection, rows, request_id, wants=wants, protocol=protocol)
    return await service.predict_columns(selection, rows, request_id, wants=wants, protocol=protocol)


def media_type_of(request: Request[Any, Any, Any]) -> str:
    """The request's media type, lower case, without parameters; JSON when the client sent none."""
    sent = _content_type(request)
    if not sent:
        return JSON
    return sent.partition(";")[0].strip().lower()


def header_values(request: Request[Any, Any, Any], name: bytes) -> list[str]:
    """Every value of header `name` (lower case), in order, from the raw ASGI headers.

    NOTE: not `request.headers`, which builds a multidict of every header (~5 us a request).
    """
    return [value.decode("latin-1") for sent, value in request.scope["headers"] if sent == name]


def _content_type(request: Request[Any, Any, Any]) -> str:
    values = header_values(request, b"content-type")
    return values[0] if values else ""


def require_media_type(request: Request[Any, Any, Any], accepted: Sequence[str] = (JSON,)) -> str:
    """The request's media type when the route reads it (`application/*+json` counts as JSON) in UTF-8, else 415.

    Every route reads UTF-8 only: a `charset` parameter other than utf-8 is refused, not decoded as UTF-8 anyway.
    """
    sent = _content_type(request)
    media_type = media_type_of(request)
    if JSON in accepted and media_type.startswith("application/") and media_type.endswith("+json"):
        media_type = JSON
    if media_type not in accepted or _charset_of(sent) not in ("utf-8", "utf8"):
        raise UnsupportedMediaTypeError(sent, accepted)
    return media_type


def _charset_of(content_type: str) -> str:
    """The `charset` parameter of a content type, lower case; utf-8 when there is none."""
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return "utf-8"


_Header = tuple[bytes, bytes]


class EncodedAnswer:
    """A 200 answer whose body is already encoded (JSON unless said), as the ASGI app a route handler annotated
    `-> ASGIApp` returns: Litestar passes it through as it is.

    NOTE: Litestar's own answer of a returned Struct (data handler, `Response`, `ASGIResponse`, header and cookie
    merging) was ~40% of the HTTP process's cost of a 1-row /v1/predict (`python -m benchmarks.http_process`).
    Document the body with `responses={200: ResponseSpec(...)}` on the route.
    """

    __slots__ = ("_body", "_headers")

    def __init__(self, body: bytes, media_type: bytes = b"application/json", headers: Sequence[_Header] = ()) -> None:
        self._body = body
        self._headers = [(b"content-type", media_type), *headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [*self._headers, (b"content-length", b"%d" % len(self._body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


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


class OverflowAsInfinityDecoder(Generic[T]):
    """A JSON decoder of `target` that reads a number beyond float64 (`1e999`) as infinity, so that `encode_rows`
    refuses it naming its row and column (msgspec alone refuses it naming only a JSON path)."""

    def __init__(self, target: type[T]) -> None:
        self._decode = msgspec.json.Decoder(target).decode
        self._decode_overflowing = msgspec.json.Decoder(target, float_hook=float).decode

    def decode(self, raw: bytes) -> T:
        try:
            return self._decode(raw)
        except msgspec.ValidationError as error:
            if not str(error).startswith("Number out of range"):
                raise
        # NOTE: float_hook costs a Python call per number (~6x slower): only for the rare body that needs it.
        return self._decode_overflowing(raw)


def non_finite_hint(body: bytes) -> str:
    """What to add to a JSON syntax error when the body holds `NaN` or `Infinity`, which JSON has not but Python's
    `json.dumps` and tritonclient write for non-finite floats; else nothing. Only on the error path."""
    if _NON_FINITE_TOKEN.search(body):
        return "; JSON has no NaN or Infinity: send null for a missing value (an infinite value is refused)"
    return ""


_encode = msgspec.json.encode
_NON_FINITE_TOKEN = re.compile(rb"[\[,:]\s*-?(?:Infinity|NaN)\b")
