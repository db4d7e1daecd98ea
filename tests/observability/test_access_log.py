"""The access log's own fast path: the same JSON line as structlog's, every line written, in order, whole."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import pytest
import structlog

from fraud_inference.observability.logging import access_log, configure_logging, get_logger
from fraud_inference.observability.sink import PIPE_BUF


class _Writes(io.StringIO):
    """A stream that keeps each write call apart, to see which lines went out together."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[_Writes]:
    writes = _Writes()
    yield writes
    configure_logging("WARNING", "json", role="test")  # later tests log to stdout again, not to this closed stream


def _fields(number: int) -> dict[str, object]:
    return {"method": "POST", "route": "/v1/predict", "status": 200, "duration_ms": 0.25, "model": "xgboost",
            "rows": number}  # fmt: skip


def test_the_access_line_is_the_line_structlog_renders(stream: _Writes) -> None:
    configure_logging("INFO", "json", role="server", stream=stream)
    tokens = structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        access_log().line(_fields(1))
        get_logger("fraud_inference.access").info("http.request", **_fields(1))
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    fast, slow = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(fast) == list(slow)  # the same fields, in the same order
    assert {**fast, "timestamp": None} == {**slow, "timestamp": None}
    assert fast["timestamp"].endswith("Z")
    assert fast["timestamp"][:19] <= slow["timestamp"][:19]


def test_lines_of_one_turn_go_out_together_in_order_and_whole(stream: _Writes) -> None:
    configure_logging("INFO", "json", role="server", stream=stream)
    log = get_logger("fraud_inference.test")

    async def one_turn() -> None:
        for number in range(40):
            access_log().line(_fields(number))
        log.warning("between.lines")  # written at once, after the access lines logged before it
        for number in range(40, 100):
            access_log().line(_fields(number))
        assert stream.getvalue().count("\n") < 100  # the turn's last lines wait for its end
        await asyncio.sleep(0)

    asyncio.run(one_turn())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("rows") for line in lines] == [*range(40), None, *range(40, 100)]
    assert lines[40]["event"] == "between.lines"
    assert all(call.endswith("\n") and len(call.encode()) <= PIPE_BUF for call in stream.calls)
    assert len(stream.calls) < 100 / 2  # batched: several lines per write


def test_outside_an_event_loop_a_line_is_written_at_once(stream: _Writes) -> None:
    configure_logging("INFO", "json", role="server", stream=stream)
    access_log().line(_fields(7))
    assert json.loads(stream.getvalue())["rows"] == 7


@pytest.mark.parametrize(("level", "log_format"), [("WARNING", "json"), ("INFO", "console")])
def test_other_levels_and_formats_go_through_structlog(stream: _Writes, level: str, log_format: str) -> None:
    configure_logging(level, log_format, role="server", stream=stream)
    access_log().line(_fields(3))
    assert ("http.request" in stream.getvalue()) == (level == "INFO")
