"""Between OIP's protobuf messages and the transport-free `fraud_inference.oip` types, in both directions.

No decisions here: a request becomes an `InferRequest` (typed `contents` as `data`, or `raw_input_contents` read
by the codec), scored rows become a `ModelInferResponse` through the codec's `output_tensors`, metadata becomes its
message. Refusals are the codec's `OipRequestError`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from fraud_inference.dataplane import ScoredRows
from fraud_inference.grpc._generated import open_inference_pb2 as pb
from fraud_inference.oip import (
    InferRequest,
    ModelMetadata,
    OipRequestError,
    RequestInput,
    RequestOutput,
    output_tensors,
    read_raw_contents,
    response_parameters,
)
from fraud_inference.oip.explain import explanation_parameters, explanation_tensors
from fraud_inference.reasons.explain import ExplainedRows

__all__ = ["infer_request_of", "infer_response_of", "model_metadata_of", "parameters_of"]

CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The field of `InferTensorContents` that holds each datatype's typed values (FP16 has none: raw only)."""


def parameters_of(entries: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A protobuf parameter map as plain values (bool, int, float or str), as REST's JSON gives them."""
    values: dict[str, Any] = {}
    for key, parameter in entries.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _set_parameters(target: MutableMapping[str, pb.InferParameter], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    """A tensor's typed `contents` for its datatype (empty for a datatype OIP does not define: the codec refuses
    it by name). Values in another field of `contents` than the datatype's are refused naming the input, its
    datatype and the field its values go in: read as they are, they would be an empty tensor."""
    field = CONTENTS.get(tensor.datatype)
    sent = [descriptor.name for descriptor, _values in tensor.contents.ListFields()]
    misplaced = next((name for name in sent if name != field), None)
    if misplaced is not None and (field is not None or tensor.datatype == "FP16"):
        where = f"contents.{field}" if field is not None else "raw_input_contents (it has no typed contents field)"
        raise OipRequestError(f"input {tensor.name[:64]!r}: datatype {tensor.datatype} takes its values in {where}, "
                              f"not contents.{misplaced}: send them there, or declare the datatype they are",
                              input_name=tensor.name)  # fmt: skip
    if field is None:
        return []
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        return [value.decode("utf-8", errors="replace") for value in values]
    return list(values)


def infer_request_of(message: pb.ModelInferRequest) -> InferRequest:
    """The request as the codec reads it: each input's values from its typed `contents`, or from its buffer in
    `raw_input_contents` (one per input, in order; then no input may carry typed contents)."""
    raw = list(message.raw_input_contents)
    if raw:
        typed = next((tensor.name for tensor in message.inputs if tensor.HasField("contents")), None)
        if typed is not None:
            raise OipRequestError(f"input {typed[:64]!r} has typed contents beside raw_input_contents: send every "
                                  "input one way", input_name=typed)  # fmt: skip
    infer = InferRequest(
        inputs=[
            RequestInput(
                name=tensor.name,
                shape=list(tensor.shape),
                datatype=tensor.datatype,
                data=None if raw else _typed_values(tensor),
                parameters=parameters_of(tensor.parameters) or None,
            )
            for tensor in message.inputs
        ],
        id=message.id or None,
        parameters=parameters_of(message.parameters) or None,
        outputs=[
            RequestOutput(name=output.name, parameters=parameters_of(output.parameters) or None)
            for output in message.outputs
        ]
        or None,
    )
    return read_raw_contents(infer, raw)


def infer_response_of(
    infer: InferRequest, scored: ScoredRows, request_id: str, *, raw: bool, explained: ExplainedRows | None = None
) -> pb.ModelInferResponse:
    """The answer to `infer`: the outputs it asks for (all when it names none), in `raw_output_contents` when `raw`
    (as MLServer does, when the request came raw: tritonclient's default), else as typed contents. Its `id` is the
    request's, else `request_id`; its parameters are REST's. With `explained`, REST's explanation outputs
    (`contributions`, `base_value`) and parameter (`margin`) follow, from the same tensors."""
    response = pb.ModelInferResponse(
        model_name=scored.selection.key,
        model_version=scored.ref.version,
        id=infer.id if infer.id is not None else request_id,
    )
    parameters = response_parameters(scored)
    tensors = output_tensors(infer, scored)
    if explained is not None:
        parameters |= explanation_parameters(explained)
        tensors += explanation_tensors(explained)
    _set_parameters(response.parameters, parameters)
    for tensor in tensors:
        output = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            response.raw_output_contents.append(tensor.raw())
        else:
            getattr(output.contents, CONTENTS[tensor.datatype]).extend(tensor.values.reshape(-1).tolist())
    return response


def model_metadata_of(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    """The codec's model metadata as its message."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.outputs],
    )
