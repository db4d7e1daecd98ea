"""Score rows and explain them: the one seam through which every protocol asks for reasons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fraud_inference.errors import InferenceFailedError, InvalidExplainError, NotExplainableError
from fraud_inference.models.explain import explain_refusal
from fraud_inference.pool.messages import EXPLANATION
from fraud_inference.reasons.codes import reason_codes
from fraud_inference.reasons.ranking import RowReasons, top_reasons
from fraud_inference.reasons.wire import Explained, decode_explained

if TYPE_CHECKING:
    from fraud_inference.dataplane import DataPlane, ScoredRows, Selection
    from fraud_inference.observers import ProtocolName
    from fraud_inference.pool import Columns

__all__ = ["ExplainedRows", "explain_rows", "reason_count"]


class ExplainedRows(msgspec.Struct, frozen=True):
    """Scored rows with their explanation: the contributions' space (`log_odds`), every contribution
    (`explained`, for tensors), and each row's top reasons."""

    scored: ScoredRows
    margin: str
    explained: Explained
    rows: list[RowReasons]


def reason_count(explain: Any, selection: Selection) -> int:
    """`explain` as the number of reasons per row: a whole number from 1 to the model's feature count.

    Raises `InvalidExplainError` naming `explain`, what it got and the bounds; `NotExplainableError` when the
    model cannot be explained (after the count is checked: a bad request is a bad request on every model).
    """
    features = len(selection.artifact.features)
    if isinstance(explain, float) and explain.is_integer():
        explain = int(explain)  # JSON does not tell 3 from 3.0, nor do integer features here (MLflow's rule)
    if isinstance(explain, bool) or not isinstance(explain, int) or not 1 <= explain <= features:
        raise InvalidExplainError(
            f"explain: the number of reasons per prediction, a whole number from 1 to {features} (the features of "
            f"model {selection.key!r}); got {_as_sent(explain)}"[:300]
        )
    at_load = selection.generation.explain_refusals.get(selection.key)
    refusal = explain_refusal(selection.artifact, at_load=at_load)
    if refusal is not None:
        raise NotExplainableError(f"model {selection.key!r}: {refusal}")
    return explain


def _as_sent(explain: Any) -> str:
    """`explain` written as JSON, as a client sent it (`true`, `"3"`, `1e999`), not as Python prints it."""
    if isinstance(explain, msgspec.Raw):
        return bytes(explain).decode(errors="replace")
    try:
        return msgspec.json.encode(explain).decode()
    except (TypeError, msgspec.EncodeError):  # a value from a protocol that is not JSON (gRPC parameters)
        return repr(explain)


async def explain_rows(
    dataplane: DataPlane,
    model: str | Selection | None,
    rows: bytes | Columns,
    request_id: str,
    explain: Any,
    *,
    protocol: ProtocolName,
) -> ExplainedRows:
    """Score `rows` with `model` (a key, or a `Selection` made earlier) and explain each with its `explain` top
    reasons. Raises the `DataPlane.predict` errors, `InvalidExplainError` and `NotExplainableError`.

    The rows go to the pool with the named output `EXPLANATION`, so they are batched apart from plain requests.
    """
    selection = model if not isinstance(model, (str, type(None))) else dataplane.select(model)
    k = reason_count(explain, selection)
    scored = await dataplane.predict(selection, rows, request_id, protocol=protocol, wants=(EXPLANATION,))
    raw = scored.outputs.get(EXPLANATION)
    if not raw:
        raise InferenceFailedError(f"model {selection.key!r} could not explain these rows (log: explain.failed)")
    explained = decode_explained(raw)
    ref = selection.artifact.ref
    features = selection.artifact.features
    codes = reason_codes(ref.reason_codes, tuple(f.name for f in features), f"{ref.name} v{ref.version}")
    return ExplainedRows(scored, explained.margin, explained, top_reasons(explained, features, k, codes))
