"""Requests waiting for a worker, and the batches they are coalesced into (adaptive micro-batching).

A request is sent at once when a worker has room; while every worker is busy, requests for the same model
and generation pile up here and leave together as one batch, so the batch size follows the load: one
request when idle, dozens under a burst. Batches never mix models or generations.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator

import msgspec
import numpy as np
import numpy.typing as npt

from fraud_inference.pool.errors import PoolOverloadedError
from fraud_inference.pool.messages import EXPLANATION, FRAUD_PROBABILITY, Columns

__all__ = ["Batch", "BatchPolicy", "PendingRequest", "RequestQueue", "Scores"]


def overload_reason(waiting: int) -> str:
    return f"{waiting} requests are already waiting for a worker (QUEUE_LIMIT)"


class BatchPolicy(msgspec.Struct, frozen=True):
    """How requests are coalesced: at most `max_requests` and `max_bytes` of request bodies per batch
    (the first request always goes, whatever its size), and how long a request may wait for company
    (`wait_ns`, integer nanoseconds: a float clock loses the last microseconds once it has run for hours)."""

    max_requests: int = 64
    max_bytes: int = 512 * 1024
    wait_ns: int = 0


class Scores(msgspec.Struct, frozen=True):
    """A request's named outputs (`FRAUD_PROBABILITY` and those it wanted), and how long its worker took for the
    batch it was in."""

    outputs: dict[str, bytes]
    seconds: float

    @property
    def probabilities(self) -> npt.NDArray[np.float64]:
        """The fraud probability of each row, in row order."""
        return np.frombuffer(self.outputs[FRAUD_PROBABILITY], dtype=np.float64)


class PendingRequest:
    """One request's rows (raw JSON, or `Columns`) on its way to a worker, and the future its scores resolve."""

    __slots__ = (
        "attempts", "batch_seq", "body", "due_ns", "future", "generation", "model", "request_id", "seq",
        "size", "wants",
    )  # fmt: skip

    def __init__(
        self,
        seq: int,
        generation: int,
        model: str,
        body: bytes | Columns,
        request_id: str,
        future: asyncio.Future[Scores],
        *,
        wants: tuple[str, ...] = (),
    ) -> None:
        self.seq = seq
        self.generation = generation
        self.model = model
        self.body = body
        self.size = len(body) if isinstance(body, bytes) else body.size
        self.request_id = request_id
        self.future = future
        self.wants = wants
        """The named outputs it wants besides `FRAUD_PROBABILITY` (`messages.PYFUNC_ANSWER`)."""
        self.attempts = 1
        self.due_ns = 0
        """When its wait for company ends (monotonic ns), set once when it is queued."""
        self.batch_seq: int | None = None
        """The batch it was last sent in (its `Batch.seq`), None until then.

        NOTE: the batch's number, not the `Batch`: request -> batch -> request was a reference cycle, which only
        the rare full collection frees (the long-lived objects are frozen), so every request that waited
        through a collection kept its body for good: +100-190 MiB per round of 24 concurrent 4.6 MB requests.
        """


class Batch:
    """Requests sent to one worker in one `Score` message; each request knows it by `seq` alone. `explained`: its
    requests want explanations (a batch is all of one kind, see `_key`)."""

    __slots__ = ("explained", "requests", "sent_ns", "seq")

    def __init__(self, seq: int, requests: list[PendingRequest], sent_ns: int) -> None:
        self.seq = seq
        self.requests = requests
        self.sent_ns = sent_ns
        self.explained = _explained(requests[0])
        for request in requests:
            request.batch_seq = seq


def _key(request: PendingRequest) -> tuple[int, str, bool]:
    """The queue a request waits in: its generation, its model, and whether it wants an explanation.

    NOTE: explained requests are batched apart: TreeSHAP costs many times a plain row, and the plain requests
    of a batch would wait for it.
    """
    return request.generation, request.model, _explained(request)


def _explained(request: PendingRequest) -> bool:
    return EXPLANATION in request.wants


class RequestQueue:
    """FIFO per (generation, model, explained or not); `take` serves the key whose oldest request has waited longest.

    `clock` gives monotonic integer nanoseconds (`time.monotonic_ns`); tests pass their own.
    """

    def __init__(self, policy: BatchPolicy, limit: int, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.policy = policy
        self.limit = limit
        self.clock = clock
        self._waiting: dict[tuple[int, str, bool], deque[PendingRequest]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def explained(self) -> int:
        """How many of the waiting requests want explanations (their keys are few: generations x models x 2)."""
        return sum(len(requests) for key, requests in self._waiting.items() if key[2])

    @property
    def full(self) -> bool:
        return self._count >= self.limit

    def __iter__(self) -> Iterator[PendingRequest]:
        for requests in self._waiting.values():
            yield from requests

    def put(self, request: PendingRequest) -> None:
        """Queue a new request; refuse it at once when `limit` requests already wait."""
        if self.full:
            raise PoolOverloadedError(overload_reason(self._count))
        request.due_ns = self.clock() + self.policy.wait_ns
        self._waiting.setdefault(_key(request), deque()).append(request)
        self._count += 1

    def put_back(self, request: PendingRequest) -> None:
        """Requeue a request whose worker died, ahead of newer ones (it was accepted before them)."""
        self._waiting.setdefault(_key(request), deque()).appendleft(request)
        self._count += 1

    def discard(self, request: PendingRequest) -> bool:
        """Take a request out of the queue (timed out, or its client left); False when it was not waiting."""
        requests = self._waiting.get(_key(request))
        if requests is None:
            return False
        try:
            requests.remove(request)
        except ValueError:
            return False
        self._count -= 1
        return True

    def take(
        self, generations: set[int], now_ns: int, *, share: int = 1, plain: bool = True, explained: bool = True
    ) -> list[PendingRequest]:
        """The next batch a worker holding `generations` can score; empty when nothing is due for it.

        With `wait_ns` > 0 a key whose oldest request is not yet due (`now_ns` < its `due_ns`) is held back
        unless its batch is already full, so a lone request waits at most `wait_ns`. With `share` > 1 the
        batch takes at most that share of the key's waiting requests (rounded up), leaving the rest to the
        `share - 1` other workers with room. `plain=False` leaves plain requests waiting, `explained=False`
        requests for explanations.
        """
        policy = self.policy
        best: deque[PendingRequest] | None = None
        best_key = (0, "", False)
        for key, requests in self._waiting.items():
            generation = key[0]
            if not requests or generation not in generations or not (explained if key[2] else plain):
                continue
            head = requests[0]
            if now_ns < head.due_ns and len(requests) < policy.max_requests:
                continue
            if best is None or head.seq < best[0].seq:
                best, best_key = requests, key
        if best is None:
            return []
        most = min(policy.max_requests, -(-len(best) // share))
        batch = [best.popleft()]
        size = batch[0].size
        while best and len(batch) < most and size + best[0].size <= policy.max_bytes:
            request = best.popleft()
            size += request.size
            batch.append(request)
        self._count -= len(batch)
        if not best:
            del self._waiting[best_key]  # generations come and go: keep no empty queue behind
        return batch

    def next_due(self, *, explained: bool = True) -> int | None:
        """When the oldest held-back request's wait ends (monotonic ns), if any waits; `explained=False` leaves out
        requests for explanations (held back for another reason, see `take`)."""
        heads = [
            requests[0].due_ns for key, requests in self._waiting.items() if requests and (explained or not key[2])
        ]
        return min(heads) if heads else None
