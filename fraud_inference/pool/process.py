"""The server-side handle of one worker process: its pipe, its liveness, the batches it holds."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from fraud_inference.pool.channel import FrameChannel
from fraud_inference.pool.inflight import InFlight
from fraud_inference.pool.messages import Heartbeat, ToServer, ToWorker, decode_to_server, encode
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
        self._conn: Connection
        self._conn, child_end = context.Pipe(duplex=True)
        _widen(self._conn, child_end)
        self._process: BaseProcess = context.Process(
            target=run_worker, args=(child_end, options), name=f"fraud-inference-worker-{options.index}"
        )
        self._process.start()
        child_end.close()  # only the worker holds its end: it sees EOF the moment the server dies
        self.inflight = InFlight()
        self.generations: set[int] = set()
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._alive = True
        self._last_heard_ns = time.monotonic_ns()
        self._scoring = Heartbeat(scoring=0, scoring_ns=0)
        self._on_message = on_message
        self._on_exit = on_exit
        self._channel = FrameChannel(self._conn.fileno(), asyncio.get_running_loop(), self._received, self._lost)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode

    def is_alive(self) -> bool:
        """Its pipe is open: it may be sent work (it may still be stuck; see `stuck`)."""
        return self._alive

    def send(self, message: ToWorker) -> None:
        self._channel.send(encode(message))

    def stuck(self, now_ns: int, *, silent_ns: int, hung_ns: int) -> str | None:
        """Why this worker must be replaced, or None: silent for `silent_ns` while it holds work (stopped,
        or stuck holding the GIL), or one batch scored for `hung_ns` (HUNG_WORKER_S) and counting."""
        if not self._alive or not len(self.inflight):
            return None
        silent = now_ns - max(self._last_heard_ns, self.inflight.busy_since_ns() or 0)
        if silent >= silent_ns:
            return f"no heartbeat for {silent / 1e9:.1f} s while it holds {len(self.inflight)} batch(es)"
        if self._scoring.scoring and self._scoring.scoring_ns >= hung_ns:
            return f"one batch scored for {self._scoring.scoring_ns / 1e9:.1f} s (HUNG_WORKER_S)"
        return None

    def kill(self) -> None:
        """SIGKILL the process; its pipe's EOF then reports the exit like any other death."""
        self._process.kill()

    def _received(self, payload: bytes) -> None:
        self._last_heard_ns = time.monotonic_ns()
        message = decode_to_server(payload)
        if isinstance(message, Heartbeat):
            self._scoring = message
            return
        self._on_message(self, message)

    def _lost(self) -> None:
        if not self._alive:
            return
        self._alive = False
        self._channel.close()
        self._conn.close()
        self._process.join(timeout=1.0)
        self._on_exit(self)

    def close(self) -> None:
        """Close the pipe: the worker exits on EOF. Call on the event loop."""
        if self._alive:
            self._alive = False
            self._channel.close()
            self._conn.close()

    def join_or_kill(self, timeout_s: float = 5.0) -> None:
        """Wait for the process to exit, SIGKILL it if it does not. Blocks: run it off the event loop."""
        self._process.join(timeout=timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=timeout_s)


_SOCKET_BUFFER = 2 * 2**20
"""Bytes asked for each direction of a worker's socket (Linux doubles it, and caps it at `net.core.wmem_max` /
`rmem_max`: 4 MiB on the benchmark host, ~416 KiB under the stock cap), so a batch of up to BATCH_MAX_BYTES
(512 KiB) goes in one write. The default held ~180 KiB, less than one 1,000-row request."""


def _widen(*ends: Connection) -> None:
    """Raise the send and receive buffers of both ends of a worker's socket pair (capped by the kernel's
    `net.core.wmem_max` / `rmem_max`)."""
    for end in ends:
        with socket.socket(fileno=os.dup(end.fileno())) as view:
            view.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            view.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
