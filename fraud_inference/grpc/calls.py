"""Around every gRPC call, what `api/request_id.py` does around every HTTP request: the request id (echoed in the
trailing metadata and bound to every log line the call causes), the core's errors as gRPC status codes, the
metrics by method and status code, and one access-log line (`grpc.request`, protocol=grpc).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import structlog

from fraud_inference.api.error_table import answer_of, oip_message
from fraud_inference.errors import PredictionError
from fraud_inference.grpc.limits import MessageTooLargeError, OversizedMessage
from fraud_inference.observability.logging import get_logger
from fraud_inference.observability.metrics import Metrics
from fraud_inference.oip import OipRequestError

__all__ = ["REQUEST_ID_KEY", "Accounted", "Call", "handled"]

REQUEST_ID_KEY = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:/@+=-]{1,128}")  # as HTTP's X-Request-ID (api/request_id.py)
_DEADLINE_SLACK_S = 0.1
log = get_logger("fraud_inference.access")
Servicer = TypeVar("Servicer", bound="Accounted")
Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Accounted(Protocol):
    """A servicer whose calls are accounted: the metrics, and its series looked up once each."""

    metrics: Metrics
    series: dict[tuple[str, str], Any]


class Call:
    """One call in progress: its request id, and the fields its access-log line gets (model, version, rows)."""

    __slots__ = ("fields", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.fields: dict[str, object] = {}


def _request_id(context: grpc.aio.ServicerContext, request: object) -> str:
    """The client's `x-request-id` metadata when sane, else the request's own `id` when sane, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _SANE.fullmatch(value):
            return value
    sent = getattr(request, "id", "")
    return sent if isinstance(sent, str) and _SANE.fullmatch(sent) else os.urandom(16).hex()


def _deadline_passed(context: Any) -> bool:
    """Whether the call had a deadline (the client's timeout) and it has passed, within `_DEADLINE_SLACK_S`.

    NOTE: the slack, because the client's cancel at its deadline arrives just before the server's copy of that
    deadline passes: the server counts it from when the call's headers arrived, one trip after the client did
    (a client that cancels that close to its deadline is counted as its deadline passing)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= _DEADLINE_SLACK_S


async def _abort(context: Any, code: grpc.StatusCode, details: str, trailer: tuple[tuple[str, str], ...]) -> NoReturn:
    """End the call with `code`, `details` and the trailing metadata (`context.abort` raises AbortError)."""
    await context.abort(code, details, trailer)
    raise AssertionError("context.abort returned")  # unreachable


def handled(
    method: str, *, probe: bool = False
) -> Callable[
    [Callable[[Servicer, Request, Any, Call], Awaitable[Answer]]], Callable[[Servicer, Request, Any], Awaitable[Answer]]
]:
    """Run a servicer method as one accounted call: it takes `(request, context, call)`. A `PredictionError`
    becomes its status code from `error_table.ERRORS`, an `OipRequestError` INVALID_ARGUMENT, anything else
    INTERNAL (logged). Probes (`probe`) are counted but not access-logged, as REST's probes."""

    def wrap(
        handler: Callable[[Servicer, Request, Any, Call], Awaitable[Answer]],
    ) -> Callable[[Servicer, Request, Any], Awaitable[Answer]]:
        @functools.wraps(handler)
        async def run(self: Servicer, request: Request, context: Any) -> Answer:
            started_ns = time.perf_counter_ns()
            call = Call(_request_id(context, request))
            trailer = ((REQUEST_ID_KEY, call.request_id),)
            context.set_trailing_metadata(trailer)
            tokens = structlog.contextvars.bind_contextvars(request_id=call.request_id)
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, OversizedMessage):
                    raise MessageTooLargeError(request)
                return await handler(self, request, context, call)
            except MessageTooLargeError as error:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                await _abort(context, code, str(error), trailer)
            except PredictionError as error:
                code = grpc.StatusCode[answer_of(error).grpc]
                await _abort(context, code, oip_message(error), trailer)
            except OipRequestError as error:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await _abort(context, code, error.message, trailer)
            except asyncio.CancelledError:
                # NOTE: grpcio cancels the call when the client's deadline passes, often just before the servicer's
                # own timeout at the same instant (`servicer._predict`) fires: count that as the deadline, apart
                # from a client that cancelled or went away.
                code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(context) else grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("grpc.unhandled", method=method)
                await _abort(context, code, "Internal Server Error", trailer)
            finally:
                seconds = (time.perf_counter_ns() - started_ns) / 1e9
                counter = self.series.get((method, code.name))
                if counter is None:  # NOTE: labels() costs ~3 us a call: one lookup per series, once
                    counter = self.series[method, code.name] = self.metrics.grpc_requests.labels(method, code.name)
                counter.inc()
                self.metrics.grpc_duration.observe(method, seconds)
                if not probe:
                    log.info("grpc.request", protocol="grpc", method=method, status=code.name,
                             duration_ms=round(seconds * 1000, 3), **call.fields)  # fmt: skip
                structlog.contextvars.reset_contextvars(**tokens)

        return run

    return wrap
