"""Turn one run's measurements into results.json, a Markdown report and a latency-versus-throughput plot."""

from __future__ import annotations

from pathlib import Path

import msgspec

from benchmarks.baselines import NativeBaseline
from benchmarks.loadgen import LoadResult
from benchmarks.scenarios import Scenario, Target
from benchmarks.service import CpuSeconds, ServerMemory, TimeToReady

__all__ = ["AnswerCheck", "BenchmarkRun", "ScenarioResult", "markdown", "plot_latency_throughput", "write_results"]


class ScenarioResult(msgspec.Struct, frozen=True):
    """One scenario against one server: what the load generator saw and what the server's processes spent."""

    target: Target
    scenario: Scenario
    load: LoadResult
    rows_per_s: float
    errors: int
    server_cpu_s: CpuSeconds | None
    """None for a service given by --url: its processes are not ours to read."""
    loadgen_core_share: float
    """The load generator's CPU seconds per second of the run: 1.0 would be one saturated core."""

    @classmethod
    def of(cls, target: Target, scenario: Scenario, load: LoadResult, cpu: CpuSeconds | None) -> ScenarioResult:
        return cls(
            target=target,
            scenario=scenario,
            load=load,
            rows_per_s=load.requests_per_s * scenario.rows,
            errors=load.errors,
            server_cpu_s=cpu,
            loadgen_core_share=load.loadgen_cpu_s / load.duration_s if load.duration_s > 0 else 0.0,
        )


class AnswerCheck(msgspec.Struct, frozen=True):
    """Whether a server's fraud probabilities equal a reference's on the same batches."""

    server: str
    model: str
    """The model key, e.g. `pyfunc`."""
    reference: str
    """What answered the reference probabilities, e.g. `mlflow.pyfunc.load_model(uri).predict in-process`."""
    rows: list[int]
    """The sizes of the batches compared (the first `workload` batch of each)."""
    tolerance: float
    largest_difference: float | None = None
    """The largest absolute difference between two probabilities; None when nothing could be compared."""
    problem: str | None = None
    """Why the answers could not be compared, if they could not."""

    @property
    def passed(self) -> bool:
        return (
            self.problem is None and self.largest_difference is not None and self.largest_difference <= self.tolerance
        )


class BenchmarkRun(msgspec.Struct):
    """Everything one `python -m benchmarks` run measured."""

    started_at: str
    command: str
    quick: bool
    seconds_per_scenario: float
    loadgen: str
    cpu_count: int
    model_versions: dict[str, int]
    ours: list[ScenarioResult]
    """`serve` as it runs by default (LOG_LEVEL=INFO: the access log on)."""
    mlflow: list[ScenarioResult]
    native: list[NativeBaseline]
    memory: list[ServerMemory]
    """Each server's processes, read once after its scenarios (ours also serving the XGBoost model alone)."""
    mlserver: list[ScenarioResult] = msgspec.field(default_factory=list)
    ours_lean: list[ScenarioResult] = msgspec.field(default_factory=list)
    """With `--lean`: the same scenarios on a second service at LOG_LEVEL=WARNING (no access log), alternated."""
    ready: list[TimeToReady] = msgspec.field(default_factory=list)
    answer_checks: list[AnswerCheck] = msgspec.field(default_factory=list)
    """Ours against a reference on the same rows (the custom pyfunc model against its in-process answers)."""
    wall_time_s: float = 0.0
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def our_errors(self) -> int:
        return sum(result.errors for result in [*self.ours, *self.ours_lean])

    @property
    def our_wrong_answers(self) -> list[AnswerCheck]:
        """Our answer checks that failed or could not be made."""
        return [check for check in self.answer_checks if check.server == "fraud-inference" and not check.passed]


