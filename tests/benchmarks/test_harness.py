"""The load-test harness: its answer checks and its outputs, never its timings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.loadgen import Loadgen, parse_wrk_output, run_load, wrk_script
from tests.conftest import REPO

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000/v1/predict
  1 threads and 16 connections
Requests/sec:   2000.00
BENCH_JSON {"requests":2000,"duration_us":1000000,"non_2xx":3,"bad_body":1,"connect":0,"read":2,"write":0,\
"timeout":1,"p50_us":900.0,"p90_us":1500.5,"p99_us":4000.0,"max_us":12000.0}
"""


def test_wrk_summary_line_is_read_into_rates_latencies_and_errors() -> None:
    result = parse_wrk_output(WRK_OUTPUT, loadgen_cpu_s=0.25)

    assert result.requests_per_s == 2000.0
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (0.9, 1.5005, 4.0, 12.0)
    assert (result.non_2xx, result.bad_body, result.read_errors, result.timeouts) == (3, 1, 2, 1)
    assert result.errors == 7
    assert result.loadgen_cpu_s == 0.25


def test_wrk_output_without_summary_line_names_the_output() -> None:
    with pytest.raises(ValueError, match="Lua script"):
        parse_wrk_output("PANIC: unprotected error in call to Lua API")


def test_wrk_script_cycles_through_every_body() -> None:
    script = wrk_script([b'{"model": "xgboost"}', b'{"model": "sklearn"}'])

    assert '[==[{"model": "xgboost"}]==]' in script
    assert '[==[{"model": "sklearn"}]==]' in script
    assert "function response(status, headers, body)" in script


class _StubModelServer(BaseHTTPRequestHandler):
    """200 with predictions for "good" bodies, 500 for "fail", 200 without predictions for "odd"."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, answer = (500, b'{"error":"boom"}') if b"fail" in body else (200, b'{"predictions":[0.1]}')
        if b"odd" in body:
            answer = b'{"something":"else"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubModelServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/predict"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("tool", ["wrk", "python"])
def test_load_generator_counts_failed_statuses_and_answers_without_predictions(stub_url: str, tool: Loadgen) -> None:
    if tool == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    bodies = [b'{"row": "good"}', b'{"row": "fail"}', b'{"row": "odd"}']

    result = run_load(tool, stub_url, bodies, connections=2, seconds=1)

    assert result.requests > 3
    assert result.non_2xx > 0
    assert result.bad_body > 0
    # Every third body fails and every third has no predictions: the checks saw each answer.
    assert result.non_2xx + result.bad_body < result.requests
    assert abs(result.non_2xx - result.requests / 3) <= 0.1 * result.requests + 2


@pytest.mark.slow
def test_quick_run_scores_every_request_and_writes_json_and_markdown(demo_registry: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--seconds", "1", "--tracking-uri", demo_registry,
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["ours"], "no scenario ran"
    for scenario in results["ours"]:
        assert scenario["errors"] == 0
        assert scenario["load"]["requests"] > 0
        assert scenario["rows_per_s"] == pytest.approx(
            scenario["load"]["requests_per_s"] * scenario["scenario"]["rows"]
        )
        assert scenario["server_cpu_s"]["workers"] > 0
    assert {process["role"] for process in results["memory"]} >= {
        "fraud-inference worker 1",
        "fraud-inference worker 2",
    }
    assert "| xgboost 1 row c16 |" in (out / "results.md").read_text()
    # One concurrency level draws no curve: the plot is skipped, and the report says so.
    assert not (out / "latency_vs_throughput.png").exists()
    assert "plot skipped" in (out / "results.md").read_text()


@pytest.mark.slow
def test_protocol_option_alternates_the_routes_and_checks_every_answer(demo_registry: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--seconds", "1", "--tracking-uri", demo_registry,
         "--out", str(out), "--only", "xgboost 1 row", "--protocol", "v1", "--protocol", "mlflow",
         "--protocol", "oip"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((out / "results.json").read_text())
    names = [scenario["scenario"]["name"] for scenario in results["ours"]]
    assert names == [f"xgboost 1 row c16 [{protocol}]" for protocol in ("v1", "mlflow", "oip")]
    for scenario in results["ours"]:
        assert scenario["errors"] == 0
        assert scenario["load"]["requests"] > 0
