"""Connections that send nothing, half a header, or idle on keep-alive, held by the thousand against a real `serve`:
probes on new connections are still answered, the server closes the held ones after HEADER_TIMEOUT_S, and at the
open-file limit new connections wait, nothing crashes, and the service answers again as soon as they are let go."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest

from tests.conftest import alive, http_process

# NOTE: soak, out of the default run (which must stay near 12 minutes): thousands of connections and an exhausted
# open-file limit, 67 s of the default run. .ci/run runs it with -m soak.
pytestmark = [pytest.mark.slow, pytest.mark.soak]

# A probe that is answered at all within this many seconds counts as answered (a bound, not a timing).
PROBE_DEADLINE_S = 5.0
HALF_HEADER = b"POST /v1/predict HTTP/1.1\r\nHost: fraud\r\nContent-Type: application/json\r\n"
KEEP_ALIVE_REQUEST = b"GET /livez HTTP/1.1\r\nHost: fraud\r\n\r\n"


class Probe(msgspec.Struct, frozen=True):
    path: str
    status: int | None
    latency_ms: float
    error: str | None = None


@contextlib.contextmanager
def open_files_of_this_process(soft: int) -> Iterator[None]:
    """Raise this test process's soft RLIMIT_NOFILE for the sockets it holds; restore it afterwards."""
    was, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (was, hard))


