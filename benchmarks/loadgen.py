"""Generate HTTP load and check every answer: wrk with a Lua script, or a multi-process Python client.

wrk's Lua `response()` counts each answer that is not a 2xx or whose body lacks the expected marker, and
`done()` prints the counts with wrk's socket errors and latency percentiles as one JSON line, so
nothing is scraped from wrk's human-readable report. Without wrk, the Python client does the same
checks with one keep-alive connection per thread.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec
import numpy as np

from benchmarks.grpc_load import GRPC_SCHEME, grpc_client_process

__all__ = [
    "LoadResult",
    "Loadgen",
    "LoadgenError",
    "find_loadgen",
    "parse_wrk_output",
    "run_beside",
    "run_load",
    "wrk_script",
]

Loadgen = Literal["wrk", "python"]

_JSON_PREFIX = "BENCH_JSON "
PREDICTIONS = '"predictions"'
"""What a 2xx answer must contain by default (/v1/predict and /invocations answers)."""
_TIMEOUT_S = 10
"""A request unanswered this long counts as a timeout (an error): MLflow's 1,000-row answers take ~1 s."""


class LoadgenError(RuntimeError):
    """The load generator could not run at all (e.g. wrk reached no server): every request failed."""


class LoadResult(msgspec.Struct, frozen=True):
    """What one bounded load run measured; latencies in milliseconds, CPU in seconds."""

    tool: Loadgen | Literal["tritonclient.grpc"]
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    """Answers with a status outside 200-299."""
    bad_body: int
    """2xx answers whose body does not contain the expected marker (`"predictions"`, or `"outputs"` for OIP)."""
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    loadgen_cpu_s: float
    """CPU seconds (user + system) the load generator itself used."""

    @property
    def errors(self) -> int:
        return self.non_2xx + self.bad_body + self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def find_loadgen(preferred: Loadgen | Literal["auto"] = "auto") -> Loadgen:
    """Return "wrk" when it is on PATH (installing it with apt as root if needed), else "python"."""
    if preferred != "auto":
        if preferred == "wrk" and shutil.which("wrk") is None:
            raise SystemExit("wrk is not on PATH: install the Debian/Ubuntu package `wrk`, or use --loadgen python")
        return preferred
    if shutil.which("wrk") is not None:
        return "wrk"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("benchmarks: wrk is not on PATH (and installing it needs root): using the Python load generator")
        return "python"
    print("benchmarks: wrk is not on PATH: installing the Debian package wrk with apt-get...", flush=True)
    if _apt_get("install", "-y", "-qq", "wrk") != 0:
        _apt_get("update", "-qq")
        _apt_get("install", "-y", "-qq", "wrk")
    if shutil.which("wrk") is None:
        print("benchmarks: apt-get could not install wrk: using the Python load generator")
        return "python"
    print("benchmarks: installed wrk")
    return "wrk"


def _apt_get(*arguments: str) -> int:
    return subprocess.run(
        ["apt-get", *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False
    ).returncode


def run_load(
    tool: Loadgen,
    url: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    expect: str = PREDICTIONS,
    pause_ms: int = 0,
) -> LoadResult:
    """POST `bodies` in turn to `url` over `connections` keep-alive connections for `seconds` (a `grpc://` URL:
    OIP's ModelInfer through tritonclient.grpc, whatever `tool`). `pause_ms` > 0 (wrk only): each connection waits
    that long after an answer before its next request, so the load is paced at about
    connections / (pause + latency) requests/s instead of as fast as the service answers."""
    if pause_ms and tool != "wrk":
        raise ValueError("a paced load (pause_ms) needs wrk")
    if url.startswith(GRPC_SCHEME):
        return _run_grpc(url, bodies, connections=connections, seconds=seconds)
    if tool == "wrk":
        return _run_wrk(url, bodies, connections=connections, seconds=seconds, expect=expect, pause_ms=pause_ms)
    return _run_python(url, bodies, connections=connections, seconds=seconds, expect=expect)


def run_beside(
    url: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    beside: tuple[str, Sequence[bytes], int, str] | None,
    pause_ms: int = 0,
    beside_pause_ms: int = 0,
) -> tuple[LoadResult, LoadResult | None]:
    """wrk's load of `bodies` on `url`, and meanwhile, from a thread, `beside` = (url, bodies, connections, expect):
    a second wrk, or tritonclient.grpc for a grpc:// URL; both for `seconds`. The second result is None without it.
    `pause_ms` and `beside_pause_ms` pace either load (`run_load`)."""
    with ThreadPoolExecutor(1) as pool:
        other = None
        if beside is not None:
            side_url, side_bodies, side_connections, side_expect = beside
            other = pool.submit(
                run_load, "wrk", side_url, side_bodies, connections=side_connections, seconds=seconds,
                expect=side_expect, pause_ms=beside_pause_ms,
            )  # fmt: skip
        result = run_load("wrk", url, bodies, connections=connections, seconds=seconds, pause_ms=pause_ms)
        return result, None if other is None else other.result()


def wrk_script(bodies: Sequence[bytes], expect: str = PREDICTIONS, pause_ms: int = 0) -> str:
    """The Lua script: cycle through `bodies`, check each answer, report everything as one JSON line; with
    `pause_ms` > 0, wait that long before each request (wrk's `delay()` hook)."""
    literals = ",\n".join(f"[==[{body.decode()}]==]" for body in bodies)
    pause = f"function delay()\n  return {int(pause_ms)}\nend\n" if pause_ms > 0 else ""
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{
{literals}
}}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non_2xx = 0
  bad_body = 0
  position = 0
  prepared = {{}}
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format(nil, nil, nil, body)
  end
