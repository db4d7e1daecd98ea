"""structlog setup: one JSON object per line (or a console renderer), with the process role on every line."""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from fraud_inference.observability.access_log import AccessLog, StructlogAccessLog, encode_json
from fraud_inference.observability.sink import LineSink

__all__ = ["access_log", "configure_logging", "get_logger", "granian_log_config", "stdlib_formatter"]

_configuration = 0
"""How many times `configure_logging` has run in this process: the loggers of `get_logger` bind again after each."""
_access_log: AccessLog | StructlogAccessLog | None = None


def configure_logging(level: str, log_format: str, *, role: str, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (granian, mlflow, ...) through one renderer on `stream` (stdout;
    a command whose stdout is its answer, `replay`, logs to stderr)."""
    stream = sys.stdout if stream is None else stream
    global _configuration, _access_log
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    # NOTE: the sink writes each line in one call and flushes it: processes sharing stdout never interleave.
    sink = LineSink(stream)
    atexit.register(sink.flush)
    structlog.configure(
        processors=[*_shared_processors(role), structlog.processors.format_exc_info, _renderer(log_format)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_args: sink,
        cache_logger_on_first_use=True,
    )
    _configuration += 1
    fast = log_format == "json" and numeric_level <= logging.INFO
    _access_log = AccessLog(sink, role) if fast else StructlogAccessLog(get_logger("fraud_inference.access"))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(stdlib_formatter(log_format, role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # MLflow and alembic are chatty at INFO about things an operator need not see on every start.
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))
    # urllib3 warns at each retry of a call to an unreachable registry; the service logs one line per attempt.
    logging.getLogger("urllib3").setLevel(max(numeric_level, logging.ERROR))
    for name in ("granian", "granian.access", "_granian"):
        granian_logger = logging.getLogger(name)
        granian_logger.handlers[:] = []
        granian_logger.propagate = True


def stdlib_formatter(log_format: str, role: str) -> logging.Formatter:
    """A formatter that renders standard-library records exactly like structlog's own lines."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(role), structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _renderer(log_format),
        ],
    )


def granian_log_config(log_format: str, role: str) -> dict[str, object]:
    """granian's `log_dictconfig`: its supervisor's lines in the same format as everything else."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": f"{__name__}.stdlib_formatter", "log_format": log_format, "role": role,
            },
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "structured", "stream": "ext://sys.stdout"},
        },
        "loggers": {"_granian": {"handlers": ["console"], "propagate": False}},
    }  # fmt: skip


def _shared_processors(role: str) -> list[structlog.typing.Processor]:
    def add_role(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        event.setdefault("role", role)
        return event

    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_role,
    ]


def _renderer(log_format: str) -> structlog.typing.Processor:
    return structlog.dev.ConsoleRenderer() if log_format == "console" else _render_json


def _render_json(_logger: WrappedLogger, _method: str, event: EventDict) -> str:
    """One JSON object by msgspec (structlog's `JSONRenderer` uses `json.dumps`, ~5x the time): no spaces after
    `:` and `,`, non-ASCII characters as UTF-8; what JSON has no type for as its `repr`, as structlog's does."""
    return encode_json(event).decode()


def access_log() -> AccessLog | StructlogAccessLog:
    """The access log of the last `configure_logging`: its own fast path for JSON at INFO and below, else
    structlog's chain (the console format; above INFO it writes nothing)."""
    if _access_log is None:
        return StructlogAccessLog(get_logger("fraud_inference.access"))
    return _access_log


def get_logger(name: str) -> FilteringBoundLogger:
    """A structured logger; call `log.info("event.name", field=value)`, never with f-strings.

    Safe at module level: it logs through the configuration of the last `configure_logging`, so
    `structlog.testing.capture_logs` sees every module's lines.
    """
    return cast("FilteringBoundLogger", _RebindingLogger(name))


class _RebindingLogger:
    """A logger bound on first use, as structlog's cache does, and bound again after each `configure_logging`.

    NOTE: structlog's own cached proxy keeps the processor list of the configuration it first saw: in a process
    configured again (a worker after fork, each app of a test session) its lines went past the current processors.
    """

    __slots__ = ("_bound", "_bound_in", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: FilteringBoundLogger | None = None
        self._bound_in = -1

    def __getattr__(self, method: str) -> Any:
        bound, current = self._bound, _configuration
        if bound is None or self._bound_in != current:
            bound = self._bound = structlog.get_logger(self._name).bind()
            self._bound_in = current
        return getattr(bound, method)