def address(service: Any) -> tuple[str, int]:
    url = urlsplit(service.base_url)
    assert url.hostname is not None
    assert url.port is not None
    return url.hostname, url.port


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    status = (Path("/proc") / str(pid) / "status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def probe(target: tuple[str, int], path: str, deadline_s: float = PROBE_DEADLINE_S) -> Probe:
    """GET `path` on a new connection; the status, or the error met before the deadline."""
    start_ns = time.monotonic_ns()
    deadline_ns = start_ns + round(deadline_s * 1e9)
    try:
        with socket.create_connection(target, timeout=deadline_s) as connection:
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: fraud\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while b"\r\n" not in answer:
                remaining_s = (deadline_ns - time.monotonic_ns()) / 1e9
                if remaining_s <= 0:
                    raise TimeoutError("no status line before the deadline")
                connection.settimeout(remaining_s)
                chunk = connection.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before a status line")
                answer += chunk
        status: int | None = int(answer.split(b" ", 2)[1])
        error = None
    except OSError as failure:
        status, error = None, f"{type(failure).__name__}: {failure}"
    return Probe(path, status, (time.monotonic_ns() - start_ns) / 1e6, error)


def hold(target: tuple[str, int], *, silent: int, half_header: int, idle_keep_alive: int) -> list[socket.socket]:
    """Open connections that send nothing, half a request header, or one complete request then nothing."""
    held: list[socket.socket] = []
    try:
        for _ in range(silent):
            held.append(socket.create_connection(target, timeout=10))
        for _ in range(half_header):
            connection = socket.create_connection(target, timeout=10)
            held.append(connection)
            connection.sendall(HALF_HEADER)
        for _ in range(idle_keep_alive):
            connection = socket.create_connection(target, timeout=10)
            held.append(connection)
            connection.sendall(KEEP_ALIVE_REQUEST)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200"), "the keep-alive request was not answered"
    except BaseException:
        release(held)
        raise
    return held


def release(held: list[socket.socket]) -> None:
    for connection in held:
        connection.close()


def wait_until_closed_by_server(held: list[socket.socket], deadline_s: float) -> int:
    """How many of `held` the server closed (EOF or reset) before the deadline."""
    deadline_ns = time.monotonic_ns() + round(deadline_s * 1e9)
    with selectors.DefaultSelector() as selector:
        for connection in held:
            connection.setblocking(False)
            selector.register(connection, selectors.EVENT_READ)
        closed = 0
        while closed < len(held) and (remaining_ns := deadline_ns - time.monotonic_ns()) > 0:
            for key, _events in selector.select(timeout=min(1.0, remaining_ns / 1e9)):
                connection = key.fileobj
                assert isinstance(connection, socket.socket)
                try:
                    ended = connection.recv(65536) == b""  # an idle keep-alive one may still hold its answer
                except ConnectionResetError:
                    ended = True
                if ended:
                    selector.unregister(connection)
                    closed += 1
    return closed


def log_events(service: Any, event: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in service.log().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def test_thousands_of_silent_half_sent_and_idle_connections_do_not_lock_out_probes_and_are_closed_after_the_timeout(
    service_factory, demo_registry: str
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    each = min(3_334, hard // 6)  # ~10,000 in all, within half of what this process may open
    header_timeout_s = 20.0  # long enough that every connection is still held while the probes run
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "HEADER_TIMEOUT_S": str(header_timeout_s)},
    )
    service.wait_ready()
    target = address(service)
    server = http_process(service)
    fds_at_rest, rss_at_rest = open_fds(server), rss_mib(server)

    with open_files_of_this_process(hard):
        opened_ns = time.monotonic_ns()
        held = hold(target, silent=each, half_header=each, idle_keep_alive=each)
        try:
            opening_s = (time.monotonic_ns() - opened_ns) / 1e9
            fds_holding, rss_holding = open_fds(server), rss_mib(server)
            probes = [probe(target, path) for _round in range(5) for path in ("/livez", "/readyz")]
            fds_after_probes = open_fds(server)
            closed = wait_until_closed_by_server(held, deadline_s=header_timeout_s + 60)
            closing_s = (time.monotonic_ns() - opened_ns) / 1e9
        finally:
            release(held)
    latencies = sorted(p.latency_ms for p in probes)
    print(
        f"\n{len(held)} held ({each} silent, {each} half-header, {each} idle keep-alive) opened in {opening_s:.1f} s;"
        f" HTTP process fds {fds_at_rest} at rest, {fds_holding} holding, {fds_after_probes} after the probes,"
        f" RSS {rss_at_rest:.0f} -> {rss_holding:.0f} MiB;"
        f" probes {len(probes)}, latency ms min {latencies[0]:.1f} median {latencies[len(latencies) // 2]:.1f}"
        f" max {latencies[-1]:.1f}; all closed by the server {closing_s:.1f} s after the first opened"
    )

    assert [p for p in probes if p.status != 200] == []
    # The probes were answered while the connections were held, not after they were let go.
    assert fds_after_probes >= fds_at_rest + len(held)
    assert closed == len(held), f"the server closed {closed} of {len(held)} held connections"
    assert open_fds(server) < fds_at_rest + 100
    (limits,) = log_events(service, "connections.limits")
    assert limits["header_timeout_s"] == header_timeout_s
    assert limits["max_connections"] > len(held)


def test_past_the_open_file_limit_new_connections_wait_nothing_crashes_and_the_service_recovers_at_once(
    service_factory, demo_registry: str
) -> None:
    limit = 1_536
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "HEADER_TIMEOUT_S": "120"},
        open_files=(256, limit),  # a low soft limit, raised at start to the hard one
    )
    service.wait_ready()
    (limits,) = log_events(service, "connections.limits")
    assert (limits["open_files_was"], limits["open_files"], limits["open_files_hard"]) == (256, limit, limit)
    bound = limits["max_connections"]
    assert bound < limit
    assert log_events(service, "connections.bounded_by_open_files")
    target = address(service)
    server = http_process(service)
    supervisor = service.process.pid

    with open_files_of_this_process(4_096):
        held = hold(target, silent=bound + 500, half_header=0, idle_keep_alive=0)  # 500 wait in the backlog
        try:
            waiting = probe(target, "/livez", deadline_s=2.0)
            fds_holding = open_fds(server)
        finally:
            release(held)
        recovered = [probe(target, path, deadline_s=10.0) for path in ("/livez", "/readyz")]
    print(
        f"\nopen-file limit {limit} (was 256), connection bound {bound}: {len(held)} held, HTTP process fds"
        f" {fds_holding}; a probe meanwhile: {waiting.status or waiting.error} after {waiting.latency_ms:.0f} ms;"
        f" once released: {[(p.status, round(p.latency_ms, 1)) for p in recovered]} ms"
    )

    assert fds_holding <= limit
    assert [p.status for p in recovered] == [200, 200]
    assert alive(server)
    assert alive(supervisor)
    assert http_process(service) == server, "the HTTP process was replaced"
    with service.client() as client:
        assert client.get("/readyz").json()["status"] == "ready"
