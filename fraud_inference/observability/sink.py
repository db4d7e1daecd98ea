"""One process's log stream: every line in order, the access log's batched per event-loop turn."""

from __future__ import annotations

import asyncio
import threading
from typing import TextIO

__all__ = ["LineSink"]

PIPE_BUF = 4096
"""Bytes one write(2) to a pipe may carry without interleaving with another process's writes (POSIX, Linux)."""


class LineSink:
    """Writes log lines to `stream`, each whole, in the order they were logged, from any thread.

    `write` writes at once (structlog's lines: a start, an error); `write_soon` (the access log's line per request)
    keeps lines until the end of this event-loop turn and writes them together, in writes of at most `PIPE_BUF`
    bytes so that processes sharing stdout never interleave within a line. A `write` first writes what waits, so
    the order of the lines is the order they were logged in. NOTE: one write(2) and flush per request cost ~5 us
    of the event loop's CPU here; at 64 connections one turn answers several requests (`benchmarks.http_process`,
    README "Benchmarks"). A line waits at most one turn: only a SIGKILL in that turn loses it.
    """

    __slots__ = ("_lock", "_pending", "_pending_bytes", "_scheduled", "_stream")

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        # NOTE: reentrant: a signal handler that logs (the supervisor's SIGHUP) may run inside a write in its thread.
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._scheduled = False

    def write(self, line: str) -> None:
        """Write `line` (no newline) now, after the lines waiting; structlog's logger interface calls it `msg`."""
        with self._lock:
            self._write_pending()
            self._stream.write(line + "\n")
            self._stream.flush()

    msg = log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = write

    def write_soon(self, line: str) -> None:
        """Write `line` (no newline, ASCII) at the end of this event-loop turn, or now outside a running loop."""
        with self._lock:
            if self._pending_bytes + len(line) >= PIPE_BUF:
                self._write_pending()
            self._pending.append(line)
            self._pending_bytes += len(line) + 1
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write_pending()
                return
            self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines waiting now (the end of a turn, a shutdown)."""
        with self._lock:
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if self._stream.closed:  # a test's captured stdout, the process's end: nowhere to write
            self._pending.clear()
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        self._pending_bytes = 0
        lines.append("")
        self._stream.write("\n".join(lines))
        self._stream.flush()
