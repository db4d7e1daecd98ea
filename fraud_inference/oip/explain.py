"""OIP answers with explanations: `parameters: {"explain": K}` adds each row's contributions and base value."""

from __future__ import annotations

import msgspec
import numpy as np

from fraud_inference.oip.codec import OutputTensor
from fraud_inference.oip.types import InferRequest, InferResponse, ResponseOutput
from fraud_inference.reasons.explain import ExplainedRows

__all__ = [
    "EXPLAIN_OUTPUTS",
    "explain_of",
    "explanation_parameters",
    "explanation_tensors",
    "plain_outputs",
    "with_explanation",
]

EXPLAIN_OUTPUTS = ("contributions", "base_value")
"""The outputs an explained answer adds: FP64 `[rows, features]` in signature order, and FP64 `[rows]`."""


def explain_of(infer: InferRequest) -> object:
    """The request's `explain` parameter (None when it asks for no explanation), checked by the core."""
    return (infer.parameters or {}).get("explain")


def plain_outputs(infer: InferRequest) -> InferRequest:
    """`infer` without the explanation outputs among those it names: they are added to the answer, not scored."""
    if not infer.outputs:
        return infer
    return msgspec.structs.replace(infer, outputs=[o for o in infer.outputs if o.name not in EXPLAIN_OUTPUTS])


def explanation_tensors(explained: ExplainedRows) -> list[OutputTensor]:
    """The outputs an explanation adds, in answer order: `contributions` FP64 `[rows, features]` (signature order)
    and `base_value` FP64 `[rows]`; REST and gRPC render these same tensors."""
    matrix = explained.explained.matrix()
    return [
        OutputTensor("contributions", "FP64", np.ascontiguousarray(matrix[:, :-1]), binary=False),
        OutputTensor("base_value", "FP64", np.ascontiguousarray(matrix[:, -1]), binary=False),
    ]


def explanation_parameters(explained: ExplainedRows) -> dict[str, str]:
    """The parameter an explained answer adds: `margin`, the contributions' space (`log_odds`)."""
    return {"margin": explained.margin}


def with_explanation(answer: InferResponse, explained: ExplainedRows) -> InferResponse:
    """`answer` with the outputs `contributions` and `base_value` (as JSON data, whatever binary the request asked)
    and the parameter `margin` (`log_odds`)."""
    outputs = [
        *answer.outputs,
        *(ResponseOutput(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape,
                         data=tensor.values.reshape(-1).tolist()) for tensor in explanation_tensors(explained)),
    ]  # fmt: skip
    parameters = {**(answer.parameters or {}), **explanation_parameters(explained)}
    return msgspec.structs.replace(answer, outputs=outputs, parameters=parameters)
