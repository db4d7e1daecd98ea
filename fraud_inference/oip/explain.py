"""OIP answers with explanations: `parameters: {"explain": K}` adds each row's contributions and base value."""

from __future__ import annotations

import msgspec

from fraud_inference.oip.types import InferRequest, InferResponse, ResponseOutput
from fraud_inference.reasons.explain import ExplainedRows

__all__ = ["EXPLAIN_OUTPUTS", "explain_of", "plain_outputs", "with_explanation"]

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


def with_explanation(answer: InferResponse, explained: ExplainedRows) -> InferResponse:
    """`answer` with the outputs `contributions` and `base_value` (as JSON data, whatever binary the request asked)
    and the parameter `margin` (`log_odds`)."""
    matrix = explained.explained.matrix()
    rows, features = matrix.shape[0], matrix.shape[1] - 1
    outputs = [
        *answer.outputs,
        ResponseOutput(name="contributions", datatype="FP64", shape=[rows, features],
                       data=matrix[:, :-1].reshape(-1).tolist()),
        ResponseOutput(name="base_value", datatype="FP64", shape=[rows], data=matrix[:, -1].tolist()),
    ]  # fmt: skip
    parameters = {**(answer.parameters or {}), "margin": explained.margin}
    return msgspec.structs.replace(answer, outputs=outputs, parameters=parameters)
