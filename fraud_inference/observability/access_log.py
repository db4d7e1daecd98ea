"""The access log's line per request, rendered without structlog's processor chain: the same JSON object, ~4x cheaper.

`benchmarks.http_process --log-level INFO` and `benchmarks.observability_overhead` measure it (README "Benchmarks").
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog

from fraud_inference.observability.sink import LineSink

__all__ = ["AccessLog", "StructlogAccessLog", "encode_json"]

encode_json = msgspec.json.Encoder(enc_hook=repr).encode
"""Every JSON log line's encoder (this one's and `logging`'s renderer): what JSON has no type for as its `repr`, as
structlog's `JSONRenderer` writes it."""


class AccessLog:
    """Writes `http.request` lines: the fields given, then `event`, the request's bound context vars (request_id),
    `level`, `timestamp` (ISO 8601, UTC, microseconds) and `role`, in that order, as `configure_logging`'s JSON
    renderer writes every other line. NOTE: structlog's chain (bound logger, processors, a write and flush per
    line) costs ~4x this one's, which is written with the turn's other lines (README "Benchmarks")."""

    __slots__ = ("_role", "_second", "_second_text", "_sink")

    def __init__(self, sink: LineSink, role: str) -> None:
        self._sink = sink
        self._role = role
        self._second = -1
        self._second_text = ""

    def line(self, fields: dict[str, Any]) -> None:
        """Log one request's line; `fields` (method, route, status, duration_ms, ...) becomes the line's head."""
        fields["event"] = "http.request"
        for key, value in structlog.contextvars.get_contextvars().items():
            fields.setdefault(key, value)
        fields["level"] = "info"
        fields["timestamp"] = self._timestamp()
        fields.setdefault("role", self._role)
        self._sink.write_soon(encode_json(fields).decode())

    def _timestamp(self) -> str:
        """`2026-12-07T15:22:28.649669Z`, as structlog's `TimeStamper(fmt="iso", utc=True)` (which leaves the
        fraction out when it is 0; this never does); the date and time of day formatted once a second."""
        now_ns = time.time_ns()
        second, fraction_ns = divmod(now_ns, 1_000_000_000)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{fraction_ns // 1000:06d}Z"


class StructlogAccessLog:
    """The access line through structlog's configured chain: the console format, or a level above INFO (then
    nothing is written), and `structlog.testing.capture_logs`."""

    __slots__ = ("_log",)

    def __init__(self, log: Any) -> None:
        self._log = log

    def line(self, fields: dict[str, Any]) -> None:
        """Log one request's line through structlog."""
        self._log.info("http.request", **fields)
