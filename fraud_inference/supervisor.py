"""granian's supervisor: the process `serve` and `demo` become once the checks pass.

`fraud-inference serve` runs its checks (and `demo` its seeding), then `exec`s `python -m
fraud_inference.supervisor` in the same process (same PID, same environment): a fresh interpreter that imports
granian and the settings, and nothing of MLflow, pandas or the model libraries. It forks the HTTP process,
which imports the app itself.

NOTE: before this, the supervisor kept everything the checks had imported: ~140 MiB of memory of its own
(USS) that no request ever used (`python -m benchmarks` reports memory by process role).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.server import Server

from fraud_inference.connections import connection_limits, open_file_limit
from fraud_inference.observability.logging import configure_logging, get_logger, granian_log_config
from fraud_inference.settings import Settings

__all__ = ["APP_FACTORY", "main"]

APP_FACTORY = "fraud_inference.api.app:create_app"

log = get_logger("fraud_inference.supervisor")


def main() -> int:
    """Serve the app under granian (one HTTP process, WORKERS in its pool) until a signal stops it."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, role="supervisor")
    _reap_children_from_before_exec()
    # The limits `serve` logged (`connections.limits`): this process inherited the open-file limit it raised.
    limits = connection_limits(settings, open_files=open_file_limit())
    server = Server(
        APP_FACTORY,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        # NOTE: HTTP/1 only: in `auto` mode granian waits with no timeout for the bytes that tell HTTP/1 from
        # HTTP/2, so a connection that sends nothing is held for ever; here the header timeout closes it.
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=limits.header_timeout_ms),
        backpressure=limits.max_connections,
        backlog=limits.listen_backlog,
        # uvloop: +15% requests/s here (granian hands each request to the loop from its own threads, and
        # uvloop's thread-safe wake-up is far cheaper than asyncio's self-pipe).
        loop=Loops.uvloop,
        workers=1,
        factory=True,
        log_access=False,
        log_dictconfig=granian_log_config(settings.log_format, role="supervisor"),
        # granian's own process; the HTTP process it starts titles itself `fraud-inference http` (see the app).
        process_name="fraud-inference supervisor",
    )
    server.on_startup(_ignore_sighup)
    server.serve()
    return 0


def _ignore_sighup() -> None:
    """Replace granian's SIGHUP handler with a logged no-op; runs in granian's startup, after it set its own.

    NOTE: granian answers SIGHUP by starting a new HTTP process and stopping the old one 3.5 s later, whatever
    the new one's state: its pool is not loaded by then, so clients met refused connections, then 503s, for
    ~33 s. Models reload without a gap through a refresh; code and settings through a rolling restart.
    """

    def log_and_ignore(_signal: int, _frame: FrameType | None) -> None:
        log.warning(
            "signal.sighup_ignored",
            detail="SIGHUP reloads nothing: POST /admin/refresh-models (or REFRESH_INTERVAL_S) reloads the models "
            "without a gap; a rolling restart applies new code or settings",
        )

    signal.signal(signal.SIGHUP, log_and_ignore)


def _reap_children_from_before_exec(timeout_s: float = 1.0) -> None:
    """Wait for the children the process had before `exec` (multiprocessing's resource tracker, started for the
    spawned preflight, exits once `exec` closes its pipe), so none lingers as a zombie of the supervisor.

    Runs before granian starts any process of its own; gives up after `timeout_s` on one that stays alive.
    """
    deadline_ns = time.monotonic_ns() + round(timeout_s * 1e9)
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        if pid == 0:
            if time.monotonic_ns() >= deadline_ns:
                return
            time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
