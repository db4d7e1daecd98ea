"""The worker's end of its pipe to the server: messages in order, Cancels set aside, answers sent under one lock."""

from __future__ import annotations

import collections
import os
import threading
from multiprocessing.connection import Connection

from fraud_inference.pool.messages import (
    Cancel,
    GenerationLoaded,
    Heartbeat,
    Scored,
    ScoreFailed,
    ToWorker,
    WorkerStarted,
    decode_to_worker,
    encode,
)
from fraud_inference.pool.shadow_messages import Shadowed

__all__ = ["ServerPipe"]


class ServerPipe:
    """Read the server's messages on the scoring thread and send answers from any thread.

    A Cancel is never handed out: it is kept aside until its batch is asked about (`is_cancelled`); other
    messages read while a batch is scored are held for `next`, in the order they came.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._held: collections.deque[ToWorker | None] = collections.deque()  # read while scoring, for later
        self._server_gone = False
        self._cancelled: set[int] = set()

    def next(self) -> ToWorker | None:
        """The next message to act on, waiting for it; None once the server is gone."""
        if self._held:
            return self._held.popleft()
        while (message := self._receive()) is not None:
            if isinstance(message, Cancel):
                self._cancelled.add(message.seq)
            else:
                return message
        return None

    def _receive(self) -> ToWorker | None:
        try:
            message: ToWorker = decode_to_worker(self._conn.recv_bytes())
        except (EOFError, OSError):
            return None  # the server is gone: nothing left to score for
        return message

    def is_cancelled(self, seq: int) -> bool:
        """Whether every request of batch `seq` has given up, reading the Cancels sent meanwhile; other messages
        wait their turn (batches come in order)."""
        while seq not in self._cancelled and not self._server_gone and self._conn.poll(0):
            message = self._receive()
            if message is None:
                self._server_gone = True
                self._held.append(None)
            elif isinstance(message, Cancel):
                self._cancelled.add(message.seq)
            else:
                self._held.append(message)
        return seq in self._cancelled

    def was_cancelled(self, seq: int) -> bool:
        """Whether every request of batch `seq` has given up, by the Cancels read so far (reads nothing: for a
        thread other than the one reading the pipe)."""
        return seq in self._cancelled

    def waiting(self) -> bool:
        """Whether a message waits to be acted on (held, or unread in the pipe), without reading it."""
        return bool(self._held) or (not self._server_gone and self._conn.poll(0))

    def forget_cancels(self, seq: int) -> None:
        """Drop the Cancels of batch `seq` and of every earlier one."""
        for cancelled in [cancelled for cancelled in self._cancelled if cancelled <= seq]:
            self._cancelled.discard(cancelled)

    def send(self, message: WorkerStarted | GenerationLoaded | Scored | ScoreFailed | Heartbeat | Shadowed) -> None:
        payload = encode(message)
        with self._send_lock:
            try:
                self._conn.send_bytes(payload)
            except (BrokenPipeError, OSError):
                os._exit(0)  # the server is gone
