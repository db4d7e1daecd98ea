"""Shared fixtures: a real MLflow registry with real demo models, and helpers to run the real service."""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pandas as pd
import pytest

from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import embedded_registry, seed_demo

REPO = Path(__file__).resolve().parents[1]
FRAUD_INFERENCE = str(Path(sys.executable).parent / "fraud-inference")


# The Debian package each `program` marker's program comes from (.ci/run installs them before `-m program`).
PROGRAM_PACKAGES = {"promtool": "prometheus", "haproxy": "haproxy", "wrk": "wrk", "docker": "docker.io"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `program(name)` fails, never skips, when `name` is missing: selecting it means it must run."""
    for marker in item.iter_markers("program"):
        (name,) = marker.args
        if shutil.which(name) is None:
            pytest.fail(f"{name} is not on PATH: install the Debian package `{PROGRAM_PACKAGES[name]}` (.ci/run does)")


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FRAUD_INFERENCE_HOME whose embedded SQLite registry holds the three demo models (small data)."""
    home = tmp_path_factory.mktemp("fraud-inference-home")
    tracking_uri, artifact_location = embedded_registry(home)
    with pytest.MonkeyPatch.context() as patch:
        # seed_demo sets MLflow's process-wide URIs (and their variables): keep them out of other tests.
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            patch.delenv(variable, raising=False)
        seed_demo(tracking_uri, artifact_location=artifact_location, progress=lambda _line: None, n_rows=6_000)
    return home


@pytest.fixture(scope="session")
def demo_registry(demo_home: Path) -> str:
    """The tracking URI of the seeded demo registry."""
    return embedded_registry(demo_home)[0]


@pytest.fixture(scope="session")
def transactions() -> pd.DataFrame:
    """Rows of the demo data set that the models never trained on (another seed)."""
    features, _labels = make_transactions(500, seed=99)
    return features


def run_cli(
    command: list[str], env: Mapping[str, str], cwd: Path, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `fraud-inference <command>` to completion with only `env` (and a PATH) in its environment."""
    return subprocess.run(
        [FRAUD_INFERENCE, *command], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
        timeout=timeout_s, cwd=cwd,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RunningService:
    """A `fraud-inference` process started by a test, stopped by PID when the test ends."""

    def __init__(self, process: subprocess.Popen[str], base_url: str, log_path: Path, grpc_target: str = "") -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path
        self.grpc_target = grpc_target
        """`host:port` of its gRPC server (GRPC=on), chosen as its HTTP port is."""

    def client(self, **options: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30.0, **options)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        # A bound, not a timing: `serve` loads and gates every model before it listens (seconds on a busy machine).
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"the service exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # a polling interval: a start is seen sooner, the deadline is unchanged
        raise AssertionError(f"the service was not ready within {timeout_s} s:\n{self.log()}")

    def wait_listening(self, timeout_s: float = 180.0) -> None:
        """Until the HTTP process answers at all (any status): granian opens its socket only once the app's
        lifespan has started the pool, so the port refuses connections for the first seconds, whatever the
        registry does."""
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"the service exited with {self.process.returncode}:\n{self.log()}")
                try:
                    client.get("/livez")
                    return
                except httpx.TransportError:
                    time.sleep(0.05)
        raise AssertionError(f"the service did not listen within {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


# Compiled trees (COMPILED_TREES=on) are cached under FRAUD_INFERENCE_HOME. Every `serve` of the session that names
# no home of its own shares this one, as the restarts of one deployment do: each model compiles once per session
# (~3 s of gcc), not once per test.
_SHARED_HOME = Path(tempfile.mkdtemp(prefix="fraud-inference-test-home-"))
atexit.register(shutil.rmtree, _SHARED_HOME, True)


def start_service(
    command: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    port: int | None = None,
    open_files: tuple[int, int] | None = None,
) -> RunningService:
    """Start `fraud-inference <command>` on a free loopback port, logging to a file in `log_dir`.

    `open_files` (soft, hard) is the command's RLIMIT_NOFILE, set in the child before it runs.
    """
    port = port or free_port()
    log_path = log_dir / f"service-{port}.log"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # tests set MLflow globals
    # A free gRPC port too: the default (8001) would be shared by every service of the session.
    grpc_port = env.get("GRPC_PORT") or str(free_port())
    full_env = {**inherited, "HOST": "127.0.0.1", "PORT": str(port), "GRPC_PORT": grpc_port, "LOG_LEVEL": "INFO", **env}
    if command[:1] == ["serve"] and "FRAUD_INFERENCE_HOME" not in env:
        full_env["FRAUD_INFERENCE_HOME"] = str(_SHARED_HOME)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [FRAUD_INFERENCE, *command],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=log_dir,
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files),
        )
    return RunningService(process, f"http://127.0.0.1:{port}", log_path, f"127.0.0.1:{grpc_port}")


@contextlib.contextmanager
def serving(env: Mapping[str, str], log_dir: Path, *, timeout_s: float = 180.0) -> Iterator[RunningService]:
    """`fraud-inference serve` with `env`, ready (within `timeout_s`, a bound) for the block, stopped after it."""
    service = start_service(["serve"], env, log_dir)
    try:
        service.wait_ready(timeout_s)
        yield service
    finally:
        service.stop()


DEMO_SERVICE_BODY_READ_TIMEOUT_S = 2.0
"""BODY_READ_TIMEOUT_S of `demo_service`: a body that stops arriving is refused within seconds."""


@pytest.fixture(scope="session")
def demo_service(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """One `serve` of the demo registry for the whole session, shared by the modules whose tests only send
    requests and read the answers, `/metrics`, the log and the process tree.

    Its users never stop it, signal it, kill its processes, or change its registry (those tests start their own
    with `service_factory`), and read its counters as deltas: every user's requests are counted. Settings:
    WORKERS=2 (tests count the worker processes), DEFAULT_MODEL=lightgbm (the docs' example follows it),
    BODY_READ_TIMEOUT_S=`DEMO_SERVICE_BODY_READ_TIMEOUT_S`. A start costs tens of seconds on a busy machine (every
    worker imports the libraries and loads every model; the parity gate loads each through MLflow first): five
    modules each started one of their own before.
    """
    env = {
        "MLFLOW_TRACKING_URI": demo_registry,
        "WORKERS": "2",
        "DEFAULT_MODEL": "lightgbm",
        "BODY_READ_TIMEOUT_S": str(DEMO_SERVICE_BODY_READ_TIMEOUT_S),
    }
    # A bound, not a timing: the session's first `serve` also compiles the demo's trees into the shared home.
    with serving(env, tmp_path_factory.mktemp("demo-service"), timeout_s=240) as service:
        yield service


@pytest.fixture(scope="session")
def real_service(
    real_models: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """`fraud-inference serve` of every shape in `real_models` (`serve_env`: PYFUNC=allow, EXTRA_FEATURES=ignore, two
    workers), started once for the session and shared as `demo_service` is (read only, counters as deltas)."""
    from tests.real_models import serve_env

    tracking_uri, names = real_models
    # A bound, not a timing: twelve models, each gated through MLflow's loader and compiled, then loaded per worker.
    with serving(serve_env(tracking_uri, names), tmp_path_factory.mktemp("real-service"), timeout_s=240) as service:
        yield service


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[object]:
    """Start services for one test; whatever is still running at the end is stopped, then killed."""
    started: list[RunningService] = []

    def start(
        command: list[str],
        env: Mapping[str, str],
        *,
        port: int | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> RunningService:
        service = start_service(command, env, tmp_path, port=port, open_files=open_files)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, with its command line (as `ps` shows process titles)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        try:
            found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        stack.extend(children.get(child, []))
    return found


def http_process(service: RunningService) -> int:
    """The PID of the service's HTTP process (granian's worker, which owns the pool)."""
    (pid,) = [pid for pid, title in descendants(service.process.pid).items() if title == "fraud-inference http"]
    return pid


def alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def left_alive(processes: Mapping[int, str], timeout_s: float = 30.0) -> dict[int, str]:
    """Those of `processes` (pid -> title) still alive once every one has exited, or at the latest `timeout_s` on."""
    deadline_ns = time.monotonic_ns() + round(timeout_s * 1e9)
    while (
        living := {pid: title for pid, title in processes.items() if alive(pid)}
    ) and time.monotonic_ns() < deadline_ns:
        time.sleep(0.05)
    return living


@pytest.fixture
def private_registry(demo_home: Path, tmp_path: Path) -> str:
    """A copy of the demo registry that a test may change (new versions, moved aliases) alone."""
    import shutil

    home = tmp_path / "private-home"
    home.mkdir()
    shutil.copy2(demo_home / "mlflow.db", home / "mlflow.db")
    # Artifact URIs in the copy still point at the demo artifacts: read-only use, and new runs get new folders.
    return f"sqlite:///{home / 'mlflow.db'}"


class MlflowServer:
    """A real `mlflow server --serve-artifacts` on a loopback port, in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.tracking_uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with (self.root / "server.log").open("ab") as log:
            # NOTE: its own session: mlflow server starts helper processes; stop() ends the whole group.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.tracking_uri}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"mlflow server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


@contextlib.contextmanager
def seeded_mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A started `MlflowServer` in `root` holding the demo models, stopped on exit."""
    server = MlflowServer(root)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
                patch.delenv(variable, raising=False)
            seed_demo(server.tracking_uri, artifact_location=None, progress=lambda _line: None, n_rows=4_000)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on loopback holding the demo models (artifacts served over HTTP)."""
    with seeded_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session")
def shared_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """As `mlflow_server`, started and seeded once for the session, for tests that only read it (serve from it,
    refresh against it): never stop it, pause it or register in it (those tests take the module's `mlflow_server`).
    A start and a seed over HTTP cost tens of seconds on a busy machine."""
    with seeded_mlflow_server(tmp_path_factory.mktemp("shared-mlflow-server")) as server:
        yield server


def use_registry(tracking_uri: str) -> None:
    """Point MLflow's process-wide URIs at `tracking_uri` before a `models:/` load in a test.

    Both, not only the registry: a version's source (`models:/m-...`) is resolved through the tracking
    server, and another test may have left the tracking URI at a server that is gone.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


@pytest.fixture(scope="session")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A SQLite registry holding one model of every shape fraud teams register (`tests/real_models.py`).

    Returns the tracking URI and, per shape key, the registered name (each version 1, alias champion).
    """
    from tests.real_models import register_real_models

    home = tmp_path_factory.mktemp("real-models")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            patch.delenv(variable, raising=False)
        names = register_real_models(tracking_uri, home)
    return tracking_uri, names


def slow_xgboost_copy(model_dir: Path, destination: Path, *, repeat: int = 100) -> Path:
    """Copy an XGBoost model directory (MLmodel, model.ubj) to `destination`, its trees repeated `repeat` times.

    A real model whose scoring is slow: no sleep is injected anywhere, it is an ordinary model file in the
    same format, scored by the same native call, only bigger (the demo model's 200 trees x 100: 10,000 rows
    take about 3 s on a quiet machine here).
    """
    import json
    import shutil

    import xgboost

    shutil.copytree(model_dir, destination)
    model_file = destination / "model.ubj"
    model = json.loads(xgboost.Booster(model_file=str(model_file)).save_raw("json"))
    trees_model = model["learner"]["gradient_booster"]["model"]
    trees = [tree for _ in range(repeat) for tree in trees_model["trees"]]
    repeated = [{**tree, "id": n} for n, tree in enumerate(trees)]
    trees_model["trees"] = repeated
    trees_model["tree_info"] = trees_model["tree_info"] * repeat
    trees_model["iteration_indptr"] = list(range(len(repeated) + 1))
    trees_model["gbtree_model_param"]["num_trees"] = str(len(repeated))
    slow = xgboost.Booster()
    slow.load_model(bytearray(json.dumps(model).encode()))
    slow.save_model(str(model_file))
    return destination
