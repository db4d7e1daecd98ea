"""MAX_BODY_BYTES over gRPC: a request message over it is refused by the service, in its words, and counted, as
REST's 413 is; not by grpcio's own `Received message larger than max`, which no servicer sees.

grpcio is told to take messages up to `receive_ceiling(limit)`, a little more than MAX_BODY_BYTES, and
`MessageSizeLimit` hands OIP's methods, in place of a message over the limit, an `OversizedMessage` (its size,
the message never parsed), which `calls.handled` refuses as `MessageTooLargeError`: RESOURCE_EXHAUSTED, logged
and counted under the method. Past the ceiling grpcio still refuses it itself (RESOURCE_EXHAUSTED, its message,
not counted): that bounds the memory one message can take, as MAX_BODY_BYTES does on REST.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import grpc

__all__ = ["MessageSizeLimit", "MessageTooLargeError", "OversizedMessage", "receive_ceiling"]

_SERVICE_PREFIX = "/inference.GRPCInferenceService/"


def receive_ceiling(limit: int) -> int:
    """The largest message grpcio reads for the service to refuse itself: twice MAX_BODY_BYTES (`limit`, bytes),
    and at least 1 MiB more, so that a client a little over the limit reads the service's refusal."""
    return min(max(2 * limit, limit + 1024 * 1024), 2**31 - 1)  # grpcio takes a C int


class OversizedMessage(NamedTuple):
    """What a servicer method receives instead of a request message over MAX_BODY_BYTES."""

    size: int
    """The message's size on the wire (decompressed), in bytes."""
    limit: int
    """MAX_BODY_BYTES."""


class MessageTooLargeError(Exception):
    """A request message over MAX_BODY_BYTES: RESOURCE_EXHAUSTED, as REST's 413 for a body over it."""

    def __init__(self, message: OversizedMessage) -> None:
        super().__init__(f"the request message is over MAX_BODY_BYTES ({message.limit} bytes): it holds "
                         f"{message.size} bytes; send fewer rows per call")  # fmt: skip


class MessageSizeLimit(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Give OIP's methods an `OversizedMessage` for a request message over `limit` bytes (MAX_BODY_BYTES), not the
    parsed message; other services' methods (health) pass untouched. One wrapped handler per method, kept."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._handlers: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_SERVICE_PREFIX) or handler.request_deserializer is None:
            return handler
        wrapped = self._handlers[method] = handler._replace(
            request_deserializer=self._sized(handler.request_deserializer)
        )
        return wrapped

    def _sized(self, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        limit = self._limit

        def read(message: bytes) -> Any:
            # NOTE: len() only: a message over the limit is never parsed.
            return OversizedMessage(len(message), limit) if len(message) > limit else parse(message)

        return read
