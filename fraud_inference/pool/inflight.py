"""The batches one worker holds: sent, not yet answered."""

from __future__ import annotations

from collections.abc import Iterator

from fraud_inference.pool.queue import Batch, PendingRequest

__all__ = ["InFlight"]


class InFlight:
    """Batches sent to one worker and not answered yet, by sequence number, in the order they were sent.

    When the worker dies, `drain` hands back every request it held in one call, to be retried or failed.
    """

    def __init__(self) -> None:
        self._batches: dict[int, Batch] = {}
        self.last_answer_ns = 0
        """When the worker last answered a batch (monotonic ns): the earliest its oldest batch can have started."""

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, batch: Batch) -> None:
        self._batches[batch.seq] = batch

    def answered(self, seq: int, now_ns: int) -> Batch | None:
        """The batch `seq` is answered: take it out. None when it is not held (already drained)."""
        self.last_answer_ns = now_ns
        return self._batches.pop(seq, None)

    @property
    def explaining(self) -> int:
        """How many of the held batches are explanations' (`Batch.explained`; a worker holds at most two)."""
        return sum(batch.explained for batch in self._batches.values())

    def get(self, seq: int) -> Batch | None:
        """The batch `seq`, if this worker holds it."""
        return self._batches.get(seq)

    def requests(self) -> Iterator[PendingRequest]:
        for batch in self._batches.values():
            yield from batch.requests

    def drain(self) -> list[PendingRequest]:
        """Every request still held, oldest first; the worker holds nothing after."""
        orphans = list(self.requests())
        self._batches.clear()
        return orphans

    def busy_since_ns(self) -> int | None:
        """When the worker started its oldest batch, as near as the server knows (None when idle): it was
        sent then, or the worker started it when it answered the one before."""
        oldest = next(iter(self._batches.values()), None)
        return None if oldest is None else max(oldest.sent_ns, self.last_answer_ns)

    def has_room(self, now_ns: int, *, most: int, busy_long_ns: int) -> bool:
        """Whether another batch may be sent: fewer than `most` held, none held for `busy_long_ns`, and no
        explanation's.

        A worker that has been scoring one batch that long (a large request, a slow model), or that explains
        (TreeSHAP costs milliseconds a row, at a lower priority), gets no second one to wait behind it: the queue
        keeps it for the next free worker.
        """
        if len(self._batches) >= most or self.explaining:
            return False
        since = self.busy_since_ns()
        return since is None or now_ns - since < busy_long_ns
