"""Load-test fraud-inference against MLflow's own scoring server and the in-process ceiling.

    uv run python -m benchmarks                # full run, ~5-7 minutes on 2 cores
    uv run python -m benchmarks --quick        # smoke test, well under a minute (CI)
    uv run python -m benchmarks --url http://127.0.0.1:8000   # a running service (demo models)
    uv run python -m benchmarks --mlserver     # MLServer 1.7.1 beside MLflow (its environment built once)
    uv run python -m benchmarks --pyfunc       # also a custom mlflow.pyfunc model, served by a second service

Seeds a demo registry in a temporary home, serves it with `fraud-inference serve` (WORKERS=2), and
drives each scenario with wrk, checking every answer. Each server's time to ready and its processes'
memory (USS and PSS, by role) are reported side by side. Exits 1 when any request to fraud-inference
failed or one of its answers checked differed from the reference (or 2 when it did not start); never because
of a timing. Results go to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from benchmarks.baselines import NativeBaseline, native_baselines, pyfunc_baseline
from benchmarks.loadgen import Loadgen, LoadgenError, find_loadgen, run_load
from benchmarks.mlserver import MLSERVER_VERSION, MLServer, mlserver_environment, model_file
from benchmarks.pyfunc import PYFUNC_KEY, register_pyfunc_model
from benchmarks.report import AnswerCheck, BenchmarkRun, ScenarioResult, markdown, write_results
from benchmarks.scenarios import (
    PROTOCOLS,
    Requests,
    Scenario,
    Target,
    mlflow_bodies,
    mlflow_scenarios,
    mlserver_bodies,
    mlserver_scenarios,
    our_requests,
    our_scenarios,
    pyfunc_scenarios,
    with_protocols,
    workload,
)
from benchmarks.service import CpuSeconds, Measured, MlflowScoringServer, OurService, ServiceStartError

_WARM_UP_S = 5.0
"""Load before each server's first scenario: MLServer still ran at half its rate 4 s into its load."""
_PROBE_ROWS = (1, 100)
"""The batch sizes whose first batch two scorers must score alike (MLServer and ours; ours and in-process)."""
_PARITY = 1e-6
_STARTED = time.monotonic()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seconds: float = args.seconds if args.seconds is not None else (2.0 if args.quick else 10.0)
    out: Path = args.out or Path(__file__).parent / "results" / stamp
    loadgen = find_loadgen(args.loadgen)
    home = Path(tempfile.mkdtemp(prefix="fraud-inference-bench-"))
    run = BenchmarkRun(
        started_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        command=shlex.join(["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        quick=args.quick,
        seconds_per_scenario=seconds,
        loadgen=loadgen,
        cpu_count=os.cpu_count() or 1,
        model_versions={},
        ours=[],
        mlflow=[],
        native=[],
        memory=[],
    )
    if loadgen == "python":
        run.notes.append("The multi-process Python client generated the load (no wrk): it costs more CPU than wrk.")
    try:
        tracking_uri: str | None = args.tracking_uri
        protocols = tuple(args.protocol or ["v1"])
        scenarios = with_protocols(_only(our_scenarios(quick=args.quick), args.only), protocols)
        references: dict[int, list[float]] = {}
        if not args.url:
            tracking_uri = tracking_uri or _seed(home, run, quick=args.quick)
        if scenarios:
            lean: OurService | None = None
            try:
                service = _start_ours(args.url, tracking_uri, home)
                if args.lean and tracking_uri is not None and not args.url:
                    lean = OurService.start(tracking_uri, workers=2, log_dir=home, log_level="WARNING")
            except ServiceStartError as failure:
                print(f"benchmarks: fraud-inference is not ready: {failure}", file=sys.stderr)
                return 2
            run.model_versions = service.model_versions()
            _say(f"fraud-inference is ready at {service.base_url}, serving {run.model_versions}"
                 + (f" ({service.ready_s:.1f} s after its start)" if service.ready_s is not None else ""))  # fmt: skip
            try:
                requests_of = functools.partial(
                    our_requests, base_url=service.base_url, grpc_target=service.grpc_target
                )
                if lean is None:
                    run.ours = _run_scenarios("fraud-inference", scenarios, requests_of,
                                              service.cpu, loadgen, seconds)  # fmt: skip
                else:
                    run.ours, run.ours_lean = _alternated(service, lean, scenarios, loadgen, seconds)
                _footprint(run, service)
                if args.mlserver:
                    references = _answers_for_mlserver(service, "xgboost", run)
            except LoadgenError as failure:
                print(f"benchmarks: {failure}", file=sys.stderr)
                return 1
            finally:
                service.stop()
                if lean is not None:
                    lean.stop()
        else:
            run.notes.append("No scenario of the demo models was selected (--only): ours serving them did not start.")
        if tracking_uri is not None and not args.url and _wanted(args.memory_xgboost_only, quick=args.quick):
            _xgboost_only(tracking_uri, run, home, loadgen)
        if tracking_uri is None:
            run.notes.append("No registry to load from (--url without --tracking-uri): baselines skipped.")
        else:
            if _wanted(args.native, quick=args.quick):
                run.native = _native(tracking_uri, quick=args.quick, run=run)
            else:
                run.notes.append("In-process scoring of the demo models skipped (quick mode; --native to include it).")
            if _wanted(args.mlflow, quick=args.quick):
                from fraud_inference.demo.seeding import CHAMPION_ALIAS, DEMO_MODELS

                xgboost_uri = f"models:/{DEMO_MODELS['xgboost']}@{CHAMPION_ALIAS}"
                run.mlflow = _mlflow(xgboost_uri, "xgboost", _only(mlflow_scenarios(quick=args.quick), args.only),
                                     tracking_uri, run, home, loadgen, seconds)  # fmt: skip
            else:
                run.notes.append("MLflow's scoring server skipped (quick mode; --mlflow to include it, --pyfunc too).")
            if args.mlserver:
                run.mlserver = _mlserver(tracking_uri, run, home, loadgen, seconds, args=args, references=references)
        if args.pyfunc:
            if tracking_uri is None:
                run.notes.append("--pyfunc needs a registry to log its model into (--tracking-uri with --url).")
            else:
                try:
                    _pyfunc(tracking_uri, run, home, loadgen, seconds, args=args)
                except ServiceStartError as failure:
                    print(f"benchmarks: fraud-inference serving the pyfunc model is not ready: {failure}",
                          file=sys.stderr)  # fmt: skip
                    return 2
                except LoadgenError as failure:
                    print(f"benchmarks: {failure}", file=sys.stderr)
                    return 1
        run.wall_time_s = time.monotonic() - started
        print(markdown(run))
        for path in write_results(run, out):
            print(f"wrote {path}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if run.our_errors:
        print(f"benchmarks: {run.our_errors} request(s) to fraud-inference failed", file=sys.stderr)
    for check in run.our_wrong_answers:
        print(f"benchmarks: fraud-inference's {check.model} answers were not those of {check.reference}: "
              f"{check.problem or f'largest difference {check.largest_difference:.2g}'}", file=sys.stderr)  # fmt: skip
    return 1 if run.our_errors or run.our_wrong_answers else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="three short scenarios, no baselines (CI smoke test)")
    parser.add_argument("--seconds", type=float, help="per scenario (default 10, quick 2)")
    parser.add_argument("--url", help="benchmark this running fraud-inference (its CPU and memory are not read)")
    parser.add_argument("--tracking-uri", help="registry of the --url service, for the baselines")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results/<timestamp>/)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only scenarios whose name contains NAME (repeatable)"
    )
    parser.add_argument(
        "--protocol",
        action="append",
        choices=PROTOCOLS,
        help="send each scenario through this protocol: v1 (/v1/predict, the default), mlflow (/invocations/{model}), "
        "oip (/v2/models/{model}/infer), grpc (OIP's ModelInfer through tritonclient.grpc, raw FP64 tensors); "
        "repeat it to alternate them, scenario by scenario",
    )
    mlflow = parser.add_mutually_exclusive_group()
    mlflow.add_argument("--mlflow", dest="mlflow", action="store_true", default=None, help="run MLflow's server")
    mlflow.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="skip MLflow's server")
    native = parser.add_mutually_exclusive_group()
    native.add_argument("--native", dest="native", action="store_true", default=None, help="score in-process")
    native.add_argument("--no-native", dest="native", action="store_false", help="skip in-process scoring")
    parser.add_argument(
        "--mlserver",
        action="store_true",
        help=f"also run MLServer {MLSERVER_VERSION} on the XGBoost champion's model file (adaptive batching, 2 "
        "parallel workers), in a virtual environment the harness builds once in ~/.cache/fraud-inference",
    )
    parser.add_argument(
        "--pyfunc",
        action="store_true",
        help="also log a custom mlflow.pyfunc model (a logistic scorecard) as a new version of fraud-pyfunc in the "
        "registry, serve it alone with a second fraud-inference (PYFUNC=allow), check its answers against "
        "mlflow.pyfunc in-process, and run its scenarios beside that in-process rate (and MLflow's server, when "
        "it runs)",
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="also serve the registry with LOG_LEVEL=WARNING (no access log) and run each of ours' scenarios on it "
        "right after the default service (LOG_LEVEL=INFO, as `serve` runs by default), reported side by side",
    )
    alone = parser.add_mutually_exclusive_group()
    alone.add_argument(
        "--memory-xgboost-only",
        dest="memory_xgboost_only",
        action="store_true",
        default=None,
        help="also start ours serving the XGBoost model alone, for its time to ready and memory (full runs do)",
    )
    alone.add_argument("--no-memory-xgboost-only", dest="memory_xgboost_only", action="store_false")
    return parser


