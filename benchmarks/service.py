"""Start and stop the servers under test, and account for their processes' CPU time and memory.

`fraud-inference serve` runs as granian's supervisor (the PID we start), one HTTP process titled
`fraud-inference http` and the pool's workers titled `fraud-inference worker N`; CPU and memory are read
from /proc per role. MLflow's scoring server (and MLServer, `benchmarks.mlserver`) run in their own
session, stopped as a group. Each server records how long it took from its start to ready.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import msgspec

__all__ = [
    "CpuSeconds",
    "Measured",
    "MlflowScoringServer",
    "OurService",
    "ProcessMemory",
    "Role",
    "ServerMemory",
    "ServiceStartError",
    "TimeToReady",
    "cpu_by_role",
    "free_port",
    "process_tree",
    "server_memory",
    "stop_session",
    "wait_until_ok",
]

Role = Literal["supervisor", "http", "workers", "other"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BIN = Path(sys.executable).parent


class ServiceStartError(RuntimeError):
    """A server under test exited or never became ready; the message holds its log's tail."""


class CpuSeconds(msgspec.Struct, frozen=True):
    """CPU seconds (user + system) of a server's processes, by role."""

    supervisor: float = 0.0
    http: float = 0.0
    workers: float = 0.0
    other: float = 0.0

    @property
    def total(self) -> float:
        return self.supervisor + self.http + self.workers + self.other

    def minus(self, earlier: CpuSeconds) -> CpuSeconds:
        return CpuSeconds(
            supervisor=self.supervisor - earlier.supervisor,
            http=self.http - earlier.http,
            workers=self.workers - earlier.workers,
            other=self.other - earlier.other,
        )


class ProcessMemory(msgspec.Struct, frozen=True):
    """Memory of one process of a server, from /proc/PID/smaps_rollup."""

    role: str
    """What the process does for its server (`http`, `workers`, ...): the report sums by it."""
    title: str
    pid: int
    rss_mib: float
    """Resident set: pages shared with other processes count in each of them."""
    uss_mib: float
    """Unique set: the process's private pages, what ending it would give back."""
    pss_mib: float
    """Proportional set: private pages plus each shared page divided by the processes that map it."""


class ServerMemory(msgspec.Struct, frozen=True):
    """Every process of one server, read once while it served its models."""

    server: str
    models: str
    """Which models it held, e.g. `xgboost, lightgbm, sklearn`."""
    processes: list[ProcessMemory]

    @property
    def uss_mib(self) -> float:
        return sum(process.uss_mib for process in self.processes)

    @property
    def pss_mib(self) -> float:
        """The server's footprint with shared pages counted once (the shares of pages that processes outside
        it also map are left to those)."""
        return sum(process.pss_mib for process in self.processes)

    @property
    def rss_mib(self) -> float:
        return sum(process.rss_mib for process in self.processes)


class TimeToReady(msgspec.Struct, frozen=True):
    """Seconds from a server's process start to its readiness answer, models already in the registry."""

    server: str
    models: str
    seconds: float
    ready_when: str
    """What was polled, e.g. `/readyz 200`."""


class Measured(Protocol):
    """A server whose footprint the report shows: its processes' memory and its time to ready."""

    def memory(self) -> ServerMemory | None: ...

    def time_to_ready(self) -> TimeToReady | None: ...


class _ServedModel(msgspec.Struct):
    version: str


class _ServedModels(msgspec.Struct):
    models: dict[str, _ServedModel]


class _Prediction(msgspec.Struct):
    fraud_probability: float


class _Predictions(msgspec.Struct):
    predictions: list[_Prediction]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_by_role(root_pid: int, role_of: Callable[[int, int, str], Role] | None = None) -> CpuSeconds:
    """CPU seconds so far of `root_pid` and every live process below it, by role (from their titles:
    fraud-inference's by default)."""
    role_of = role_of or _role
    totals: dict[Role, float] = {"supervisor": 0.0, "http": 0.0, "workers": 0.0, "other": 0.0}
    for pid, title in process_tree(root_pid).items():
        totals[role_of(root_pid, pid, title)] += _cpu_seconds(pid)
    return CpuSeconds(**totals)


def server_memory(server: str, models: str, root_pid: int, role_of: Callable[[int, int, str], str]) -> ServerMemory:
    """The memory of `root_pid` and every live process below it, each with its role."""
    processes = [
        ProcessMemory(role=role_of(root_pid, pid, title), title=title[:120], pid=pid, **_memory_mib(pid))
        for pid, title in sorted(process_tree(root_pid).items())
    ]
    return ServerMemory(server=server, models=models, processes=sorted(processes, key=lambda p: (p.role, p.pid)))


