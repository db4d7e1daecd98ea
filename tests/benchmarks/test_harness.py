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

import msgspec
import pytest

from benchmarks.baselines import NativeBaseline
from benchmarks.loadgen import Loadgen, LoadResult, parse_wrk_output, run_load, wrk_script
from benchmarks.report import AnswerCheck, BenchmarkRun, ScenarioResult, markdown
from benchmarks.scenarios import Scenario, Target, pyfunc_scenarios
from benchmarks.service import CpuSeconds, ProcessMemory, ServerMemory, TimeToReady
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


def _result(target: Target, scenario: Scenario, requests_per_s: float, p99_ms: float) -> ScenarioResult:
    load = LoadResult(
        tool="wrk", requests=int(requests_per_s * 10), duration_s=10.0, requests_per_s=requests_per_s, p50_ms=1.0,
        p90_ms=2.0, p99_ms=p99_ms, max_ms=p99_ms * 2, non_2xx=0, bad_body=0, connect_errors=0, read_errors=0,
        write_errors=0, timeouts=0, loadgen_cpu_s=1.0,
    )  # fmt: skip
    return ScenarioResult.of(target, scenario, load, CpuSeconds(http=3.0, workers=5.0))


def _process(role: str, pid: int, uss: float, pss: float, rss: float) -> ProcessMemory:
    return ProcessMemory(role=role, title=f"python {role}", pid=pid, rss_mib=rss, uss_mib=uss, pss_mib=pss)


def _run(*, mlserver: bool) -> BenchmarkRun:
    one_row = Scenario("xgboost 1 row c64", ("xgboost",), 1, 64, curve=True)
    hundred = Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8)
    return BenchmarkRun(
        started_at="2026-11-30 14:00:00", command="python -m benchmarks", quick=False, seconds_per_scenario=10,
        loadgen="wrk", cpu_count=2, model_versions={"xgboost": 1}, native=[],
        ours=[_result("fraud-inference", one_row, 3000, 20.0), _result("fraud-inference", hundred, 1000, 9.0)],
        mlflow=[_result("mlflow", one_row, 100, 500.0)],
        mlserver=[_result("mlserver", one_row, 1500, 40.0), _result("mlserver", hundred, 800, 30.0)] * mlserver,
        memory=[
            ServerMemory(server="fraud-inference", models="xgboost", processes=[
                _process("http", 10, 100, 120, 200), _process("workers", 11, 150, 170, 260),
                _process("workers", 12, 150, 170, 260),
            ]),
            ServerMemory(server="MLServer 1.7.1", models="xgboost", processes=[_process("http", 20, 140, 150, 210)]),
        ],
        ready=[
            TimeToReady(server="fraud-inference", models="xgboost", seconds=12.34, ready_when="/readyz 200"),
            TimeToReady(server="mlflow models serve", models="xgboost", seconds=19.0, ready_when="/ping 200"),
        ],
    )  # fmt: skip


def test_report_puts_mlserver_beside_mlflow_with_ours_over_theirs() -> None:
    report = markdown(_run(mlserver=True))

    assert "| MLServer req/s | ours / MLServer |" in report
    # ours 3,000 req/s against MLflow's 100 and MLServer's 1,500; MLflow did not run 100-row c8.
    assert "| xgboost 1 row c64 | 3,000 | 100 | 30.00x | 1,500 | 2.00x | 20.0 | 500.0 | 40.0 |" in report
    assert "| xgboost 100 rows c8 | 1,000 | - | - | 800 | 1.25x | 9.0 | - | 30.0 |" in report
    assert "## MLServer (" in report


def test_report_puts_the_lean_configuration_under_the_default_one_scenario_by_scenario() -> None:
    run = _run(mlserver=False)
    one_row = run.ours[0].scenario
    run.ours_lean = [_result("fraud-inference", one_row, 3300, 18.0)]
    report = markdown(run)

    default_row = report.index("| xgboost 1 row c64 | default | 3,000 |")
    assert report.index("| xgboost 1 row c64 | lean | 3,300 |") > default_row
    assert "| xgboost 100 rows c8 | lean |" not in report  # lean ran only where asked
    assert "LOG_LEVEL=INFO" in report


def test_report_without_mlserver_keeps_the_mlflow_comparison_alone() -> None:
    report = markdown(_run(mlserver=False))

    assert "MLServer req/s" not in report
    assert "| xgboost 1 row c64 | 3,000 | 100 | 30.00x | 20.0 | 500.0 |" in report


def test_report_sums_memory_by_server_and_role_beside_time_to_ready() -> None:
    report = markdown(_run(mlserver=True))

    # USS, PSS and summed RSS of all three processes; the time to ready of the same server and models.
    assert "| fraud-inference | xgboost | 12.3 | /readyz 200 | 3 | 400 | 460 | 720 |" in report
    assert "| fraud-inference | xgboost | workers | 2 | 300 | 340 | 520 |" in report
    assert "| MLServer 1.7.1 | xgboost | - | - | 1 | 140 | 150 | 210 |" in report
    # A server that was timed but whose memory was not read still gets its row.
    assert "| mlflow models serve | xgboost | 19.0 | /ping 200 | - | - | - | - |" in report


