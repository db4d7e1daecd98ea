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
        """How many of the held batches are explanations' (`Batch.explained`): 0 or 1 (`can_explain`)."""
        return sum(batch.explained for batch in self._batches.values())

    @property
    def can_explain(self) -> bool:
        """Whether a batch of explanations may be sent: the worker's explanation lane is free. Plain batches go on
        beside it, on the worker's main thread."""
        return not self.explaining

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

    def busy_since_ns(self, *, plain: bool = False) -> int | None:
        """When the worker started its oldest batch (`plain`: its oldest plain one), as near as the server knows
        (None when it holds none): it was sent then, or the worker started it when it answered one before."""
        oldest = next((batch for batch in self._batches.values() if not (plain and batch.explained)), None)
        return None if oldest is None else max(oldest.sent_ns, self.last_answer_ns)

    def has_room(self, now_ns: int, *, most: int, busy_long_ns: int) -> bool:
        """Whether another plain batch may be sent: fewer than `most` plain ones held, and none held for
        `busy_long_ns`. A batch of explanations, on the worker's other thread, does not count (`can_explain`).

        A worker that has been scoring one batch that long (a large request, a slow model) gets no second one to
        wait behind it: the queue keeps it for the next free worker.
        """
        if len(self._batches) - self.explaining >= most:
            return False
        since = self.busy_since_ns(plain=True)
        return since is None or now_ns - since < busy_long_ns