end

function request()
  position = position % #prepared + 1
  return prepared[position]
end
{pause}
function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  elseif not string.find(body, '{expect}', 1, true) then
    bad_body = bad_body + 1
  end
end

function done(summary, latency, requests)
  local non, bad = 0, 0
  for _, thread in ipairs(threads) do
    non = non + thread:get("non_2xx")
    bad = bad + thread:get("bad_body")
  end
  local e = summary.errors
  io.write(string.format(
    '{_JSON_PREFIX}{{"requests":%d,"duration_us":%.0f,"non_2xx":%d,"bad_body":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f}}\\n',
    summary.requests, summary.duration, non, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def parse_wrk_output(stdout: str, *, loadgen_cpu_s: float = 0.0) -> LoadResult:
    """Read the JSON line the script's `done()` printed; raise ValueError naming the output if none."""
    for line in stdout.splitlines():
        if line.startswith(_JSON_PREFIX):
            figures = json.loads(line[len(_JSON_PREFIX) :])
            break
    else:
        raise ValueError(f"wrk printed no {_JSON_PREFIX.strip()} line (did the Lua script fail?):\n{stdout}")
    duration_s = figures["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        requests=figures["requests"],
        duration_s=duration_s,
        requests_per_s=figures["requests"] / duration_s if duration_s > 0 else 0.0,
        p50_ms=figures["p50_us"] / 1e3,
        p90_ms=figures["p90_us"] / 1e3,
        p99_ms=figures["p99_us"] / 1e3,
        max_ms=figures["max_us"] / 1e3,
        non_2xx=figures["non_2xx"],
        bad_body=figures["bad_body"],
        connect_errors=figures["connect"],
        read_errors=figures["read"],
        write_errors=figures["write"],
        timeouts=figures["timeout"],
        loadgen_cpu_s=loadgen_cpu_s,
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_wrk(
    url: str, bodies: Sequence[bytes], *, connections: int, seconds: float, expect: str, pause_ms: int = 0
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        script = Path(scratch) / "check.lua"
        script.write_text(wrk_script(bodies, expect, pause_ms))
        # NOTE: one wrk thread leaves the second core to the service; its CPU share is reported to show
        # it was not the bottleneck. CPU of waited-for children is how wrk's own use is measured.
        before = _children_cpu_s()
        completed = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={_TIMEOUT_S}s",
             "-s", str(script), url],
            capture_output=True, text=True, check=False, timeout=seconds + _TIMEOUT_S + 30,
        )  # fmt: skip
        cpu_s = _children_cpu_s() - before
    if completed.returncode != 0:
        raise LoadgenError(f"wrk exited with {completed.returncode}: {completed.stderr or completed.stdout}")
    return parse_wrk_output(completed.stdout, loadgen_cpu_s=cpu_s)


def _run_grpc(url: str, bodies: Sequence[bytes], *, connections: int, seconds: float) -> LoadResult:
    parts, cpu_s = _spawn_clients(grpc_client_process, url, bodies, connections=connections, seconds=seconds)
    if all(part.connect_errors == len(part.latencies_s) for part in parts):
        raise LoadgenError(f"no gRPC call to {url} was answered")
    return _load_result("tritonclient.grpc", parts, seconds=seconds, cpu_s=cpu_s)


class ClientCounts(msgspec.Struct):
    """What one client process of a Python load generator (HTTP or gRPC) counted."""

    latencies_s: list[float]
    elapsed_s: float
    non_2xx: int = 0
    """HTTP: a status outside 2xx; gRPC: a status other than OK."""
    bad_body: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    timeouts: int = 0


def _run_python(url: str, bodies: Sequence[bytes], *, connections: int, seconds: float, expect: str) -> LoadResult:
    parts, cpu_s = _spawn_clients(_client_process, url, bodies, connections=connections, seconds=seconds,
                                  extra=(expect,))  # fmt: skip
    return _load_result("python", parts, seconds=seconds, cpu_s=cpu_s)


def _spawn_clients(
    client: Callable[..., None],
    url: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    extra: tuple[object, ...] = (),
) -> tuple[list[ClientCounts], float]:
    """Run `client(url, bodies, threads, seconds, *extra, queue)` in up to 4 processes sharing `connections`; their
    counts, and the CPU seconds they used."""
    processes = min(connections, os.cpu_count() or 1, 4)
    threads_each = [connections // processes + (1 if n < connections % processes else 0) for n in range(processes)]
    # NOTE: spawn, not fork: the harness may have run OpenMP (training, MLflow) before, and forked children
    # of an OpenMP process can hang (gRPC's threads do not survive a fork either).
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    before = _children_cpu_s()
    workers = [
        context.Process(target=client, args=(url, list(bodies), threads, seconds, *extra, queue), daemon=True)
        for threads in threads_each
    ]
    for worker in workers:
        worker.start()
    parts = [msgspec.json.decode(queue.get(), type=ClientCounts) for _ in workers]
    for worker in workers:
        worker.join(timeout=_TIMEOUT_S + 5)
    return parts, _children_cpu_s() - before


def _load_result(tool: Loadgen | Literal["tritonclient.grpc"], parts: list[ClientCounts], *, seconds: float,
                 cpu_s: float) -> LoadResult:  # fmt: skip
    latencies_ms = np.array([latency for part in parts for latency in part.latencies_s]) * 1e3
    p50, p90, p99, top = np.percentile(latencies_ms, [50, 90, 99, 100]) if latencies_ms.size else (0.0,) * 4
    return LoadResult(
        tool=tool,
        requests=int(latencies_ms.size),
        duration_s=seconds,
        requests_per_s=sum(len(part.latencies_s) / part.elapsed_s for part in parts if part.elapsed_s > 0),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(top),
        non_2xx=sum(part.non_2xx for part in parts),
        bad_body=sum(part.bad_body for part in parts),
        connect_errors=sum(part.connect_errors for part in parts),
        read_errors=sum(part.read_errors for part in parts),
        write_errors=0,
        timeouts=sum(part.timeouts for part in parts),
        loadgen_cpu_s=cpu_s,
    )


def _client_process(
    url: str, bodies: list[bytes], threads: int, seconds: float, expect: str, queue: SimpleQueue[bytes]
) -> None:
    """One client process: `threads` keep-alive connections until `seconds` have passed."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    counts = ClientCounts(latencies_s=[], elapsed_s=0.0)
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + seconds

    def connection_loop(offset: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S)
        position = offset
        while time.perf_counter() < deadline:
            body = bodies[position % len(bodies)]
            position += 1
            sent = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                answer = connection.getresponse()
                payload = answer.read()
            except TimeoutError:
                failure = "timeouts"
            except ConnectionRefusedError:
                failure = "connect_errors"
            except (OSError, http.client.HTTPException):
                failure = "read_errors"
            else:
                failure = ""
            received = time.perf_counter()
            with lock:
                if failure:
                    setattr(counts, failure, getattr(counts, failure) + 1)
                    connection.close()
                    connection = http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S)
                    continue
                counts.latencies_s.append(received - sent)
                if not 200 <= answer.status <= 299:
                    counts.non_2xx += 1
                elif expect.encode() not in payload:
                    counts.bad_body += 1
        connection.close()

    pool = [threading.Thread(target=connection_loop, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    counts.elapsed_s = time.perf_counter() - started
    queue.put(msgspec.json.encode(counts))