def test_report_puts_the_pyfunc_model_beside_mlflow_and_in_process_with_its_answer_check() -> None:
    one_row, _c64, hundred = pyfunc_scenarios("pyfunc", quick=False)
    run = _run(mlserver=False)
    run.ours += [_result("fraud-inference", one_row, 900, 30.0), _result("fraud-inference", hundred, 400, 60.0)]
    run.mlflow += [_result("mlflow", one_row, 90, 400.0)]
    run.native += [
        NativeBaseline(model="pyfunc", rows=rows, calls=100, us_per_call=1_600, rows_per_s=rate, rows_per_cpu_s=rate)
        for rows, rate in ((1, 600.0), (100, 60_000.0))
    ]
    run.answer_checks.append(AnswerCheck(
        server="fraud-inference", model="pyfunc", reference="mlflow.pyfunc in-process", rows=[1, 100],
        tolerance=1e-6, largest_difference=0.0,
    ))  # fmt: skip

    report = markdown(run)

    # ours 900 req/s against MLflow's 90 and one core's 600 rows/s; 100 rows: 40,000 rows/s against 60,000.
    assert "| pyfunc 1 row c16 | 900 | 90 | 10.00x | 30.0 | 400.0 | 600 | 1.50x |" in report
    assert "| pyfunc 100 rows c8 | 400 | - | - | 60.0 | - | 60,000 | 0.67x |" in report
    assert "| fraud-inference | pyfunc | mlflow.pyfunc in-process | 1, 100 | 0 | 1e-06 | equal |" in report
    assert not run.our_wrong_answers


def test_a_pyfunc_answer_check_that_differs_or_could_not_be_made_fails_the_run() -> None:
    check = AnswerCheck(server="fraud-inference", model="pyfunc", reference="in-process", rows=[1], tolerance=1e-6)
    run = _run(mlserver=False)
    run.answer_checks += [
        msgspec.structs.replace(check, largest_difference=2e-6),
        msgspec.structs.replace(check, problem="the in-process baseline failed"),
    ]

    report = markdown(run)

    assert len(run.our_wrong_answers) == 2
    assert "| 2e-06 | 1e-06 | DIFFERENT |" in report
    assert "| - | 1e-06 | NOT CHECKED: the in-process baseline failed |" in report


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


@pytest.mark.parametrize("tool", [pytest.param("wrk", marks=pytest.mark.program("wrk")), "python"])
def test_load_generator_counts_failed_statuses_and_answers_without_predictions(stub_url: str, tool: Loadgen) -> None:
    bodies = [b'{"row": "good"}', b'{"row": "fail"}', b'{"row": "odd"}']

    result = run_load(tool, stub_url, bodies, connections=2, seconds=1)

    assert result.requests > 3
    assert result.non_2xx > 0
    assert result.bad_body > 0
    # Every third body fails and every third has no predictions: the checks saw each answer.
    assert result.non_2xx + result.bad_body < result.requests
    assert abs(result.non_2xx - result.requests / 3) <= 0.1 * result.requests + 2


@pytest.mark.slow
@pytest.mark.soak  # minutes of load on a busy machine; `.ci/run` also runs `benchmarks --quick` itself
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
    [ours] = results["memory"]
    assert [process["role"] for process in ours["processes"]].count("workers") == 2
    assert all(0 < process["uss_mib"] <= process["pss_mib"] <= process["rss_mib"] for process in ours["processes"])
    assert [ready["ready_when"] for ready in results["ready"]] == ["/readyz 200"]
    assert "| xgboost 1 row c16 |" in (out / "results.md").read_text()
    # One concurrency level draws no curve: the plot is skipped, and the report says so.
    assert not (out / "latency_vs_throughput.png").exists()
    assert "plot skipped" in (out / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.soak  # minutes of load on a busy machine; `.ci/run` also runs `benchmarks --quick` itself
def test_protocol_option_alternates_the_routes_and_checks_every_answer(demo_registry: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--seconds", "1", "--tracking-uri", demo_registry,
         "--out", str(out), "--only", "xgboost 1 row", "--protocol", "v1", "--protocol", "mlflow",
         "--protocol", "oip", "--protocol", "grpc"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((out / "results.json").read_text())
    names = [scenario["scenario"]["name"] for scenario in results["ours"]]
    assert names == [f"xgboost 1 row c16 [{protocol}]" for protocol in ("v1", "mlflow", "oip", "grpc")]
    assert results["ours"][-1]["load"]["tool"] == "tritonclient.grpc"
    for scenario in results["ours"]:
        assert scenario["errors"] == 0
        assert scenario["load"]["requests"] > 0


@pytest.mark.slow
@pytest.mark.soak  # a benchmark run as its siblings: a serve, a native baseline, loads (66 s, the default's longest)
def test_pyfunc_option_serves_a_custom_model_and_checks_its_answers_in_process(demo_home: Path, tmp_path: Path) -> None:
    # A copy of the session's registry: the fraud-pyfunc version this run registers stays out of other tests.
    shutil.copy(demo_home / "mlflow.db", tmp_path / "mlflow.db")
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--pyfunc", "--only", "pyfunc", "--seconds", "1",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((out / "results.json").read_text())
    assert [scenario["scenario"]["name"] for scenario in results["ours"]] == ["pyfunc 1 row c16", "pyfunc 100 rows c8"]
    for scenario in results["ours"]:
        assert scenario["errors"] == 0
        assert scenario["load"]["requests"] > 0
    [check] = results["answer_checks"]
    assert (check["model"], check["rows"], check["problem"]) == ("pyfunc", [1, 100], None)
    assert check["largest_difference"] <= 1e-6
    assert [(base["model"], base["rows"]) for base in results["native"]] == [("pyfunc", 1), ("pyfunc", 100)]
    assert [(memory["server"], memory["models"]) for memory in results["memory"]] == [("fraud-inference", "pyfunc")]
    assert results["model_versions"] == {"pyfunc": 1}
    # The demo models' service was not started: --only selected none of its scenarios.
    assert "ours serving them did not start" in (out / "results.md").read_text()
