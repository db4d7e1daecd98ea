"""X-Request-ID on every response and in every log line a request causes, and one access-log line per request."""

from __future__ import annotations

import re
import time
import uuid
from typing import cast

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from fraud_inference.observability.logging import get_logger
from fraud_inference.observability.metrics import Metrics

__all__ = ["RequestIdMiddleware", "add_request_id_header", "note_for_access_log", "request_id_of"]

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()
_SANE = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_STATE_KEY = "request_id"
_ACCESS_KEY = "access_log"
UNMATCHED_ROUTE = "<unmatched>"
log = get_logger("fraud_inference.access")


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's when it is sane, else a new one; the same for the whole request."""
    state = scope.setdefault("state", {})
    request_id: str | None = state.get(_STATE_KEY)
    if request_id is None:
        sent = next((value for name, value in scope.get("headers", ()) if name == _HEADER_BYTES), None)
        request_id = sent.decode() if sent is not None and _SANE.fullmatch(sent) else uuid.uuid4().hex
        state[_STATE_KEY] = request_id
    return request_id


def note_for_access_log(scope: Scope, **fields: object) -> None:
    """Add fields (model, version, generation, rows) to this request's access-log line."""
    scope.setdefault("state", {}).setdefault(_ACCESS_KEY, {}).update(fields)


class RequestIdMiddleware(ASGIMiddleware):
    """Bind the request id into structlog's context for everything the request causes; log one line per request."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics: Metrics = scope["app"].state.metrics
        method = cast("HTTPScope", scope)["method"]
        route = scope.get("path_template", scope["path"])
        metrics.http_in_flight.inc()
        with structlog.contextvars.bound_contextvars(request_id=request_id_of(scope)):
            try:
                await next_app(scope, receive, send_and_watch)
            finally:
                seconds = time.perf_counter() - started
                metrics.http_in_flight.dec()
                metrics.http_requests.labels(method, route, str(status)).inc()
                metrics.http_duration.labels(route).observe(seconds)
                if not scope["route_handler"].opt.get("skip_access_log"):
                    log.info(
                        "http.request",
                        method=method,
                        route=route,
                        status=status,
                        duration_ms=round(seconds * 1000, 3),
                        **scope.get("state", {}).get(_ACCESS_KEY, {}),
                    )


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """A `before_send` hook: it also runs for 404s and errors raised before any route matched.

    Requests that matched no route never reach the middleware: they are counted here, under one route label,
    so random paths cannot grow the number of series.
    """
    if message["type"] == "http.response.start":
        # Appended as raw bytes: Litestar's MutableScopeHeaders rescans every header per response.
        message["headers"] = [*message.get("headers", ()), (_HEADER_BYTES, request_id_of(scope).encode())]
        if "route_handler" not in scope and scope["type"] == "http":
            metrics: Metrics = scope["app"].state.metrics
            metrics.http_requests.labels(
                cast("HTTPScope", scope)["method"], UNMATCHED_ROUTE, str(message["status"])
            ).inc()
