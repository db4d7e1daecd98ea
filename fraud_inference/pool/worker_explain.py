"""Explain the rows of the requests of a batch that want it (`messages.EXPLANATION`), in the worker."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

from fraud_inference.models.explain import explainer_of
from fraud_inference.pool.messages import EXPLANATION, Output, Refused, Score
from fraud_inference.reasons.wire import Explained, encode_explained, received_values

if TYPE_CHECKING:
    from fraud_inference.models.flavors import Scorer

__all__ = ["ExplainLane", "explanation_output", "wants_explanation"]


class ExplainLane:
    """One thread of the worker that scores and explains the batches of explained requests, beside the main
    thread, which goes on scoring plain batches meanwhile; its scheduling priority is lowered by `nice` (0 to 19),
    so TreeSHAP's CPU goes to the HTTP process and to plain scoring first.

    NOTE: explanations cost milliseconds a row (TreeSHAP); on the main thread a plain batch sent to the worker
    waited behind them. The server sends a worker at most one explained batch at a time (`InFlight.can_explain`),
    so the lane never queues. Lowering a priority is one-way for an unprivileged process, hence a thread of its
    own; Linux only (elsewhere `setpriority` would renice the whole process): other systems run it at the
    worker's priority.
    """

    def __init__(self, nice: int, log: FilteringBoundLogger) -> None:
        self.nice = nice
        self._log = log
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="explain", initializer=self._lower)
        self.current: tuple[int, int] = (0, 0)
        """(batch seq, monotonic ns it started) of the batch the lane holds; (0, 0) when idle."""

    def submit(self, request: Score, answer: Callable[[Score], None]) -> None:
        """Run `answer(request)` on the lane; an exception it raises is logged (`answer` sends its own failure)."""
        self._executor.submit(self._run, request, answer)

    def _run(self, request: Score, answer: Callable[[Score], None]) -> None:
        self.current = (request.seq, time.monotonic_ns())
        try:
            answer(request)
        except Exception as error:  # the worker goes on; the batch's requests time out (its answer was not sent)
            self._log.error("explain.lane_failed", seq=request.seq, model=request.model, error=repr(error)[:200])
        finally:
            self.current = (0, 0)

    def _lower(self) -> None:
        if self.nice and sys.platform == "linux":
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
