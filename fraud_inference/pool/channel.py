"""The server's end of a worker's pipe: length-prefixed frames, non-blocking, driven by the event loop.

The worker keeps a plain blocking `multiprocessing.Connection`; this side speaks the same framing (a 4-byte
big-endian length, then the payload) without ever blocking the event loop: a batch of large requests is
written as the pipe accepts it, and an answer is read in as many pieces as it arrives in. (Blocking
`Connection` calls on the loop would stall every request while a worker drains a large batch, and a
non-blocking descriptor, which uvloop makes of any watched one, breaks them mid-frame.)
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable

__all__ = ["FrameChannel"]

_HEADER = struct.Struct("!i")
_READ_SIZE = 1 << 20


class FrameChannel:
    """Send and receive whole frames on `fd`; `on_frame` gets each payload, `on_closed` the end of the pipe."""

    def __init__(
        self,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._loop = loop
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._open = True
        loop.add_reader(fd, self._readable)

    def send(self, payload: bytes) -> None:
        """Queue one frame; it is written now as far as the pipe takes it, the rest when it is writable."""
        if not self._open:
            return
        frame = _HEADER.pack(len(payload)) + payload
        if self._outbox:
            self._outbox += frame  # keep frames in order behind what is still waiting
            return
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:
            self._closed()
            return
        if written < len(frame):
            self._outbox += frame[written:]
            self._loop.add_writer(self._fd, self._writable)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)

    def _writable(self) -> None:
        try:
            written = os.write(self._fd, self._outbox)
        except BlockingIOError:
            return
        except OSError:
            self._closed()
            return
        del self._outbox[:written]
        if not self._outbox:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._closed()
            return
        inbox = self._inbox
        inbox += chunk
        start = 0
        # Every complete frame now in the buffer, in order; a partial one waits for the next read.
        while len(inbox) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(inbox, start)
            end = start + _HEADER.size + size
            if len(inbox) < end:
                break
            payload = bytes(inbox[start + _HEADER.size : end])
            start = end
            self._on_frame(payload)
            if not self._open:
                return
        del inbox[:start]

    def _closed(self) -> None:
        if self._open:
            self.close()
            self._on_closed()
