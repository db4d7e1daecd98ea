"""Between the Open Inference Protocol's messages and the core: an inference request's tensors (JSON `data`,
Triton's binary tensor extension, gRPC's `raw_input_contents`) as the rows the core scores, and scored rows as
the outputs `fraud_probability` (FP64) and `is_fraud` (BOOL), binary when asked.

No transport here: a refusal is an `OipRequestError` naming the input, or the core's `InvalidRowsError` (no rows,
or an infinite value at its row), which each transport renders its own way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy.typing as npt

from fraud_inference.dataplane import ScoredRows, Selection
from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature import ExtraFeatures
from fraud_inference.models.signature_errors import ErrorDetail
from fraud_inference.oip.errors import OipRequestError
from fraud_inference.oip.tensors import DATATYPES, check_datatype, from_raw, to_raw, values_of
from fraud_inference.oip.types import InferRequest, InferResponse, ModelMetadata, ResponseOutput, TensorMetadata
from fraud_inference.pool.messages import Columns
from fraud_inference.rows import columns_body, refuse_empty

__all__ = [
    "OUTPUTS",
    "OutputTensor",
    "columns_of",
    "infer_response",
    "metadata_of",
    "output_tensors",
    "read_binary_extension",
    "read_raw_contents",
    "response_parameters",
]

OUTPUTS = {"fraud_probability": "FP64", "is_fraud": "BOOL"}
"""Each output of every model, with its datatype, in answer order."""


# -- requests --------------------------------------------------------------------------------------


def read_binary_extension(infer: InferRequest, binary: bytes) -> InferRequest:
    """Check every input's datatype and fill the `data` of those whose `binary_data_size` parameter says they sit
    in `binary` (Triton's binary tensor extension: the bytes after the JSON part, one input after another)."""
    offset = 0
    for tensor in infer.inputs:
        check_datatype(tensor)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise OipRequestError(f"input {tensor.name[:64]!r}: binary_data_size does not fit the body's binary part",
                                  input_name=tensor.name)  # fmt: skip
        tensor.data = from_raw(tensor, binary[offset : offset + size])
        offset += size
    return infer


def read_raw_contents(infer: InferRequest, raw_contents: Sequence[bytes]) -> InferRequest:
    """Check every input's datatype and, when `raw_contents` is not empty (gRPC's `raw_input_contents`: one buffer
    per input, in order, in the binary form of Triton's extension), fill each input's `data` from its buffer."""
    if raw_contents and len(raw_contents) != len(infer.inputs):
        raise OipRequestError(f"raw_input_contents holds {len(raw_contents)} buffers for {len(infer.inputs)} "
                              "inputs: send one per input, in order, or typed contents only")  # fmt: skip
    for index, tensor in enumerate(infer.inputs):
        check_datatype(tensor)
        if raw_contents:
            tensor.data = from_raw(tensor, raw_contents[index])
    return infer


def columns_of(
    infer: InferRequest, features: Sequence[FeatureSpec], *, detail: ErrorDetail, extra: ExtraFeatures = "reject"
) -> bytes | Columns:
    """The request's rows as the core takes them (`Columns`, one per feature), from one tensor per feature
    (shape `[n]` or `[n, 1]`) or one `[n, features]` tensor in the signature's order. Each input is checked here
    against the signature's names (a required one missing, or one the model does not take under
    EXTRA_FEATURES=reject, refused naming the input; under `ignore` dropped); types by the worker."""
    names = [feature.name for feature in features]
    if not infer.inputs:
        raise OipRequestError("inputs is empty: send one tensor per feature, or one [n, features] tensor")
    if len(infer.inputs) == 1 and infer.inputs[0].name not in names and len(infer.inputs[0].shape) == 2:
        columns = _matrix_columns(infer, names)
    else:
        columns = _feature_columns(infer)
    if not next(iter(columns.values())):
        raise refuse_empty(f"input {infer.inputs[0].name[:64]!r}")
    _check_names(columns, features, detail=detail, extra=extra)
    for feature in features:
        if feature.type == "boolean" and feature.name in columns:
            columns[feature.name] = _as_booleans(columns[feature.name])
    return columns_body(columns, detail=detail)


def _matrix_columns(infer: InferRequest, names: list[str]) -> dict[str, list[Any]]:
    """One `[n, features]` tensor's columns, in the signature's order."""
    tensor = infer.inputs[0]
    width = tensor.shape[1]
    if width != len(names):
        raise OipRequestError(f"input {tensor.name[:64]!r}: shape {tensor.shape} needs {len(names)} columns, "
                              f"one per feature in signature order: {', '.join(names)}",
                              input_name=tensor.name)  # fmt: skip
    values = values_of(tensor)
    return {name: values[index::width] for index, name in enumerate(names)}


def _feature_columns(infer: InferRequest) -> dict[str, list[Any]]:
    """One tensor per feature, each a column, all as long."""
    columns: dict[str, list[Any]] = {}
    for tensor in infer.inputs:
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise OipRequestError(f"input {tensor.name[:64]!r}: shape {tensor.shape}: send one tensor per feature "
                                  "of shape [n] or [n, 1], or one [n, features] tensor in signature order",
                                  input_name=tensor.name)  # fmt: skip
        if tensor.name in columns:
            raise OipRequestError(f"input {tensor.name[:64]!r} is sent more than once: send one tensor per feature",
                                  input_name=tensor.name)  # fmt: skip
        columns[tensor.name] = values_of(tensor)
    counts = {name: len(values) for name, values in columns.items()}
    first = infer.inputs[0].name
    other = next((name for name, count in counts.items() if count != counts[first]), None)
    if other is not None:
        raise OipRequestError(f"input {other[:64]!r} holds {counts[other]} values and input {first[:64]!r} "
                              f"{counts[first]}: every input tensor must hold one value per row",
                              input_name=other)  # fmt: skip
    return columns


def _check_names(
    columns: dict[str, list[Any]], features: Sequence[FeatureSpec], *, detail: ErrorDetail, extra: ExtraFeatures
) -> None:
    """Refuse an input the model does not take (or drop it, under EXTRA_FEATURES=ignore) and a required one left
    out, in OIP's words: `input 'x', row 0: ...` (the first row lacking it), as the core words a value's problem.

    NOTE: checked here, not left to the worker, whose refusal speaks of JSON objects and fields (`Object missing
    required field`): REST's /v2 and gRPC share this one wording. ERROR_DETAIL=generic names no feature the
    client did not send itself."""
    expected = {feature.name for feature in features}
    hint = (f"the model's inputs are: {', '.join(feature.name for feature in features)}" if detail == "full"
            else "send one tensor per input of the model's metadata")  # fmt: skip
    unknown = [name for name in columns if name not in expected]
    if unknown and extra == "reject":
        name = unknown[0]
        raise OipRequestError(f"input {name[:64]!r}, row 0: not an input of this model; {hint}",
                              input_name=name, row=0)  # fmt: skip
    for name in unknown:
        del columns[name]
    missing = next((feature.name for feature in features if feature.required and feature.name not in columns), None)
    if missing is not None:
        if detail == "generic":
            raise OipRequestError(f"row 0: an input the model needs is missing; {hint}", row=0)
        raise OipRequestError(f"input {missing!r}, row 0: missing: every row needs a value for this input; {hint}",
                              input_name=missing, row=0)  # fmt: skip
    if not columns:  # only inputs the model ignores, and none it requires
        raise OipRequestError(f"no input of this model was sent; {hint}")


def _as_booleans(values: list[Any]) -> list[Any]:
    """A boolean feature sent in a numeric tensor (0/1) as the booleans the signature asks for."""
    return [bool(v) if v in (0, 1) and not isinstance(v, bool) else v for v in values]


# -- answers ---------------------------------------------------------------------------------------


class OutputTensor(NamedTuple):
    """One output of an answer: its values, one per row, and whether the request asked for them as binary."""

    name: str
    datatype: str
    values: npt.NDArray[Any]
    binary: bool
    """Asked for as binary: the output's `binary_data` parameter, else the request's `binary_data_output`."""

    def raw(self) -> bytes:
        """The values in binary form (Triton's binary tensor extension, gRPC's `raw_output_contents`)."""
        return to_raw(self.values, self.datatype)

    @property
    def shape(self) -> list[int]:
        """The tensor's shape: `[rows]`, or `[rows, features]` for contributions."""
        return list(self.values.shape)


def output_tensors(infer: InferRequest, scored: ScoredRows) -> list[OutputTensor]:
    """The outputs the request asks for (all when it names none), in answer order; an unknown name is refused."""
    requested = {output.name: output for output in infer.outputs or ()}
    unknown = [name for name in requested if name not in OUTPUTS]
    if unknown:
        raise OipRequestError(f"unknown output {unknown[0][:64]!r}; this model's outputs are {', '.join(OUTPUTS)}")
    values = {"fraud_probability": scored.probabilities, "is_fraud": scored.flagged}
    binary_default = bool((infer.parameters or {}).get("binary_data_output", False))
    tensors = []
    for name, datatype in OUTPUTS.items():
        if requested and name not in requested:
            continue
        output = requested.get(name)
        binary = bool((output.parameters or {}).get("binary_data", binary_default)) if output else binary_default
        tensors.append(OutputTensor(name, datatype, values[name], binary))
    return tensors


def response_parameters(scored: ScoredRows) -> dict[str, Any]:
    """What decided the answer: the threshold, the generation, the registered model and how its version was chosen."""
    ref = scored.ref
    return {"threshold": ref.threshold, "generation": scored.selection.generation.number,
            "registered_model": ref.name, "selected_by": ref.selected_by}  # fmt: skip


def infer_response(infer: InferRequest, scored: ScoredRows, request_id: str) -> tuple[InferResponse, list[bytes]]:
    """The answer to `infer`, and the binary outputs' bytes in answer order (each output's `binary_data_size`
    parameter gives its length; their data stays out of the answer). Its `id` is the request's, else
    `request_id`."""
    outputs: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for tensor in output_tensors(infer, scored):
        shape = tensor.shape
        if tensor.binary:
            blob = tensor.raw()
            blobs.append(blob)
            outputs.append(ResponseOutput(name=tensor.name, datatype=tensor.datatype, shape=shape,
                                          parameters={"binary_data_size": len(blob)}))  # fmt: skip
        else:
            outputs.append(ResponseOutput(name=tensor.name, datatype=tensor.datatype, shape=shape,
                                          data=tensor.values.tolist()))  # fmt: skip
    answer = InferResponse(
        model_name=scored.selection.key,
        model_version=scored.ref.version,
        id=infer.id if infer.id is not None else request_id,
        outputs=outputs,
        parameters=response_parameters(scored),
    )
    return answer, blobs


# -- metadata --------------------------------------------------------------------------------------


def metadata_of(selection: Selection) -> ModelMetadata:
    """Name, served version, flavour, one input tensor per feature (typed from the signature), the two outputs."""
    artifact = selection.artifact
    return ModelMetadata(
        name=selection.key,
        versions=[artifact.ref.version],
        platform=artifact.flavor,
        inputs=[TensorMetadata(f.name, DATATYPES.get(f.type, "BYTES"), [-1]) for f in artifact.features],
        outputs=[TensorMetadata(name, datatype, [-1]) for name, datatype in OUTPUTS.items()],
    )