def _start_ours(url: str | None, tracking_uri: str | None, home: Path) -> OurService:
    """The running service at `url`, or ours started on the registry (the three demo models, 2 workers)."""
    if url:
        return OurService.attach(url)
    if tracking_uri is None:
        raise ServiceStartError("no registry to serve: give --tracking-uri, or no --url to let the harness seed one")
    return OurService.start(tracking_uri, workers=2, log_dir=home)


def _wanted(option: bool | None, *, quick: bool) -> bool:
    """An on/off option: as given, else on in full runs and off in quick ones."""
    return option if option is not None else not quick


def _seed(home: Path, run: BenchmarkRun, *, quick: bool) -> str:
    from fraud_inference.demo.seeding import embedded_registry, seed_demo

    tracking_uri, artifact_location = embedded_registry(home)
    seed_demo(
        tracking_uri,
        artifact_location=artifact_location,
        progress=lambda _line: None,
        n_rows=6_000 if quick else 20_000,
    )
    _say(f"seeded the demo registry in {home}")
    return tracking_uri


def _alternated(
    default: OurService, lean: OurService, scenarios: Sequence[Scenario], loadgen: Loadgen, seconds: float
) -> tuple[list[ScenarioResult], list[ScenarioResult]]:
    """Each scenario on `default` then on `lean` (the same registry at LOG_LEVEL=WARNING), one after the other, so
    that the machine's drift falls on both alike; both warmed up first."""
    results: tuple[list[ScenarioResult], list[ScenarioResult]] = ([], [])
    for index, scenario in enumerate(scenarios):
        for service, into in ((default, results[0]), (lean, results[1])):
            requests_of = functools.partial(our_requests, base_url=service.base_url, grpc_target=service.grpc_target)
            if index == 0:
                warm_up = requests_of(scenario)
                run_load(loadgen, warm_up.url, warm_up.bodies, connections=scenario.connections, seconds=_WARM_UP_S,
                         expect=warm_up.expect)  # fmt: skip
            into += _run_scenarios("fraud-inference", [scenario], requests_of, service.cpu, loadgen, seconds,
                                   warm_up=False)  # fmt: skip
    return results


