"""MLServer 1.7.1 as a baseline: its own virtual environment, its model repository, and the running server.

MLServer cannot live in the project's environment (its pins clash with ours), so the harness builds one
virtual environment for it with uv on first use, in `~/.cache/fraud-inference/bench-mlserver`, and reuses
it while its requirements are unchanged. It serves the very model file our service loads (the XGBoost
champion's `model.ubj`, downloaded from the same registry) through `mlserver_xgboost.XGBoostModel`, with
adaptive batching and parallel inference workers, in its own session, stopped as a group.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec

from benchmarks.service import (
    CpuSeconds,
    Role,
    ServerMemory,
    ServiceStartError,
    TimeToReady,
    cpu_by_role,
    free_port,
    server_memory,
    stop_session,
    wait_until_ok,
)

__all__ = [
    "MLSERVER_VERSION",
    "MLServer",
    "ModelFile",
    "mlserver_environment",
    "mlserver_requirements",
    "model_file",
]

MLSERVER_VERSION = "1.7.1"
MAX_BATCH_SIZE = 64
MAX_BATCH_TIME_S = 0.002
"""Adaptive batching as issue 17 sets it: up to 64 requests, waiting at most 2 ms for them."""


class _Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    data: list[float]


class _InferenceResponse(msgspec.Struct):
    outputs: list[_Tensor]


class ModelFile(msgspec.Struct, frozen=True):
    """One registered version's native model file, downloaded from the registry."""

    key: str
    """What our service calls the model (`xgboost`)."""
    name: str
    version: int
    path: Path
    download_s: float


def mlserver_requirements() -> list[str]:
    """What MLServer's environment installs: MLServer, and our own XGBoost and scikit-learn builds.

    `mlserver-xgboost` is installed apart, without its dependencies: it asks for `xgboost`, whose wheel
    pulls a 335 MB CUDA library; `xgboost-cpu` is the same module, as our lock has it.
    """
    return [
        f"mlserver=={MLSERVER_VERSION}",
        # NOTE: uvloop 0.23 kills MLServer 1.7.1's parallel workers; 0.21 is the last that works with it.
        "uvloop==0.21.*",
        _same_as_ours("xgboost"),
        _same_as_ours("sklearn"),
    ]


def mlserver_environment(
    cache: Path | None = None, *, say: Callable[[str], None] = print, timeout_s: float = 900
) -> Path:
    """The `mlserver` executable of MLServer's virtual environment, built with uv in `cache` if needed."""
    cache = cache or _cache_home() / "fraud-inference" / "bench-mlserver"
    venv, stamp = cache / "venv", cache / "requirements.txt"
    requirements = [
        *mlserver_requirements(),
        f"mlserver-xgboost=={MLSERVER_VERSION} (no dependencies)",
        "every module compiled to bytecode",
    ]
    executable = venv / "bin" / "mlserver"
    if executable.exists() and stamp.exists() and stamp.read_text().splitlines() == requirements:
        return executable
    uv = shutil.which("uv")
    if uv is None:
        raise ServiceStartError("MLServer's environment is built with uv: install it (`python3 -m pip install uv`)")
    say(f"building MLServer {MLSERVER_VERSION}'s virtual environment in {venv} (once)")
    shutil.rmtree(venv, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    python = str(venv / "bin" / "python")
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", python, *mlserver_requirements()],
        # NOTE: compiled at install (uv compiles the whole environment), as ours is: MLServer's workers run with
        # `python -B`, so without it every start would compile its modules again, inside its time to ready.
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            python,
            "--compile-bytecode",
            "--no-deps",
            f"mlserver-xgboost=={MLSERVER_VERSION}",
        ],
    ):
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if completed.returncode != 0:
            raise ServiceStartError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    stamp.write_text("\n".join(requirements) + "\n")
    return executable


