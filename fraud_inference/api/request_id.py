"""X-Request-ID: echo a sane one from the client, else make one; on every response; bound into logs."""

from __future__ import annotations

import re
import uuid

import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware", "add_request_id_header", "request_id_of"]

HEADER = "x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_STATE_KEY = "request_id"


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's when it is sane, else a new one; the same for the whole request."""
    state = scope.setdefault("state", {})
    request_id: str | None = state.get(_STATE_KEY)
    if request_id is None:
        sent = next((value for name, value in scope.get("headers", ()) if name == HEADER.encode()), None)
        request_id = sent.decode() if sent is not None and _SANE.fullmatch(sent) else uuid.uuid4().hex
        state[_STATE_KEY] = request_id
    return request_id


class RequestIdMiddleware(ASGIMiddleware):
    """Bind the request id into structlog's context for everything the request causes."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request_id_of(scope)):
            await next_app(scope, receive, send)


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """A `before_send` hook: it also runs for 404s and errors raised before any route matched."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)[HEADER] = request_id_of(scope)
