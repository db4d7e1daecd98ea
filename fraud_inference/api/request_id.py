"""X-Request-ID on every response and in every log line a request causes, and an access-log line per routed request."""

from __future__ import annotations

import os
import re
import time

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from prometheus_client import Counter

from fraud_inference.observability.logging import access_log, get_logger
from fraud_inference.observability.metrics import Metrics

__all__ = ["RequestEdge", "note_for_access_log", "request_id_of"]

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()
# NOTE: what a client's own ids hold (`txn:2026/42`, `card+auth@edge=1`): safe in a header, a JSON log line and a
# Parquet string; anything else (spaces, `;`, quotes, control bytes) is replaced, and that is logged.
_SANE = re.compile(rb"[A-Za-z0-9._:/@+=-]{1,128}")
_REPLACED_LOG_EVERY_NS = 60_000_000_000
_STATE_KEY = "request_id"
_ACCESS_KEY = "access_log"
UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
log = get_logger("fraud_inference.access")


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's when it is sane, else a new one; the same for the whole request."""
    state = scope.setdefault("state", {})
    request_id: str | None = state.get(_STATE_KEY)
    if request_id is None:
        sent = next((value for name, value in scope.get("headers", ()) if name == _HEADER_BYTES), None)
        if sent is not None and _SANE.fullmatch(sent):
            request_id = sent.decode()
        else:
            request_id = os.urandom(16).hex()
            if sent is not None:
                _log_replaced(sent, request_id)
        state[_STATE_KEY] = request_id
    return request_id


_replaced = {"logged_ns": -_REPLACED_LOG_EVERY_NS, "suppressed": 0}


def _log_replaced(sent: bytes, request_id: str) -> None:
    """Say that a client's X-Request-ID was replaced (a join key it may rely on), once a minute per process at
    most: a client sending bad ids at every request must not flood the log."""
    now = time.monotonic_ns()
    if now - _replaced["logged_ns"] < _REPLACED_LOG_EVERY_NS:
        _replaced["suppressed"] += 1
        return
    log.warning(
        "request_id.replaced", sent=repr(sent[:160])[2:-1], request_id=request_id,
        allowed="1 to 128 of A-Z a-z 0-9 . _ : / @ + = -", suppressed=_replaced["suppressed"],
    )  # fmt: skip
    _replaced["logged_ns"], _replaced["suppressed"] = now, 0


def note_for_access_log(scope: Scope, **fields: object) -> None:
    """Add fields (model, version, generation, rows) to this request's access-log line."""
    scope.setdefault("state", {}).setdefault(_ACCESS_KEY, {}).update(fields)


class RequestEdge:
    """The outermost ASGI layer: the request id, the X-Request-ID header, the HTTP metrics and the access-log line.

    Plain ASGI around Litestar's own handler (routing, exception handlers, CORS), so every answer, 404s and 405s
    included, gets the request id and a count, for one function call per request and one per message sent. The
    access log has a line for each request that matched a route (not for 404s and 405s of unknown paths).
    NOTE: not a Litestar middleware and `before_send` hook: those cost ~60 us per request on the hot path here
    (a wrapped `send` per layer, a hook call per message; py-spy of the HTTP process, `benchmarks/`).
    Requests that matched no route are counted under one route label, and methods outside HTTP's own under one
    method label, so clients cannot grow the number of series.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics
        self._requests: dict[tuple[str, str, int], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        started_ns = time.perf_counter_ns()
        request_id = request_id_of(scope)
        header = (_HEADER_BYTES, request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        in_flight = self._metrics.http_in_flight
        in_flight.inc()
        try:
            await self._app(scope, receive, send_with_id)
        finally:
            in_flight.dec()
            self._account(scope, status, time.perf_counter_ns() - started_ns)
            structlog.contextvars.reset_contextvars(**tokens)

    def _account(self, scope: HTTPScope, status: int, duration_ns: int) -> None:
        handler = scope.get("route_handler")
        route = scope.get("path_template", scope["path"]) if handler is not None else UNMATCHED_ROUTE
        method = scope["method"] if scope["method"] in _METHODS else "other"
        key = (method, route, status)
        counter = self._requests.get(key)
        if counter is None:  # NOTE: prometheus-client's labels() costs ~3 us a call: one lookup per series, once
            counter = self._requests[key] = self._metrics.http_requests.labels(method, route, str(status))
        counter.inc()
        if handler is None:
            return
        seconds = duration_ns / 1e9
        self._metrics.http_duration.observe(route, seconds)
        if not handler.opt.get("skip_access_log"):
            fields = {"method": method, "route": route, "status": status, "duration_ms": round(seconds * 1000, 3)}
            fields.update(scope.get("state", {}).get(_ACCESS_KEY, {}))
            access_log().line(fields)
