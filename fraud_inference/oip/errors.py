"""The one error of the Open Inference Protocol's codec."""

from __future__ import annotations

__all__ = ["OipRequestError"]


class OipRequestError(ValueError):
    """An inference request the protocol cannot read: `message` says what is wrong and how to send it, naming the
    input (`input_name`) and the row (`row`, an index into the request's rows) when known.

    Each transport renders it in its own terms: 400 `{"error": message}` over REST, `INVALID_ARGUMENT` over gRPC.
    """

    def __init__(self, message: str, *, input_name: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.input_name = input_name
        self.row = row
