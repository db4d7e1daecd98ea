"""How many connections the HTTP process holds at once, and for how long.

granian (2.8) accepts at most `backpressure` connections per process; past it, new connections wait in the
kernel's listen queue. Each held connection is one open file, so the bound stays below the open-file limit
(raised to its hard limit at start) with room to spare: held connections never take the descriptors the pool
needs (a new worker's pipes, the files of a model being loaded).

NOTE: granian's default HTTP mode (`auto`) first reads the bytes that tell HTTP/1 from HTTP/2, with no timeout:
a connection that sends nothing is held for ever. In HTTP/1-only mode hyper's header timer runs from the
moment the connection opens, and again from the end of each answer, so one timeout closes silent, slow-header
and idle keep-alive connections alike (checked against granian 2.8.9; see tests/e2e/test_connections.py).
"""

from __future__ import annotations

import resource

import msgspec

from fraud_inference.settings import Settings

__all__ = ["ConnectionLimits", "OpenFiles", "connection_limits", "open_file_limit", "raise_open_file_limit"]

# Linux's own ceiling for RLIMIT_NOFILE when the hard limit is unlimited (fs.nr_open).
_NR_OPEN = "/proc/sys/fs/nr_open"


class OpenFiles(msgspec.Struct, frozen=True, kw_only=True):
    """The process's open-file limit before and after `raise_open_file_limit`."""

    was: int
    soft: int
    hard: int | None  # None: unlimited


class ConnectionLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What granian is given: its connection bound (backpressure), listen backlog and header timeout."""

    max_connections: int
    """Connections served at once: MAX_CONNECTIONS, lowered to leave descriptors for everything else."""
    listen_backlog: int
    header_timeout_ms: int
    open_files: int


def raise_open_file_limit() -> OpenFiles:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it); keep it where it cannot.

    NOTE: importing granian does the same, silently (its `sysinfo` dependency raises the limit when the module
    loads): call this before granian is imported to see the limit the process was given.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open(default=soft) if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            target = soft  # e.g. a container that forbids it: keep the limit, the bound below follows it
    else:
        target = soft
    return OpenFiles(was=soft, soft=target, hard=None if hard == resource.RLIM_INFINITY else hard)


def open_file_limit() -> int:
    """This process's soft RLIMIT_NOFILE: how many files it may hold open."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limits(settings: Settings, *, open_files: int) -> ConnectionLimits:
    """The bounds for granian: MAX_CONNECTIONS, unless `open_files` cannot hold it with room to spare."""
    # NOTE: an eighth of the descriptors (at least 256) stays free for the pool's pipes, the metrics files and the
    # files of a model being loaded; the HTTP process holds ~35 of its own at rest.
    spare = max(256, open_files // 8)
    return ConnectionLimits(
        max_connections=max(1, min(settings.max_connections, open_files - spare)),
        listen_backlog=settings.listen_backlog,
        header_timeout_ms=max(1, round(settings.header_timeout_s * 1000)),
        open_files=open_files,
    )


def _nr_open(*, default: int) -> int:
    try:
        with open(_NR_OPEN) as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return default