def _run_scenarios(
    target: Target,
    scenarios: Sequence[Scenario],
    requests_of: Callable[[Scenario], Requests],
    cpu: Callable[[], CpuSeconds | None],
    loadgen: Loadgen,
    seconds: float,
    *,
    warm_up: bool = True,
) -> list[ScenarioResult]:
    """Warm the server up once (unless told not to), then run each scenario, reading its processes' CPU around it
    (none: nothing)."""
    if not scenarios:
        return []
    if warm_up:
        first = requests_of(scenarios[0])
        run_load(loadgen, first.url, first.bodies, connections=scenarios[0].connections, seconds=_WARM_UP_S,
                 expect=first.expect)  # fmt: skip
    results = []
    for scenario in scenarios:
        requests = requests_of(scenario)
        before = cpu()
        load = run_load(
            loadgen, requests.url, requests.bodies, connections=scenario.connections, seconds=seconds,
            expect=requests.expect,
        )  # fmt: skip
        after = cpu()
        used = after.minus(before) if after and before else None
        result = ScenarioResult.of(target, scenario, load, used)
        results.append(result)
        _say(f"{target:16} {scenario.name:24} {load.requests_per_s:8,.0f} req/s  p99 {load.p99_ms:7.1f} ms  "
             f"errors {result.errors}")  # fmt: skip
    return results


