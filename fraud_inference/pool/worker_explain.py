"""Explain the rows of the requests of a batch that want it (`messages.EXPLANATION`), in the worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

from fraud_inference.models.explain import explainer_of
from fraud_inference.pool.messages import EXPLANATION, Output, Refused, Score
from fraud_inference.reasons.wire import Explained, encode_explained, received_values

if TYPE_CHECKING:
    from fraud_inference.models.flavors import Scorer

__all__ = ["explanation_output", "wants_explanation"]


def wants_explanation(request: Score) -> bool:
    """Some request of the batch asked for an explanation."""
    return any(EXPLANATION in wants for wants in request.wants)


def explanation_output(
    request: Score,
    outcomes: Sequence[int | Refused],
    batches: Sequence[Any],
    scorer: Scorer,
    log: FilteringBoundLogger,
) -> Output:
    """Each request's `Explained` (msgpack), in batch order: only for the requests that want one, only their rows.

    `outcomes` are the requests' decodings (a row count, or `Refused`) and `batches` the decoded rows of the ones
    not refused, in order. A request whose rows cannot be explained gets an empty part (its answer says so).
    """
    explainer = explainer_of(scorer)
    decoded = iter(batches)
    parts: list[bytes] = []
    for request_id, wants, outcome in zip(request.request_ids, request.wants, outcomes, strict=True):
        batch = None if isinstance(outcome, Refused) else next(decoded)
        if batch is None or explainer is None or EXPLANATION not in wants or explainer.margin is None:
            parts.append(b"")
            continue
        try:
            contributions = explainer.contributions(batch)
            parts.append(encode_explained(Explained(
                margin=explainer.margin, features=contributions.shape[1] - 1, contributions=contributions.tobytes(),
                values=received_values(batch),
            )))  # fmt: skip
        except Exception as error:  # the request is answered without it, the batch's others are not touched
            log.error("explain.failed", request_id=request_id, model=request.model, error=repr(error)[:200])
            parts.append(b"")
    return Output(b"".join(parts), tuple(map(len, parts)))
