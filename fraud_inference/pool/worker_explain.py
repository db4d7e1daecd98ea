"""Explain the rows of the requests of a batch that want it (`messages.EXPLANATION`), in the worker."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from structlog.typing import FilteringBoundLogger

from fraud_inference.models.explain import explainer_of
from fraud_inference.pool.messages import EXPLANATION, Output, Refused, Score
from fraud_inference.reasons.wire import Explained, encode_explained, received_values

if TYPE_CHECKING:
    from fraud_inference.models.flavors import Scorer

__all__ = ["ExplainLane", "LowPriority", "explanation_output", "wants_explanation"]

_T = TypeVar("_T")


class ExplainLane:
    """One thread of the worker that scores and explains the batches of explained requests, beside the main
    thread, which goes on scoring plain batches meanwhile.

    NOTE: explanations cost milliseconds a row (TreeSHAP); on the main thread a plain batch sent to the worker
    waited behind them. The server sends a worker at most one explained batch at a time (`InFlight.can_explain`),
    so the lane never queues. The lane runs at the worker's priority: only TreeSHAP runs at EXPLAIN_NICE
    (`LowPriority`). Decoding a batch holds the GIL for its whole call; at nice 19 with every core busy, a
    20,000-row batch held it for seconds, and the worker's main and heartbeat threads waited on it: the worker
    went silent past 5 s and was replaced, with the plain batches it held.
    """

    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="explain-lane")
        self.current: tuple[int, int] = (0, 0)
        """(batch seq, monotonic ns it started) of the batch the lane holds; (0, 0) when idle."""

    def submit(self, request: Score, answer: Callable[[Score], None]) -> None:
        """Run `answer(request)` on the lane; an exception it raises is logged (`answer` sends its own failure)."""
        self._executor.submit(self._run, request, answer)

    def _run(self, request: Score, answer: Callable[[Score], None]) -> None:
        self.current = (request.seq, time.monotonic_ns())
        try:
            answer(request)
        except Exception as error:  # `answer` answers its own failures: this is a fault past that; the worker goes on
            self._log.error("explain.lane_failed", seq=request.seq, model=request.model, error=repr(error)[:200])
        finally:
            self.current = (0, 0)


class LowPriority:
    """Run calls on one thread of this process whose scheduling priority is lowered by `nice` (0 to 19): TreeSHAP's
    CPU then goes to the HTTP process and to plain scoring first, and explanations take what they leave.

    The caller blocks until the call returns; only the thread's priority differs. Lowering is one-way for an
    unprivileged process, hence a thread of its own. `nice` 0 runs calls on the caller's thread. Linux only
    (elsewhere `setpriority` would renice the whole process): other systems run them at the caller's priority.
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
