"""MAX_BODY_BYTES over gRPC: a request message over it is refused by the service, in its words, and counted, as
REST's 413 is; not by grpcio's own `Received message larger than max`, which no servicer sees.

grpcio is told to take messages up to `receive_ceiling(limit)`, a little more than MAX_BODY_BYTES, and
`add_inference_service` registers OIP's methods so that they receive, in place of a message over the limit, an
`OversizedMessage` (its size, the message never parsed), which `calls.handled` refuses as `MessageTooLargeError`:
RESOURCE_EXHAUSTED, logged and counted under the method. Past the ceiling grpcio still refuses it itself
(RESOURCE_EXHAUSTED, its message, not counted): that bounds the memory one message can take, as MAX_BODY_BYTES
does on REST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from fraud_inference.grpc._generated import open_inference_pb2 as pb

__all__ = ["SERVICE", "MessageTooLargeError", "OversizedMessage", "add_inference_service", "receive_ceiling"]

SERVICE = "inference.GRPCInferenceService"


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


def add_inference_service(server: grpc.aio.Server, servicer: object, limit: int) -> None:
    """Register OIP's methods on `server` as the generated `add_GRPCInferenceServiceServicer_to_server` does (every
    method of the proto's service, its messages as the proto types them), each method given an `OversizedMessage`
    in place of a request message over `limit` bytes (MAX_BODY_BYTES), the message unparsed.

    NOTE: the deserializers are wrapped once here rather than by an interceptor, which grpc.aio awaits on every
    call."""
    service = pb.DESCRIPTOR.services_by_name[SERVICE.rpartition(".")[2]]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_sized(getattr(pb, method.input_type.name).FromString, limit),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _sized(parse: Callable[[bytes], Any], limit: int) -> Callable[[bytes], Any]:
    def read(message: bytes) -> Any:
        # NOTE: len() only: a message over the limit is never parsed.
        return OversizedMessage(len(message), limit) if len(message) > limit else parse(message)

    return read