def _only(scenarios: list[Scenario], names: Sequence[str] | None) -> list[Scenario]:
    """The scenarios whose name contains one of `names` (all when none is given)."""
    return [s for s in scenarios if not names or any(name in s.name for name in names)]


def _say(line: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {line}", flush=True)


def _native(tracking_uri: str, *, quick: bool, run: BenchmarkRun) -> list[NativeBaseline]:
    try:
        baselines = native_baselines(tracking_uri, seconds=0.2 if quick else 1.5)
        _say("measured in-process scoring")
        return baselines
    except RuntimeError as failure:
        run.notes.append(f"In-process baseline failed: {failure}")
        return []


def _mlflow(
    model_uri: str,
    model_key: str,
    scenarios: Sequence[Scenario],
    tracking_uri: str,
    run: BenchmarkRun,
    home: Path,
    loadgen: Loadgen,
    seconds: float,
) -> list[ScenarioResult]:
    """Serve `model_uri` with `mlflow models serve -w 2` (OMP 1) and run `scenarios` against it (none: no server)."""
    if not scenarios:
        return []
    try:
        server = MlflowScoringServer.start(model_uri, tracking_uri, model_key=model_key, workers=2, log_dir=home)
        _say(f"mlflow models serve ({model_key}) is ready at {server.base_url} ({server.ready_s:.1f} s after start)")
    except ServiceStartError as failure:
        run.notes.append(f"MLflow's scoring server of {model_uri} did not start: {failure}")
        return []
    try:
        results = _run_scenarios(
            "mlflow",
            scenarios,
            lambda s: Requests(server.invocations_url, mlflow_bodies(s)),
            server.cpu,
            loadgen,
            seconds,
        )
        _footprint(run, server)
        return results
    except LoadgenError as failure:
        run.notes.append(f"MLflow's scoring server of {model_uri} could not be measured: {failure}")
        return []
    finally:
        server.stop()


def _footprint(run: BenchmarkRun, server: Measured) -> None:
    """Record a server's time to ready and its processes' memory (nothing for one we did not start)."""
    if (memory := server.memory()) is not None:
        run.memory.append(memory)
    if (ready := server.time_to_ready()) is not None:
        run.ready.append(ready)


def _xgboost_only(tracking_uri: str, run: BenchmarkRun, home: Path, loadgen: Loadgen) -> None:
    """Start ours serving the XGBoost champion alone (as the peers do), warm it up, and record its footprint."""
    from fraud_inference.demo.seeding import CHAMPION_ALIAS, DEMO_MODELS

    try:
        service = OurService.start(
            tracking_uri, workers=2, log_dir=home, models={"xgboost": f"{DEMO_MODELS['xgboost']}@{CHAMPION_ALIAS}"}
        )
    except ServiceStartError as failure:
        run.notes.append(f"fraud-inference serving the XGBoost model alone did not start: {failure}")
        return
    try:
        _say(f"fraud-inference (XGBoost alone) is ready ({service.ready_s or 0:.1f} s after its start)")
        warm_up = our_requests(Scenario("warm-up", ("xgboost",), 1, 16), service.base_url)
        load = run_load(loadgen, warm_up.url, warm_up.bodies, connections=16, seconds=_WARM_UP_S, expect=warm_up.expect)
        if load.errors:
            run.notes.append(
                f"fraud-inference serving the XGBoost model alone failed {load.errors} warm-up request(s)."
            )
        _footprint(run, service)
    except LoadgenError as failure:
        run.notes.append(f"fraud-inference serving the XGBoost model alone could not be measured: {failure}")
    finally:
        service.stop()


def _answers_for_mlserver(service: OurService, key: str, run: BenchmarkRun) -> dict[int, list[float]]:
    """Our `key` probabilities for the first batch of each probe size: what MLServer must answer too."""
    try:
        return _our_answers(service, key)
    except (OSError, msgspec.DecodeError) as failure:
        run.notes.append(f"Our reference answers for MLServer's check could not be read: {failure}")
        return {}


def _our_answers(service: OurService, key: str) -> dict[int, list[float]]:
    """Rows per batch -> our fraud probabilities for the first `workload` batch of that size, through /v1/predict."""
    return {
        rows: service.fraud_probabilities(key, json.loads(workload(rows)[0].to_json(orient="records")))
        for rows in _PROBE_ROWS
    }


def _largest_difference(ours: dict[int, list[float]], theirs: dict[int, list[float]]) -> float:
    """The largest absolute difference between two scorers' probabilities on the same batches; ValueError when one
    answered another number of probabilities, or left a batch out."""
    worst = 0.0
    for rows, answers in ours.items():
        other = theirs.get(rows, [])
        if len(other) != len(answers):
            raise ValueError(f"{len(other)} probabilities for {rows} rows, ours {len(answers)}")
        worst = max(worst, *(abs(a - b) for a, b in zip(answers, other, strict=True)))
    return worst


def _pyfunc(
    tracking_uri: str, run: BenchmarkRun, home: Path, loadgen: Loadgen, seconds: float, *, args: argparse.Namespace
) -> None:
    """Log and register the custom pyfunc model, serve it alone with ours (PYFUNC=allow), run its scenarios, check
    our answers against `mlflow.pyfunc` in-process, and measure that (and MLflow's server, when it runs)."""
    scenarios = with_protocols(
        _only(pyfunc_scenarios(PYFUNC_KEY, quick=args.quick), args.only), tuple(args.protocol or ["v1"])
    )
    if not scenarios:
        run.notes.append("No pyfunc scenario was selected (--only): the pyfunc model was not logged.")
        return
    model = register_pyfunc_model(tracking_uri, n_rows=6_000 if args.quick else 20_000)
    _say(f"logged the custom pyfunc model as {model.name} v{model.version} -> alias {model.alias}")
    service = OurService.start(
        tracking_uri, workers=2, log_dir=home, models={PYFUNC_KEY: model.served_as}, settings={"PYFUNC": "allow"}
    )
    try:
        run.model_versions.update(service.model_versions())
        _say(f"fraud-inference (pyfunc) is ready at {service.base_url} ({service.ready_s or 0:.1f} s after its start)")
        try:
            ours, unread = _our_answers(service, PYFUNC_KEY), None
        except (OSError, msgspec.DecodeError) as failure:
            ours, unread = {}, f"our answers could not be read: {failure}"
        requests_of = functools.partial(our_requests, base_url=service.base_url, grpc_target=service.grpc_target)
        run.ours += _run_scenarios("fraud-inference", scenarios, requests_of,
                                   service.cpu, loadgen, seconds)  # fmt: skip
        _footprint(run, service)
    finally:
        service.stop()
    check = AnswerCheck(
        server="fraud-inference", model=PYFUNC_KEY, reference=f"mlflow.pyfunc.load_model({model.model_uri}).predict",
        rows=list(_PROBE_ROWS), tolerance=_PARITY, problem=unread,
    )  # fmt: skip
    try:
        # NOTE: always run, quick or not: its answers are the reference ours must equal.
        baseline = pyfunc_baseline(tracking_uri, model.model_uri, key=PYFUNC_KEY, seconds=0.2 if args.quick else 1.5)
        run.native += baseline.timings
        _say("measured the pyfunc model in-process")
        if unread is None:
            check = msgspec.structs.replace(check, largest_difference=_largest_difference(ours, baseline.answers))
    except (RuntimeError, ValueError, subprocess.SubprocessError, msgspec.DecodeError) as failure:
        check = msgspec.structs.replace(check, problem=str(failure))
    run.answer_checks.append(check)
    if _wanted(args.mlflow, quick=args.quick):
        theirs = _only(pyfunc_scenarios(PYFUNC_KEY, quick=args.quick, mlflow=True), args.only)
        run.mlflow += _mlflow(model.model_uri, PYFUNC_KEY, theirs, tracking_uri, run, home, loadgen, seconds)


def _mlserver(
    tracking_uri: str,
    run: BenchmarkRun,
    home: Path,
    loadgen: Loadgen,
    seconds: float,
    *,
    args: argparse.Namespace,
    references: dict[int, list[float]],
) -> list[ScenarioResult]:
    """Serve the XGBoost champion's model file with MLServer, check its answers against ours, run its scenarios."""
    from fraud_inference.demo.seeding import CHAMPION_ALIAS, DEMO_MODELS

    try:
        executable = mlserver_environment(say=_say)
        model = model_file(tracking_uri, "xgboost", DEMO_MODELS["xgboost"], CHAMPION_ALIAS, home / "mlserver-model")
        server = MLServer.start(executable, model, workers=2, log_dir=home)
    except ServiceStartError as failure:
        run.notes.append(f"MLServer did not start: {failure}")
        return []
    _say(f"MLServer is ready at {server.base_url} ({server.ready_s or 0:.1f} s after its start; "
         f"model file downloaded in {model.download_s:.1f} s before)")  # fmt: skip
    run.notes.append(
        f"MLServer has no registry client: the harness downloaded {model.name} v{model.version}'s model file in "
        f"{model.download_s:.1f} s before starting it, outside its time to ready."
    )
    if model.version != run.model_versions.get("xgboost"):
        run.notes.append(f"MLServer serves {model.name} v{model.version}, ours served {run.model_versions}.")
    try:
        run.notes.append(_parity(server, references))
        scenarios = _only(mlserver_scenarios(quick=args.quick), args.only)
        results = _run_scenarios(
            "mlserver",
            scenarios,
            lambda s: Requests(server.infer_url, mlserver_bodies(s), expect='"predict_proba"'),
            server.cpu,
            loadgen,
            seconds,
        )
        _footprint(run, server)
        return results
    except (LoadgenError, ServiceStartError, OSError) as failure:
        run.notes.append(f"MLServer could not be measured: {failure}")
        return []
    finally:
        server.stop()


def _parity(server: MLServer, references: dict[int, list[float]]) -> str:
    """Whether MLServer's fraud probabilities equal ours on the probe batches: a note for the report."""
    if not references:
        return "MLServer's answers were not compared with ours (no reference answers from ours)."
    theirs = {
        rows: server.fraud_probabilities(mlserver_bodies(Scenario("probe", ("xgboost",), rows, 1))[0])
        for rows in references
    }
    try:
        worst = _largest_difference(references, theirs)
    except ValueError as failure:
        return f"MLServer answered {failure}."
    verdict = "equal ours within" if worst <= _PARITY else "DIFFER from ours by more than"
    return (f"MLServer's fraud probabilities on the first {' and '.join(map(str, references))}-row batches "
            f"{verdict} {_PARITY:g} (largest difference {worst:.2g}).")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