def model_file(tracking_uri: str, key: str, name: str, alias: str, destination: Path) -> ModelFile:
    """Download the native file of `name@alias` (its MLmodel's `xgboost.data`) into `destination`; `key` is
    what our service calls the model."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model

    started = time.monotonic()
    version = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(name, alias)
    mlflow.set_registry_uri(tracking_uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}", dst_path=str(destination), tracking_uri=tracking_uri
        )
    )
    flavors = Model.load(str(local / "MLmodel")).flavors
    if "xgboost" not in flavors:
        raise ServiceStartError(f"{name} v{version.version} is not an XGBoost model: MLServer's baseline needs one")
    return ModelFile(
        key=key,
        name=name,
        version=int(version.version),
        path=local / flavors["xgboost"]["data"],
        download_s=time.monotonic() - started,
    )


class MLServer:
    """`mlserver start` of one XGBoost model file with adaptive batching and parallel workers."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, model: ModelFile) -> None:
        self.process = process
        self.base_url = base_url
        self.model = model
        self.ready_s: float | None = None

    @property
    def infer_url(self) -> str:
        return f"{self.base_url}/v2/models/{self.model.name}/infer"

    @classmethod
    def start(
        cls, executable: Path, model: ModelFile, *, workers: int, log_dir: Path, timeout_s: float = 180
    ) -> MLServer:
        repository = log_dir / "mlserver-repository"
        repository.mkdir(parents=True, exist_ok=True)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        settings = {
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "metrics_dir": str(repository / ".metrics"),
            "parallel_workers": workers,
            # NOTE: `debug` (on by default) writes an access-log line per request; ours logs none at WARNING.
            "debug": False,
        }
        model_settings = {
            "name": model.name,
            "implementation": "mlserver_xgboost.XGBoostModel",
            "max_batch_size": MAX_BATCH_SIZE,
            "max_batch_time": MAX_BATCH_TIME_S,
            "parameters": {"uri": str(model.path), "version": str(model.version)},
        }
        (repository / "settings.json").write_text(json.dumps(settings, indent=2))
        (repository / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        env = {
            **{key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")},
            # One OpenMP thread per worker, as ours.
            "OMP_NUM_THREADS": "1",
        }
        log = log_dir / "mlserver.log"
        started = time.monotonic()
        with log.open("wb") as sink:
            # Its own session: the parallel workers are stopped with the group, and only that group.
            process = subprocess.Popen(
                [str(executable), "start", str(repository)], cwd=repository, env=env, stdout=sink, stderr=sink,
                start_new_session=True,
            )  # fmt: skip
        server = cls(process, f"http://127.0.0.1:{http_port}", model)
        try:
            server.ready_s = wait_until_ok(
                [f"{server.base_url}/v2/health/ready", f"{server.base_url}/v2/models/{model.name}/ready"],
                process, log, timeout_s, started=started,
            )  # fmt: skip
        except ServiceStartError:
            server.stop()
            raise
        return server

    def fraud_probabilities(self, body: bytes) -> list[float]:
        """The positive class's probability for each row of an OIP `body` asking for `predict_proba`."""
        request = urllib.request.Request(self.infer_url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            output = msgspec.json.decode(answer.read(), type=_InferenceResponse).outputs[0]
        if output.name != "predict_proba" or len(output.shape) != 2:
            raise ServiceStartError(f"MLServer answered {output.name} {output.shape}, not predict_proba [rows, 2]")
        classes = output.shape[1]
        return output.data[classes - 1 :: classes]

    def cpu(self) -> CpuSeconds:
        """MLServer's main process (HTTP, batching, dispatch) as `http`, its inference workers as `workers`."""
        return cpu_by_role(self.process.pid, _role)

    def memory(self) -> ServerMemory:
        return server_memory(f"MLServer {MLSERVER_VERSION}", self.model.key, self.process.pid, _role)

    def time_to_ready(self) -> TimeToReady | None:
        if self.ready_s is None:
            return None
        return TimeToReady(
            server=f"MLServer {MLSERVER_VERSION}", models=self.model.key, seconds=self.ready_s,
            ready_when="/v2/health/ready and /v2/models/NAME/ready 200",
        )  # fmt: skip

    def stop(self, timeout_s: float = 20) -> None:
        stop_session(self.process, timeout_s)


def _role(root_pid: int, pid: int, title: str) -> Role:
    if pid == root_pid:
        return "http"
    # The inference workers are multiprocessing spawn children; its resource tracker is `other`.
    return "workers" if "spawn_main" in title else "other"


def _same_as_ours(module: str) -> str:
    """`distribution==version` of the package that provides `module` in our environment."""
    distribution = importlib.metadata.packages_distributions()[module][0]
    return f"{distribution}=={importlib.metadata.version(distribution)}"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
