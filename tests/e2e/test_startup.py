"""What a person sees while the real service starts: one readable ready line, and a registry outage told briefly."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FRAUD_INFERENCE, RunningService, descendants, free_port

pytestmark = pytest.mark.slow


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_ready_event_names_the_url_the_served_versions_and_the_docs(demo_service: RunningService) -> None:
    service = demo_service
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and '"service.ready"' not in service.log():
        time.sleep(0.2)
    (ready,) = [line for line in json_lines(service.log()) if line["event"] == "service.ready"]
    assert ready["url"] == service.base_url
    assert ready["docs"] == f"{service.base_url}/docs"
    assert ready["models"] == {
        key: {"name": f"fraud-{key}", "version": "1", "selected_by": "alias:champion"}
        for key in ("xgboost", "lightgbm", "sklearn")
    }
    with service.client() as client:
        assert client.get("/docs").status_code == 200


def test_on_a_terminal_the_ready_line_is_plain_text(demo_registry: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": demo_registry, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "1",
        "GRPC_PORT": str(grpc_port := free_port()),
    }  # fmt: skip
    primary, secondary = pty.openpty()
    process = subprocess.Popen([FRAUD_INFERENCE, "serve"], env=env, stdout=secondary, stderr=secondary, cwd=tmp_path)
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b"fraud-inference ready" not in output:
            if select.select([primary], [], [], 1.0)[0]:
                try:
                    output += os.read(primary, 65536)
                except OSError:  # the terminal closed: the service exited
                    break
    finally:
        process.terminate()
        process.wait(timeout=30)
        os.close(primary)
    (line,) = [line for line in output.decode().splitlines() if line.startswith("fraud-inference ready")]
    assert line == (
        f"fraud-inference ready at http://127.0.0.1:{port}, gRPC at 127.0.0.1:{grpc_port}: serving xgboost "
        "(fraud-xgboost v1), "
        f"lightgbm (fraud-lightgbm v1), sklearn (fraud-sklearn v1); docs at http://127.0.0.1:{port}/docs"
    )


def test_an_unreachable_registry_is_one_warning_per_attempt_and_clients_do_not_see_its_address(
    service_factory,
) -> None:
    registry_port = free_port()  # nothing listens there
    tracking_uri = f"http://fraud:s3cret@127.0.0.1:{registry_port}"
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": tracking_uri, "WORKERS": "1"})
    deadline = time.monotonic() + 90
    attempts: list[dict[str, object]] = []
    with service.client() as client:
        while time.monotonic() < deadline and len(attempts) < 3:
            time.sleep(0.5)
            attempts = [line for line in json_lines(service.log()) if line["event"] == "startup.registry_unavailable"]
        # The retries start before the port opens (seen on a loaded CI machine: refused after the third attempt).
        service.wait_listening()
        ready = client.get("/readyz")
        predict = client.post("/v1/predict", json={"instances": [{"amount": 1.0}]})
    assert [line["attempt"] for line in attempts[:3]] == [1, 2, 3]
    assert all(line["level"] == "warning" for line in attempts)
    assert "Retrying" not in service.log()  # urllib3's own retry warnings
    for answer in (ready, predict):
        assert answer.status_code == 503
        assert "registry cannot be reached" in answer.json().get("reason", answer.json().get("detail", ""))
        assert str(registry_port) not in answer.text
        assert "s3cret" not in answer.text


def test_ps_tells_the_supervisor_the_http_process_and_each_worker_apart(demo_service: RunningService) -> None:
    service = demo_service
    # Beside them: multiprocessing's resource tracker, a plain python process.
    titles = sorted(title for title in descendants(service.process.pid).values() if "resource_tracker" not in title)
    supervisor = (Path("/proc") / str(service.process.pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert supervisor.strip() == "fraud-inference supervisor"
    assert titles == ["fraud-inference http", "fraud-inference worker 1", "fraud-inference worker 2"]
    # The processes from before the supervisor's exec (multiprocessing's resource tracker) were reaped.
    assert not _zombie_children(service.process.pid)


def _zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split() if stat else []
        if fields and fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry.name))
    return zombies
