"""The Open Inference Protocol V2's messages, as msgspec structs: what a request and an answer hold, whatever the
transport (REST's JSON decodes straight into them; a gRPC servicer fills them from its protobuf messages)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
]


class ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct, kw_only=True):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(msgspec.Struct, kw_only=True):
    """One input tensor: its values row-major in `data` (flat or nested), or in the binary part of the body."""

    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: dict[str, Any] | None = None


class RequestOutput(msgspec.Struct, kw_only=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, kw_only=True):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    """FP64 probabilities or BOOL flags, one per row."""
    parameters: dict[str, Any] | None = None


class InferResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: str
    model_version: str
    id: str
    outputs: list[ResponseOutput]
    parameters: dict[str, Any] | None = None
