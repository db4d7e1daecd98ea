"""/v1's rendering of explained rows: each prediction's base value and reasons, and the answer's margin space."""

from __future__ import annotations

import msgspec

from fraud_inference.api.schemas import Prediction, PredictResponse
from fraud_inference.reasons.explain import ExplainedRows

__all__ = ["with_reasons"]


def with_reasons(answer: PredictResponse, explained: ExplainedRows) -> PredictResponse:
    """`answer` with `base_value` and `reasons` on each prediction (request order) and `margin` on the answer."""
    predictions = [
        Prediction(p.fraud_probability, p.is_fraud, base_value=row.base_value, reasons=row.reasons)
        for p, row in zip(answer.predictions, explained.rows, strict=True)
    ]
    return msgspec.structs.replace(answer, predictions=predictions, margin=explained.margin)