def write_results(run: BenchmarkRun, out: Path) -> list[Path]:
    """Write results.json, results.md and (with two concurrency levels or more) latency_vs_throughput.png into
    `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    if not _curves(run):
        # One point per series draws no curve (quick mode measures one concurrency level): no plot.
        run.notes.append("Latency-versus-throughput plot skipped: fewer than two concurrency levels were measured.")
    written = [out / "results.json", out / "results.md"]
    written[0].write_bytes(msgspec.json.format(msgspec.json.encode(run)) + b"\n")
    written[1].write_text(markdown(run))
    if _curves(run):
        written.append(out / "latency_vs_throughput.png")
        plot_latency_throughput(run, written[2])
    return written


def _curves(run: BenchmarkRun) -> dict[str, list[ScenarioResult]]:
    """The latency-versus-throughput series with two points or more, by server, in order of concurrency."""
    curves = {
        label: sorted((r for r in results if r.scenario.curve), key=lambda r: r.scenario.connections)
        for label, results in (
            ("fraud-inference", run.ours),
            ("mlflow models serve", run.mlflow),
            ("MLServer", run.mlserver),
        )
    }
    return {label: curve for label, curve in curves.items() if len(curve) >= 2}


def markdown(run: BenchmarkRun) -> str:
    """The report: our figures per scenario, then ours beside MLflow's server and the in-process ceiling."""
    versions = ", ".join(f"{key} v{version}" for key, version in run.model_versions.items()) or "unknown"
    lines = [
        f"# fraud-inference load test, {run.started_at}",
        "",
        f"`{run.command}`: {'quick' if run.quick else 'full'} mode, {run.seconds_per_scenario:g} s per scenario, "
        f"load generator `{run.loadgen}`, {run.cpu_count} CPUs, models {versions}. Wall time {run.wall_time_s:.0f} s.",
        "",
        "## fraud-inference",
        "",
        "As `serve` runs by default (LOG_LEVEL=INFO: the access log on)"
        + (
            ", each scenario alternated with the lean configuration (LOG_LEVEL=WARNING: no access log) on a "
            "second service"
            if run.ours_lean
            else ""
        )
        + ". CPU seconds used during each scenario by the service's processes; loadgen is the load generator's "
        "CPU as a share of one core.",
        "",
        "| scenario | configuration | req/s | rows/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU s http "
        "| CPU s workers | CPU s supervisor | service CPU us/req | HTTP CPU us/req | loadgen % core |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lean = {result.scenario.name: result for result in run.ours_lean}
    for default in run.ours:
        pair = [("default", default)] + (
            [("lean", lean[default.scenario.name])] if default.scenario.name in lean else []
        )
        for configuration, result in pair:
            cpu = result.server_cpu_s
            requests = result.load.requests
            per_request = f"{cpu.total / requests * 1e6:,.0f}" if cpu and requests else "-"
            http_per_request = f"{cpu.http / requests * 1e6:,.0f}" if cpu and requests else "-"
            lines.append(
                f"| {result.scenario.name} | {configuration} | {_latency_cells(result)} | {result.errors} | "
                f"{_cpu(cpu.http if cpu else None)} | {_cpu(cpu.workers if cpu else None)} | "
                f"{_cpu(cpu.supervisor if cpu else None)} | {per_request} | {http_per_request} | "
                f"{result.loadgen_core_share:.0%} |"
            )
    if run.mlflow:
        lines += [
            "",
            "## MLflow's scoring server (`mlflow models serve`, one model per server: the XGBoost champion, and with "
            "`--pyfunc` the custom pyfunc model)",
            "",
            "| scenario | req/s | rows/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU s "
            "| loadgen % core |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {result.scenario.name} | {_latency_cells(result)} | {result.errors} | "
            f"{_cpu(result.server_cpu_s.total if result.server_cpu_s else None)} | {result.loadgen_core_share:.0%} |"
            for result in run.mlflow
        ]
    if run.mlserver:
        lines += [
            "",
            "## MLServer (same model file, adaptive batching: 64 requests / 2 ms, 2 parallel workers, OIP V2 REST)",
            "",
            "| scenario | req/s | rows/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU s main (HTTP) "
            "| CPU s workers | loadgen % core |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {result.scenario.name} | {_latency_cells(result)} | {result.errors} | "
            f"{_cpu(result.server_cpu_s.http if result.server_cpu_s else None)} | "
            f"{_cpu(result.server_cpu_s.workers if result.server_cpu_s else None)} | {result.loadgen_core_share:.0%} |"
            for result in run.mlserver
        ]
    lines += _comparison(run)
    if run.native:
        lines += [
            "",
            "## In-process, one thread (the physical limit)",
            "",
            "The demo models through their native calls; the custom pyfunc model through its own "
            "`mlflow.pyfunc.load_model(uri).predict(DataFrame)`, the call the service's workers make.",
            "",
            "| model | rows per call | us per call | rows/s | rows per CPU second |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {base.model} | {base.rows} | {base.us_per_call:,.0f} | {base.rows_per_s:,.0f} | "
            f"{base.rows_per_cpu_s:,.0f} |"
            for base in run.native
        ]
    lines += _answer_checks(run)
    lines += _footprints(run)
    if run.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in run.notes)]
    return "\n".join(lines) + "\n"


def _comparison(run: BenchmarkRun) -> list[str]:
    peers = [("MLflow", {result.scenario.name: result for result in run.mlflow})]
    if run.mlserver:
        peers.append(("MLServer", {result.scenario.name: result for result in run.mlserver}))
    native = {(base.model, base.rows): base for base in run.native}
    header = "| scenario | ours req/s | " + "".join(f"{peer} req/s | ours / {peer} | " for peer, _ in peers)
    header += "ours p99 ms | " + "".join(f"{peer} p99 ms | " for peer, _ in peers)
    lines = [
        "",
        "## Side by side: same rows, same concurrency, same model version",
        "",
        header + "in-process rows/s, one core | ours rows/s / in-process |",
        "|---|" + "---:|" * (4 + 3 * len(peers)),
    ]
    for result in run.ours:
        ceiling = native.get((result.scenario.models[0], result.scenario.rows))
        if len(result.scenario.models) > 1:
            ceiling = None  # a mixed run has no single in-process counterpart
        theirs = [results.get(result.scenario.name) for _, results in peers]
        rates = "".join(
            f"{f'{peer.load.requests_per_s:,.0f}' if peer else '-'} | "
            f"{_ratio(result.load.requests_per_s, peer.load.requests_per_s) if peer else '-'} | "
            for peer in theirs
        )
        tails = "".join(f"{f'{peer.load.p99_ms:,.1f}' if peer else '-'} | " for peer in theirs)
        lines.append(
            f"| {result.scenario.name} | {result.load.requests_per_s:,.0f} | {rates}{result.load.p99_ms:,.1f} | "
            f"{tails}{f'{ceiling.rows_per_cpu_s:,.0f}' if ceiling else '-'} | "
            f"{_ratio(result.rows_per_s, ceiling.rows_per_cpu_s) if ceiling else '-'} |"
        )
    return lines


