"""structlog setup: one JSON object per line (or a console renderer), with the process role on every line."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

__all__ = ["configure_logging", "get_logger", "granian_log_config", "stdlib_formatter"]


def configure_logging(level: str, log_format: str, *, role: str) -> None:
    """Route structlog and the standard library (granian, mlflow, ...) through one renderer on stdout."""
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*_shared_processors(role), structlog.processors.format_exc_info, _renderer(log_format)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # NOTE: WriteLogger writes each line in one call and flushes it: processes sharing stdout never interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
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
    return structlog.dev.ConsoleRenderer() if log_format == "console" else structlog.processors.JSONRenderer()


def get_logger(name: str) -> FilteringBoundLogger:
    """A structured logger; call `log.info("event.name", field=value)`, never with f-strings."""
    return structlog.get_logger(name)  # type: ignore[no-any-return]