class OurService:
    """`fraud-inference serve` on a free loopback port, or an already running one (`url`, no PIDs)."""

    def __init__(
        self,
        base_url: str,
        process: subprocess.Popen[bytes] | None = None,
        log: Path | None = None,
        *,
        models: str = "",
        ready_s: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.process = process
        self.models = models
        self.grpc_target = ""
        """host:port of its gRPC server (OIP over gRPC), when we started it."""
        self.ready_s = ready_s
        """Seconds from `fraud-inference serve`'s start to /readyz 200 (None for a service we did not start)."""
        self._log = log

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/predict"

    @classmethod
    def attach(cls, base_url: str, *, timeout_s: float = 30) -> OurService:
        """A service someone else started: wait for its /readyz."""
        service = cls(base_url)
        wait_until_ok([f"{service.base_url}/readyz"], None, None, timeout_s)
        return service

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        *,
        workers: int,
        log_dir: Path,
        models: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
        log_level: str | None = None,
        timeout_s: float = 120,
        executable: Path | None = None,
    ) -> OurService:
        """Serve the registry's models (`models`: key -> MODELS name such as `fraud-xgboost@champion`; the
        service's default, the three demo models, when None) and wait for /readyz. `settings` are more of the
        service's variables, e.g. `{"PYFUNC": "allow"}`; `executable` another build's `fraud-inference` (another
        checkout's `.venv/bin/fraud-inference`), this environment's when None. `log_level`: LOG_LEVEL, `serve`'s
        default (INFO: the access log on) when None; WARNING is the lean configuration."""
        port = free_port()
        env = {
            **_without_mlflow(os.environ),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "GRPC_PORT": str(grpc_port := free_port()),
            "WORKERS": str(workers),
            **({"LOG_LEVEL": log_level} if log_level is not None else {}),
            **(settings or {}),
        }
        if models is not None:
            env["MODELS"] = ",".join(f"{key}={name}" for key, name in models.items())
            env["DEFAULT_MODEL"] = next(iter(models))
        log = log_dir / f"fraud-inference-{port}.log"
        started = time.monotonic()
        with log.open("wb") as sink:
            command = [str(executable or _BIN / "fraud-inference"), "serve"]
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
        service = cls(f"http://127.0.0.1:{port}", process, log)
        service.grpc_target = f"127.0.0.1:{grpc_port}"
        try:
            service.ready_s = wait_until_ok([f"{service.base_url}/readyz"], process, log, timeout_s, started=started)
            service.models = ", ".join(service.model_versions())
        except (ServiceStartError, OSError):
            service.stop()
            raise
        return service

    def model_versions(self) -> dict[str, int]:
        """The registry version of each served model, as the service's /v1/version states it."""
        with urllib.request.urlopen(f"{self.base_url}/v1/version", timeout=10) as answer:
            served = msgspec.json.decode(answer.read(), type=_ServedModels)
        return {key: int(model.version) for key, model in served.models.items()}

    def fraud_probabilities(self, model: str, records: list[dict[str, float | int]]) -> list[float]:
        """The service's answer for `records` through /v1/predict, to check another server's answers against."""
        body = msgspec.json.encode({"model": model, "instances": records})
        request = urllib.request.Request(self.predict_url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            predictions = msgspec.json.decode(answer.read(), type=_Predictions).predictions
        return [prediction.fraud_probability for prediction in predictions]

    def cpu(self) -> CpuSeconds | None:
        return cpu_by_role(self.process.pid) if self.process else None

    def memory(self) -> ServerMemory | None:
        """Every process of the service by role (None for a service we did not start)."""
        if self.process is None:
            return None
        return server_memory("fraud-inference", self.models, self.process.pid, _role)

    def time_to_ready(self) -> TimeToReady | None:
        if self.ready_s is None:
            return None
        return TimeToReady(server="fraud-inference", models=self.models, seconds=self.ready_s, ready_when="/readyz 200")

    def stop(self, timeout_s: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class MlflowScoringServer:
    """`mlflow models serve --env-manager local` of one registered model, in its own session."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, models: str) -> None:
        self.process = process
        self.base_url = base_url
        self.models = models
        self.ready_s: float | None = None

    @property
    def invocations_url(self) -> str:
        return f"{self.base_url}/invocations"

    @classmethod
    def start(
        cls,
        model_uri: str,
        tracking_uri: str,
        *,
        model_key: str,
        workers: int,
        log_dir: Path,
        timeout_s: float = 180,
    ) -> MlflowScoringServer:
        """Serve `model_uri` (the model our service calls `model_key`) and wait for /ping."""
        port = free_port()
        env = {
            **_without_mlflow(os.environ),
            "MLFLOW_TRACKING_URI": tracking_uri,
            # NOTE: MLflow starts `uvicorn` from PATH; one OpenMP thread per worker, as ours, to be fair.
            "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
        }
        command = [str(_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]  # fmt: skip
        log = log_dir / f"mlflow-models-serve-{model_key}.log"
        started = time.monotonic()
        with log.open("wb") as sink:
            # Its own session: uvicorn's workers are stopped with the group, and only that group.
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink, start_new_session=True)
        server = cls(process, f"http://127.0.0.1:{port}", model_key)
        try:
            # NOTE: each uvicorn worker builds its app (and so answers /ping) only after loading the model:
            # the first 200 means one of the workers holds it; they load side by side.
            server.ready_s = wait_until_ok([f"{server.base_url}/ping"], process, log, timeout_s, started=started)
        except ServiceStartError:
            server.stop()
            raise
        return server

    def cpu(self) -> CpuSeconds:
        """The `mlflow` CLI and uvicorn's supervisor as `supervisor`, uvicorn's workers (HTTP and scoring) as
        `workers`."""
        return cpu_by_role(self.process.pid, _mlflow_role)

    def memory(self) -> ServerMemory:
        return server_memory("mlflow models serve", self.models, self.process.pid, _mlflow_role)

    def time_to_ready(self) -> TimeToReady | None:
        if self.ready_s is None:
            return None
        return TimeToReady(
            server="mlflow models serve", models=self.models, seconds=self.ready_s,
            ready_when="/ping 200 (a worker has loaded the model)",
        )  # fmt: skip

    def stop(self, timeout_s: float = 20) -> None:
        stop_session(self.process, timeout_s)


def stop_session(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """Stop the session `process` leads (started with `start_new_session=True`): SIGTERM, then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # what is left of the group we started
    process.wait()


def _without_mlflow(environ: Mapping[str, str]) -> dict[str, str]:
    # seed_demo exports the harness's own MLflow URIs; each server gets exactly the URI it is given.
    return {key: value for key, value in environ.items() if not key.startswith("MLFLOW_")}


def wait_until_ok(
    urls: Sequence[str],
    process: subprocess.Popen[bytes] | None,
    log: Path | None,
    timeout_s: float,
    *,
    started: float | None = None,
) -> float:
    """Poll `urls` in turn until each has answered 200; return the seconds since `started` (monotonic clock,
    default now). Raise `ServiceStartError` with the log's tail if the process exits or time runs out."""
    started = time.monotonic() if started is None else started
    deadline = time.monotonic() + timeout_s
    waiting = list(urls)
    while waiting and time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceStartError(
                f"{waiting[0]}: the server exited with {process.returncode}; its log:\n{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(waiting[0], timeout=2) as answer:
                if answer.status == 200:
                    waiting.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    if waiting:
        raise ServiceStartError(f"{waiting[0]} did not answer 200 within {timeout_s:.0f} s; its log:\n{_tail(log)}")
    return time.monotonic() - started


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None:
        return "(not started by the harness)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _role(root_pid: int, pid: int, title: str) -> Role:
    if pid == root_pid:
        return "supervisor"
    if title.startswith("fraud-inference http"):
        return "http"
    if title.startswith("fraud-inference worker"):
        return "workers"
    return "other"


def _mlflow_role(root_pid: int, pid: int, title: str) -> Role:
    if "spawn_main" in title:
        return "workers"  # uvicorn's workers: HTTP and scoring
    if pid == root_pid or "uvicorn" in title:
        return "supervisor"  # the `mlflow` CLI and uvicorn's supervisor
    return "other"  # multiprocessing's resource tracker


def process_tree(root_pid: int) -> dict[int, str]:
    """`root_pid` and every live process below it, with its title (the command line `ps` shows)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        try:
            found[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        stack.extend(children.get(pid, []))
    return found


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from the field after the command name (state first), or [] if the process is gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    # utime and stime are fields 14 and 15 of stat(5); the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS if fields else 0.0


def _memory_mib(pid: int) -> dict[str, float]:
    """RSS, USS and PSS of `pid` in MiB from /proc/PID/smaps_rollup (zeros if the process is gone)."""
    kib: dict[str, int] = {}
    try:
        for line in (Path("/proc") / str(pid) / "smaps_rollup").read_text().splitlines()[1:]:
            field, _, value = line.partition(":")
            kib[field] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {"rss_mib": 0.0, "uss_mib": 0.0, "pss_mib": 0.0}
    private = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0) + kib.get("Private_Hugetlb", 0)
    return {"rss_mib": kib.get("Rss", 0) / 1024, "uss_mib": private / 1024, "pss_mib": kib.get("Pss", 0) / 1024}