def _answer_checks(run: BenchmarkRun) -> list[str]:
    """Each answer check: which server and model, against what, and the largest difference."""
    if not run.answer_checks:
        return []
    lines = [
        "",
        "## Answers checked",
        "",
        "| server | model | against | batches of rows | largest difference | tolerance | verdict |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for check in run.answer_checks:
        difference = "-" if check.largest_difference is None else f"{check.largest_difference:.2g}"
        verdict = "equal" if check.passed else f"NOT CHECKED: {check.problem}" if check.problem else "DIFFERENT"
        lines.append(
            f"| {check.server} | {check.model} | {check.reference} | {', '.join(map(str, check.rows))} | "
            f"{difference} | {check.tolerance:g} | {verdict} |"
        )
    return lines


def _footprints(run: BenchmarkRun) -> list[str]:
    """Each server's time to ready and memory side by side, then its memory by role."""
    if not run.memory and not run.ready:
        return []
    ready = {(entry.server, entry.models): entry for entry in run.ready}
    memory = {(entry.server, entry.models): entry for entry in run.memory}
    lines = [
        "",
        "## Time to ready and memory, side by side",
        "",
        "Seconds from the process start to ready, the models already in the registry. Memory of all the "
        "server's processes after its scenarios, from /proc/PID/smaps_rollup: USS sums the private pages, PSS "
        "counts each page shared between them once (RSS sums would count shared pages once per process).",
        "",
        "| server | models | seconds to ready | ready when | processes | USS MiB | PSS MiB | RSS MiB, summed |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for key in [*memory, *(key for key in ready if key not in memory)]:
        started, used = ready.get(key), memory.get(key)
        lines.append(
            f"| {key[0]} | {key[1]} | {f'{started.seconds:.1f}' if started else '-'} | "
            f"{started.ready_when if started else '-'} | {len(used.processes) if used else '-'} | "
            f"{_mib(used.uss_mib if used else None)} | {_mib(used.pss_mib if used else None)} | "
            f"{_mib(used.rss_mib if used else None)} |"
        )
    if run.memory:
        lines += [
            "",
            "### Memory by role",
            "",
            "| server | models | role | processes | USS MiB | PSS MiB | RSS MiB, summed |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for used in run.memory:
            roles: dict[str, list[float]] = {}
            for process in used.processes:
                count, uss, pss, rss = roles.setdefault(process.role, [0, 0.0, 0.0, 0.0])
                roles[process.role] = [count + 1, uss + process.uss_mib, pss + process.pss_mib, rss + process.rss_mib]
            lines += [
                f"| {used.server} | {used.models} | {role} | {count:.0f} | {_mib(uss)} | {_mib(pss)} | {_mib(rss)} |"
                for role, (count, uss, pss, rss) in roles.items()
            ]
    return lines


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _latency_cells(result: ScenarioResult) -> str:
    load = result.load
    return (
        f"{load.requests_per_s:,.0f} | {result.rows_per_s:,.0f} | {load.p50_ms:,.1f} | {load.p90_ms:,.1f} | "
        f"{load.p99_ms:,.1f} | {load.max_ms:,.1f}"
    )


def _cpu(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "-"


def plot_latency_throughput(run: BenchmarkRun, path: Path) -> None:
    """p50 and p99 latency against requests/s, one point per concurrency, ours beside the other servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colors = {"fraud-inference": "tab:blue", "mlflow models serve": "tab:orange", "MLServer": "tab:green"}
    for label, curve in _curves(run).items():
        color = colors[label]
        rates = [r.load.requests_per_s for r in curve]
        axes.plot(rates, [r.load.p50_ms for r in curve], "o-", color=color, label=f"{label} p50")
        axes.plot(rates, [r.load.p99_ms for r in curve], "s--", color=color, label=f"{label} p99")
        for r in curve:
            axes.annotate(f"c{r.scenario.connections}", (r.load.requests_per_s, r.load.p50_ms),
                          textcoords="offset points", xytext=(4, -10), fontsize=8)  # fmt: skip
    axes.set_xlabel("requests/s (1-row XGBoost requests)")
    axes.set_ylabel("latency, ms (log)")
    axes.set_yscale("log")
    axes.set_title(f"Latency versus throughput, {run.cpu_count} CPUs ({run.started_at})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
