"""Reading a request body within bounds: its size, its number of pieces, its read time, and its Content-Encoding.

Every protocol reads its body here, so one set of limits holds for /v1, /invocations and /v2 alike; the refusals
are `HTTPException`s that each protocol's router renders in its own shape.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import brotli
from litestar import Request
from litestar.exceptions import HTTPException

from fraud_inference.api.protocol import header_values

__all__ = ["CODINGS", "BodyLimits", "read_body"]

FREE_PIECES = 64
"""Pieces (ASGI `http.request` messages, one per chunk or socket read) any body may arrive in, whatever their size;
past them a body must average `MIN_BODY_PIECE_BYTES` a piece."""


class BodyLimits(Protocol):
    """The settings `read_body` applies (`Settings` has them)."""

    @property
    def max_body_bytes(self) -> int: ...
    @property
    def min_body_piece_bytes(self) -> int: ...
    @property
    def body_read_timeout_s(self) -> float: ...


class _Decoder(Protocol):
    """One content coding's incremental decoder, bounded in what it may produce."""

    def feed(self, data: bytes, room: int) -> bytes:
        """Decode the next piece; at most `room + 1` bytes out, so that more than `room` shows as too much."""

    def finish(self) -> None:
        """Raise `ValueError` when the coded stream is not complete."""


class _Zlib:
    """gzip (RFC 1952, concatenated members included, as `gzip -d` reads them) or deflate (zlib, RFC 1950)."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._stream = zlib.decompressobj(wbits)

    def feed(self, data: bytes, room: int) -> bytes:
        out = bytearray()
        while data:
            try:
                out += self._stream.decompress(data, room + 1 - len(out))
            except zlib.error as error:
                raise ValueError(str(error)) from None
            if len(out) > room:
                break
            data = self._stream.unused_data  # past the end of one gzip member: the next member starts here
            if data:
                self._stream = zlib.decompressobj(self._wbits)
        return bytes(out)

    def finish(self) -> None:
        if not self._stream.eof:
            raise ValueError("the stream ends before its end marker")


class _Brotli:
    """br (RFC 7932), with brotli >= 1.2's bounded output."""

    def __init__(self) -> None:
        self._stream = brotli.Decompressor()

    def feed(self, data: bytes, room: int) -> bytes:
        out = bytearray()
        try:
            out += self._stream.process(data, output_buffer_limit=room + 1)
            while len(out) <= room and not self._stream.can_accept_more_data():
                out += self._stream.process(b"", output_buffer_limit=room + 1 - len(out))
        except brotli.error as error:
            raise ValueError(str(error) or "not brotli data") from None
        return bytes(out)

    def finish(self) -> None:
        if not self._stream.is_finished():
            raise ValueError("the stream ends before its end marker")


CODINGS: dict[str, Callable[[], _Decoder]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS),
    "br": _Brotli,
}
"""The Content-Encoding values a body may carry (besides `identity`), and their decoders."""
_ACCEPT_ENCODING = {"accept-encoding": "gzip, deflate, br, identity"}


def _coding_of(request: Request[Any, Any, Any]) -> str | None:
    """The body's one content coding, None for none or `identity`; 415 naming the supported ones otherwise."""
    codings = [
        coding.strip().lower() for value in header_values(request, b"content-encoding") for coding in value.split(",")
    ]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return codings[0]
    raise HTTPException(
        status_code=415,
        detail=f"Content-Encoding {', '.join(codings)[:100]!r} is not supported: send the body as it is, or coded "
        "with one of gzip, deflate, br",
        headers=_ACCEPT_ENCODING,
    )


def _declared_length(request: Request[Any, Any, Any]) -> int | None:
    values = header_values(request, b"content-length")
    return int(values[0]) if values and values[0].isdigit() else None


def _too_large(limit: int, *, coded: bool) -> HTTPException:
    what = "decoded body" if coded else "body"
    # NOTE: the rest of the body stays unread: close the connection rather than read on for the next request.
    return HTTPException(
        status_code=413, detail=f"the {what} is over MAX_BODY_BYTES ({limit} bytes)", headers={"connection": "close"}
    )


async def read_body(request: Request[Any, Any, Any], limits: BodyLimits) -> bytes:
    """The request's body, decoded from its Content-Encoding: what the protocol parses.

    Refuses (each an `HTTPException`, rendered by the protocol's router):
    - 413: over `MAX_BODY_BYTES` on the wire or once decoded, checked while decoding (a gzip bomb is stopped after
      `MAX_BODY_BYTES + 1` bytes of output, never inflated whole); or sent in too many small pieces: past
      `FREE_PIECES`, fewer than `MIN_BODY_PIECE_BYTES` a piece on average (each piece costs the HTTP process the
      same CPU, ~10-60 us, whatever its size).
    - 408 (and the connection closed): the whole body has not arrived within `BODY_READ_TIMEOUT_S` of the first
      read.
    - 415: a Content-Encoding other than gzip, x-gzip, deflate, br or identity (or two stacked), naming them;
      400: a body that does not decode as its Content-Encoding says, naming the coding.
    """
    limit = limits.max_body_bytes
    coding = _coding_of(request)
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(limit, coded=False)
    decoder = CODINGS[coding]() if coding is not None else None
    receive = request.receive
    pieces: list[bytes] = []
    wire = decoded = count = 0
    try:
        async with asyncio.timeout(limits.body_read_timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect: the client left before the end
                    raise HTTPException(status_code=400, detail="the client closed the connection mid-body")
                piece: bytes = message.get("body", b"")
                count += 1
                wire += len(piece)
                if wire > limit:
                    raise _too_large(limit, coded=False)
                if count > FREE_PIECES and wire < count * limits.min_body_piece_bytes:
                    raise HTTPException(
                        status_code=413,
                        detail=f"the body arrives in too many small pieces ({count} pieces, {wire} bytes): past "
                        f"{FREE_PIECES}, pieces must average MIN_BODY_PIECE_BYTES ({limits.min_body_piece_bytes}) "
                        "bytes; send it whole or in larger chunks",
                        headers={"connection": "close"},
                    )
                if decoder is not None and piece:
                    piece = _decode(decoder, piece, limit - decoded, coding)
                    decoded += len(piece)
                    if decoded > limit:
                        raise _too_large(limit, coded=True)
                if piece:
                    pieces.append(piece)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise HTTPException(
            status_code=408,
            detail=f"the body did not arrive within BODY_READ_TIMEOUT_S ({limits.body_read_timeout_s:g} s)",
            headers={"connection": "close"},
        ) from None
    if decoder is not None:
        try:
            decoder.finish()
        except ValueError as error:
            raise _not_coded(coding, error) from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _decode(decoder: _Decoder, piece: bytes, room: int, coding: str | None) -> bytes:
    try:
        return decoder.feed(piece, room)
    except ValueError as error:
        raise _not_coded(coding, error) from None


def _not_coded(coding: str | None, error: ValueError) -> HTTPException:
    return HTTPException(
        status_code=400, detail=f"the body is not valid {coding} data, as its Content-Encoding says: {error}"
    )
