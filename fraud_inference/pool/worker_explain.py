"""Explain the rows of the requests of a batch that want it (`messages.EXPLANATION`), in the worker."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from structlog.typing import FilteringBoundLogger

from fraud_inference.models.explain import explainer_of
from fraud_inference.pool.messages import EXPLANATION, Output, Refused, Score
from fraud_inference.reasons.wire import Explained, encode_explained, received_values

if TYPE_CHECKING:
    from fraud_inference.models.flavors import Scorer

__all__ = ["LowPriority", "explanation_output", "wants_explanation"]

_T = TypeVar("_T")


class LowPriority:
    """Run calls on one thread of this process whose scheduling priority is lowered by `nice` (0 to 19): TreeSHAP's
    CPU then goes to the HTTP process and to plain scoring first, and explanations take what they leave.

    The caller blocks until the call returns (the worker scores one batch at a time either way); only the thread's
    priority differs. Lowering is one-way for an unprivileged process, hence a thread of its own. `nice` 0 runs
    calls on the caller's thread. Linux only (elsewhere `setpriority` would renice the whole process): other
    systems run them at the caller's priority.
    """

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._executor: ThreadPoolExecutor | None = None

    def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)`, on the low-priority thread; raises what it raises."""
        if self.nice == 0 or sys.platform != "linux":
            return function(*args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="explain", initializer=self._lower)
        return self._executor.submit(function, *args).result()

    def _lower(self) -> None:
        # On Linux PRIO_PROCESS with a thread id sets that thread's nice value alone (setpriority(2), NOTES).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)


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
