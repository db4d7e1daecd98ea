"""The server-side handle of one worker process: its pipe, readiness callbacks and in-flight batches."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from fraud_inference.pool.channel import FrameChannel
from fraud_inference.pool.messages import ToServer, ToWorker, decode_to_server, encode
from fraud_inference.pool.queue import Batch
from fraud_inference.pool.worker import WorkerOptions, run_worker

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """Start a worker with `spawn`, read its answers with a readiness callback on the event loop."""

    def __init__(
        self,
        options: WorkerOptions,
        *,
        on_message: Callable[[WorkerProcess, ToServer], None],
        on_exit: Callable[[WorkerProcess], None],
    ) -> None:
        # NOTE: spawn, not fork: fork after xgboost / lightgbm ran multi-threaded hangs the child's
        # OpenMP, and a forked child would inherit the server's sockets.
        context = multiprocessing.get_context("spawn")
        self.index = options.index
        self.conn: Connection
        self.conn, child_end = context.Pipe(duplex=True)
        self.process: BaseProcess = context.Process(
            target=run_worker, args=(child_end, options), name=f"fraud-inference-worker-{options.index}"
        )
        self.process.start()
        child_end.close()  # only the worker holds its end: it sees EOF the moment the server dies
        self.inflight: dict[int, Batch] = {}  # batches sent and not answered, by sequence number
        self.generations: set[int] = set()
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.alive = True
        self.last_heard_ns = time.monotonic_ns()
        self._on_message = on_message
        self._on_exit = on_exit
        self._channel = FrameChannel(self.conn.fileno(), asyncio.get_running_loop(), self._received, self._lost)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, message: ToWorker) -> None:
        self._channel.send(encode(message))

    def _received(self, payload: bytes) -> None:
        self.last_heard_ns = time.monotonic_ns()
        self._on_message(self, decode_to_server(payload))

    def _lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._channel.close()
        self.conn.close()
        self.process.join(timeout=1.0)
        self._on_exit(self)

    def close(self) -> None:
        """Close the pipe: the worker exits on EOF. Call on the event loop."""
        if self.alive:
            self.alive = False
            self._channel.close()
            self.conn.close()

    def join_or_kill(self, timeout_s: float = 5.0) -> None:
        """Wait for the process to exit, SIGKILL it if it does not. Blocks: run it off the event loop."""
        self.process.join(timeout=timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=timeout_s)
