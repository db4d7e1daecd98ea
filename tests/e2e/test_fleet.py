"""A fleet on loopback: a real mlflow server, replicas of the service, and HAProxy in front, under load.

HAProxy gets the health check and retry policy that deploy/stack.yml gives Traefik: `/readyz` every 2 s
(1 s timeout), a server out after one failed check and back after one good one, and a request retried on
another replica when its connection fails or closes before any answer (3 attempts in all). Three phases,
each under steady load through the balancer: a promotion (alias move, every replica polls the registry),
a rolling update (start a new replica, then SIGTERM an old one), and a crash (kill -9 of a replica).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import MlflowServer, RunningService, free_port, use_registry
from tests.load import Answer, Load

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.program("haproxy")]

REFRESH_INTERVAL_S = 3.0
CLIENTS = 4
LOAD_BOUND_S = 60.0  # one generation's load on this loaded machine, as a deadline: a few seconds when quiet

HAPROXY_CONFIG = """
global
    maxconn 512
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # Traefik's retry middleware (deploy/stack.yml): another attempt, on another replica, when the
    # connection fails or closes before an answer; never once an answer has started.
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request

frontend public
    bind 127.0.0.1:{port}
    default_backend fleet

backend fleet
    balance roundrobin
    # Traefik's health check (deploy/stack.yml): GET /readyz every 2 s, out after one failure, in after one success.
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 2s fall 1 rise 1
{servers}
"""


class HAProxy:
    """A real HAProxy on loopback, started by the test and stopped by its PID; servers set at runtime."""

    def __init__(self, root: Path, servers: dict[str, int], *, disabled: set[str]) -> None:
        self.socket_path = root / "haproxy.sock"
        self.port = free_port()
        lines = [
            f"    server {name} 127.0.0.1:{port} check" + (" disabled" if name in disabled else "")
            for name, port in servers.items()
        ]
        config = root / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(socket=self.socket_path, port=self.port, servers="\n".join(lines)))
        self.log_path = root / "haproxy.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.base_url = f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.settimeout(5)
            connection.connect(str(self.socket_path))
            connection.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: UP, DOWN, MAINT..."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        states = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") == "fleet" and fields.get("svname") not in {"FRONTEND", "BACKEND"}:
                states[fields["svname"]] = fields["status"].split(" ")[0]
        return states

    def wait_until(self, expected: dict[str, str], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if all(self.status().get(name) == state for name, state in expected.items()):
                    return
            time.sleep(0.2)
        raise AssertionError(f"haproxy did not see {expected} within {timeout_s} s: {self.status()}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def haproxy_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[HAProxy] = []

    def start(servers: dict[str, int], *, disabled: set[str]) -> HAProxy:
        balancer = HAProxy(tmp_path, servers, disabled=disabled)
        started.append(balancer)
        return balancer

    yield start
    for balancer in started:
        balancer.stop()


def served_version(service: RunningService) -> str | None:
    """The xgboost version a replica serves now, asked directly (not through the balancer)."""
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        return str(httpx.get(f"{service.base_url}/v1/version", timeout=5).json()["models"]["xgboost"]["version"])
    return None


def load_seconds(service: RunningService) -> float:
    """Seconds the replica's workers have spent loading the xgboost model so far (its metric's sum)."""
    text = httpx.get(f"{service.base_url}/metrics", timeout=5).text
    prefix = 'fraud_inference_model_load_duration_seconds_sum{model="xgboost"}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def client_of(answer: Answer) -> str:
    return answer.request_id.rsplit("-", 1)[0]


def failures(answers: list[Answer]) -> list[str]:
    return [f"{a.request_id}: {a.error or a.status} {a.body}" for a in answers if a.status != 200]


def test_a_fleet_behind_haproxy_converges_on_a_promotion_and_survives_sigterm_and_kill_9(
    service_factory, haproxy_factory, mlflow_server: MlflowServer, transactions: pd.DataFrame
) -> None:
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
        "MODELS": "xgboost=fraud-xgboost",
        "WORKERS": "1",
        "REFRESH_INTERVAL_S": str(REFRESH_INTERVAL_S),
        "LOG_LEVEL": "WARNING",
    }
    # The third replica is the rolling update's new one: started now to save time, but out of the balancer
    # (`disabled`) until that phase.
    first, second, third = (service_factory(["serve"], env) for _ in range(3))
    balancer = haproxy_factory(
        {name: int(s.base_url.rsplit(":", 1)[1]) for name, s in zip("abc", (first, second, third), strict=True)},
        disabled={"c"},
    )
    for replica in (first, second, third):
        replica.wait_ready()
    balancer.wait_until({"a": "UP", "b": "UP"})
    instances: list[dict[str, Any]] = json.loads(transactions.head(3).to_json(orient="records"))
    payload = {"model": "xgboost", "instances": instances}
    report: list[str] = []

    # 1. Promotion: move the alias to a new version; every replica finds it by polling the registry.
    use_registry(mlflow_server.tracking_uri)
    registry = MlflowClient(tracking_uri=mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)
    donor = registry.get_model_version_by_alias("fraud-lightgbm", "champion")  # other files: other scores
    new = str(
        registry.create_model_version(
            # A `models:/m-...` source must name its logged model to a tracking server.
            "fraud-xgboost",
            source=donor.source,
            run_id=donor.run_id,
            model_id=donor.source.removeprefix("models:/"),
        ).version
    )
    loaded_before = [load_seconds(s) for s in (first, second)]
    with Load(balancer.base_url, lambda: payload, clients=CLIENTS, max_seconds=120) as load:
        time.sleep(1.0)
        moved_ns = time.monotonic_ns()
        registry.set_registered_model_alias("fraud-xgboost", "champion", new)
        deadline_ns = moved_ns + int((REFRESH_INTERVAL_S + LOAD_BOUND_S) * 1e9)
        while any(served_version(s) != new for s in (first, second)) and time.monotonic_ns() < deadline_ns:
            time.sleep(0.1)
        converged_ns = time.monotonic_ns()
        assert all(served_version(s) == new for s in (first, second)), "the replicas did not converge in time"
        time.sleep(2.0)
    promotion = load.stop()
    loads = [load_seconds(s) - before for s, before in zip((first, second), loaded_before, strict=True)]
    after = [a for a in promotion if a.sent_ns > converged_ns]
    by_client: dict[str, list[Answer]] = defaultdict(list)
    for answer in sorted(promotion, key=lambda a: a.sent_ns):
        by_client[client_of(answer)].append(answer)
    report.append(
        f"promotion: {len(promotion)} requests, {len(failures(promotion))} failed, both replicas on v{new} "
        f"{(converged_ns - moved_ns) / 1e9:.1f} s after the alias moved (REFRESH_INTERVAL_S={REFRESH_INTERVAL_S:g}, "
        f"the new version's load in each replica's worker: {', '.join(f'{s:.1f} s' for s in loads)})"
    )
    assert failures(promotion) == []
    assert after, "no request was sent after the convergence"
    assert {a.body["model_version"] for a in after if a.body} == {new}
    for answers in by_client.values():  # per client: once the new version answered after convergence, only it
        versions = [a.body["model_version"] for a in answers if a.body and a.sent_ns > converged_ns]
        assert versions == [new] * len(versions)

    # 2. Rolling update: a new replica joins first; then an old one gets SIGTERM.
    deadline_ns = time.monotonic_ns() + int((REFRESH_INTERVAL_S + LOAD_BOUND_S) * 1e9)
    while served_version(third) != new and time.monotonic_ns() < deadline_ns:
        time.sleep(0.1)
    assert served_version(third) == new
    with Load(balancer.base_url, lambda: payload, clients=CLIENTS, max_seconds=120) as load:
        time.sleep(1.0)
        balancer.command("enable server fleet/c")
        balancer.wait_until({"c": "UP"})
        assert second.stop() == 0
        balancer.wait_until({"b": "DOWN"})
        time.sleep(2.0)
    rolling = load.stop()
    report.append(f"rolling update (SIGTERM): {len(rolling)} requests, {len(failures(rolling))} failed")
    assert failures(rolling) == []

    # 3. Crash: kill -9 of a replica's main process (its HTTP process and workers die with it).
    with Load(balancer.base_url, lambda: payload, clients=CLIENTS, max_seconds=120) as load:
        time.sleep(1.0)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        balancer.wait_until({"a": "DOWN"})
        time.sleep(2.0)
    crash = load.stop()
    report.append(f"kill -9: {len(crash)} requests, {len(failures(crash))} failed")
    print("\n" + "\n".join(report))
    # Each client has one request in flight: at most those can meet the dying replica, and the balancer
    # retries a connection closed before an answer on another replica.
    assert len(failures(crash)) <= CLIENTS, failures(crash)
    assert {a.body["model_version"] for a in crash if a.body and a.status == 200} == {new}
    assert third.process.poll() is None
