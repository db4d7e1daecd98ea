"""Real signals to a real `serve` under light traffic: SIGHUP is a logged no-op, kill -9 of the HTTP process ends
the service at once (for an orchestrator to restart) and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from tests.conftest import descendants, http_process, left_alive
from tests.load import Load

# NOTE: soak, out of the default run (which must stay near 12 minutes): signals to the supervisor and the HTTP process
# under load, 43 s of the default run. .ci/run runs it with -m soak.
pytestmark = [pytest.mark.slow, pytest.mark.soak]


def test_sighup_to_the_supervisor_under_load_is_logged_and_fails_no_request_and_refuses_no_connection(
    service_factory, demo_registry: str, transactions: pd.DataFrame
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1"})
    service.wait_ready()
    server = http_process(service)
    payload = {"model": "lightgbm", "instances": json.loads(transactions.head(3).to_json(orient="records"))}
    # One client on a kept-alive connection, one opening a new connection per request (a refusal would show there).
    kept = Load(service.base_url, lambda: payload, clients=1, max_seconds=60, max_requests=20_000)
    fresh = Load(service.base_url, lambda: payload, clients=1, max_seconds=60, max_requests=20_000, keep_alive=False)
    with kept, fresh:
        time.sleep(1.0)
        os.kill(service.process.pid, signal.SIGHUP)
        # granian would have stopped the old HTTP process 3.5 s after starting a new one: wait well past that.
        time.sleep(8.0)
    answers = kept.stop() + fresh.stop()
    print(f"\nSIGHUP under load: {len(answers)} requests, {sum(a.status != 200 for a in answers)} failed")

    assert [a.error or a.status for a in answers if a.status != 200] == []
    assert len(answers) > 50
    assert http_process(service) == server, "SIGHUP replaced the HTTP process"
    assert "signal.sighup_ignored" in service.log()
    assert service.stop() == 0


def test_kill_9_of_the_http_process_ends_the_supervisor_with_1_and_leaves_no_process(
    service_factory, demo_registry: str
) -> None:
    service = service_factory(["serve"], {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "2"})
    service.wait_ready()
    processes = descendants(service.process.pid)
    os.kill(http_process(service), signal.SIGKILL)

    assert service.process.wait(timeout=30) == 1  # an orchestrator restarts it (a bound, not a timing)
    assert left_alive(processes, timeout_s=30) == {}
