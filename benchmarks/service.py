"""Start and stop the servers under test, and account for their processes' CPU time and memory.

`fraud-inference serve` runs as granian's supervisor (the PID we start), one HTTP process titled
`fraud-inference http` and the pool's workers titled `fraud-inference worker N`; CPU and resident
memory are read from /proc per role. MLflow's scoring server runs in its own session, stopped as a group.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

__all__ = [
    "CpuSeconds",
    "MlflowScoringServer",
    "OurService",
    "ProcessMemory",
    "ServiceStartError",
    "cpu_by_role",
    "free_port",
]

Role = Literal["supervisor", "http", "workers", "other"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
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
    """Resident memory of one process of the service."""

    role: str
    pid: int
    rss_mib: float


class _ServedModel(msgspec.Struct):
    version: str


class _ServedModels(msgspec.Struct):
    models: dict[str, _ServedModel]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_by_role(root_pid: int) -> CpuSeconds:
    """CPU seconds so far of `root_pid` and every live process below it, by role (from their titles)."""
    totals: dict[Role, float] = {"supervisor": 0.0, "http": 0.0, "workers": 0.0, "other": 0.0}
    for pid, title in _tree(root_pid).items():
        totals[_role(root_pid, pid, title)] += _cpu_seconds(pid)
    return CpuSeconds(**totals)


class OurService:
    """`fraud-inference serve` on a free loopback port, or an already running one (`url`, no PIDs)."""

    def __init__(self, base_url: str, process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.process = process
        self._log = log

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/predict"

    @classmethod
    def attach(cls, base_url: str, *, timeout_s: float = 30) -> OurService:
        """A service someone else started: wait for its /readyz."""
        service = cls(base_url)
        _wait_until_ok(f"{service.base_url}/readyz", None, None, timeout_s)
        return service

    @classmethod
    def start(
        cls, tracking_uri: str, *, workers: int, log_dir: Path, log_level: str = "WARNING", timeout_s: float = 120
    ) -> OurService:
        port = free_port()
        env = {
            **_without_mlflow(os.environ),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKERS": str(workers),
            "LOG_LEVEL": log_level,
        }
        log = log_dir / "fraud-inference.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([str(_BIN / "fraud-inference"), "serve"], env=env, stdout=sink, stderr=sink)
        service = cls(f"http://127.0.0.1:{port}", process, log)
        _wait_until_ok(f"{service.base_url}/readyz", process, log, timeout_s)
        return service

    def model_versions(self) -> dict[str, int]:
        """The registry version of each served model, as the service's /v1/version states it."""
        with urllib.request.urlopen(f"{self.base_url}/v1/version", timeout=10) as answer:
            served = msgspec.json.decode(answer.read(), type=_ServedModels)
        return {key: int(model.version) for key, model in served.models.items()}

    def cpu(self) -> CpuSeconds | None:
        return cpu_by_role(self.process.pid) if self.process else None

    def memory(self) -> list[ProcessMemory]:
        """RSS of the HTTP process and of each worker (empty for a service we did not start)."""
        if self.process is None:
            return []
        root = self.process.pid
        found = [
            ProcessMemory(role=title if role != "supervisor" else "supervisor", pid=pid, rss_mib=_rss_mib(pid))
            for pid, title in sorted(_tree(root).items())
            if (role := _role(root, pid, title)) != "other"
        ]
        return sorted(found, key=lambda process: process.role)

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

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url

    @property
    def invocations_url(self) -> str:
        return f"{self.base_url}/invocations"

    @classmethod
    def start(
        cls, model_uri: str, tracking_uri: str, *, workers: int, log_dir: Path, timeout_s: float = 180
    ) -> MlflowScoringServer:
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
        log = log_dir / "mlflow-models-serve.log"
        with log.open("wb") as sink:
            # Its own session: uvicorn's workers are stopped with the group, and only that group.
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink, start_new_session=True)
        server = cls(process, f"http://127.0.0.1:{port}")
        try:
            _wait_until_ok(f"{server.base_url}/ping", process, log, timeout_s)
        except ServiceStartError:
            server.stop()
            raise
        return server

    def cpu(self) -> CpuSeconds:
        """Every process of the server counts as `other`: MLflow's roles are not told apart."""
        return CpuSeconds(other=sum(_cpu_seconds(pid) for pid in [self.process.pid, *_tree(self.process.pid)]))

    def stop(self, timeout_s: float = 20) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # what is left of the group we started
        self.process.wait()


def _without_mlflow(environ: Mapping[str, str]) -> dict[str, str]:
    # seed_demo exports the harness's own MLflow URIs; each server gets exactly the URI it is given.
    return {key: value for key, value in environ.items() if not key.startswith("MLFLOW_")}


def _wait_until_ok(url: str, process: subprocess.Popen[bytes] | None, log: Path | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceStartError(f"{url}: the server exited with {process.returncode}; its log:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise ServiceStartError(f"{url} did not answer 200 within {timeout_s:.0f} s; its log:\n{_tail(log)}")


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


def _tree(root_pid: int) -> dict[int, str]:
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


def _rss_mib(pid: int) -> float:
    try:
        resident_pages = int((Path("/proc") / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError):
        return 0.0
    return resident_pages * _PAGE_BYTES / 2**20
