"""The `fraud-inference` command: serve, demo, seed-demo, check, replay."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import textwrap
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from fraud_inference import __version__
from fraud_inference.bytecode import choose_bytecode_cache
from fraud_inference.connections import connection_limits, raise_open_file_limit
from fraud_inference.registry import registry_uri_problem
from fraud_inference.settings import Settings, SettingsError, redact_credentials, settings_reference

if TYPE_CHECKING:
    from fraud_inference.checks import CheckReport

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    choose_bytecode_cache()
    # A fraud scorer runs in closed networks: MLflow's telemetry would only try, and fail, to phone home.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.command(args)
    except SettingsError as error:
        print(f"fraud-inference: configuration error: {error}", file=sys.stderr)
        return 1
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraud-inference",
        description="Serve fraud-detection models from an MLflow Model Registry.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name, handler, text in (
        ("serve", _serve, "serve the models of MLFLOW_TRACKING_URI"),
        ("demo", _demo, "seed a local demo registry when it is missing, then serve it"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--host", help=_option_help("HOST", "address to bind"))
        command.add_argument("--port", type=int, help=_option_help("PORT", "port to bind"))
        command.add_argument("--workers", type=int, help=_option_help("WORKERS", "inference worker processes"))
        command.set_defaults(command=handler)
    seed = commands.add_parser(
        "seed-demo",
        help="train the demo fraud models and register them",
        description="Train the demo models and register them in MLFLOW_TRACKING_URI, else the embedded registry.",
    )
    seed.set_defaults(command=_seed_demo)
    check = commands.add_parser(
        "check",
        help="run every check on the served models without serving (a CI/CD gate)",
        description="Resolve the served models of MLFLOW_TRACKING_URI and check resolution, dependencies, "
        "signature, and that each loads as the workers load it and scores its input example as MLflow's own loader "
        "does (the parity gate, PARITY_CHECK). Exit 0 when all pass, else 1.",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(command=_check)
    replay = commands.add_parser(
        "replay",
        help="score decision-log rows again through a model version, beside the logged scores",
        description="Score the rows DECISION_LOG holds for one model through a version of its registered model "
        "(MLFLOW_TRACKING_URI), loaded and scored by the workers' own code; print the rows, the decision counts "
        "(logged x replayed, each at its version's threshold), the score shift's quantiles and the flipped rows.",
    )
    replay.add_argument("directory", type=Path, metavar="DIR", help="the decision log's directory (DECISION_LOG)")
    replay.add_argument("--model", required=True, metavar="KEY", help="the model key the rows were logged under")
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--version", metavar="N", help="replay through version N (default: what MODELS serves now)")
    which.add_argument("--alias", metavar="NAME", help="replay through the version alias NAME points at")
    replay.add_argument("--since", metavar="T", help="only rows logged at or after T (ISO 8601, UTC if no offset)")
    replay.add_argument("--until", metavar="T", help="only rows logged before T (ISO 8601, UTC if no offset)")
    replay.add_argument("--output", type=Path, metavar="FILE.parquet", help="write every row, logged and replayed")
    replay.set_defaults(command=_replay)
    return parser


def _settings_help() -> str:
    """Every setting with its variable, default and bounds, from its one definition in `Settings`."""
    lines = ["settings, read from the environment (a bad value stops the command, naming the variable):"]
    for setting in settings_reference():
        bounds = f"; {setting.bounds}" if setting.bounds else ""
        lines.append(f"  {setting.variable} (default: {setting.shown_default}{bounds})")
        lines.extend(textwrap.wrap(setting.doc, width=96, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def _option_help(variable: str, text: str) -> str:
    (setting,) = [setting for setting in settings_reference() if setting.variable == variable]
    bounds = f", {setting.bounds}" if setting.bounds else ""
    return f"{text} (overrides {variable}; default {setting.shown_default}{bounds})"


def _apply_overrides(args: argparse.Namespace) -> None:
    """CLI options override the environment; the server process reads its settings from it."""
    for option, variable in (("host", "HOST"), ("port", "PORT"), ("workers", "WORKERS")):
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)


def _serve(args: argparse.Namespace) -> int:
    _apply_overrides(args)
    settings = Settings.from_env()
    if settings.mlflow_tracking_uri is None:
        print(
            "fraud-inference: MLFLOW_TRACKING_URI is not set. Point it at your MLflow registry, "
            "or run `fraud-inference demo` to serve demo models from a local registry.",
            file=sys.stderr,
        )
        return 1
    _check_registry_uri(settings.mlflow_tracking_uri, must_exist=True)
    if (busy := _ports_in_use(settings)) is not None:
        print(busy, file=sys.stderr)
        return 1
    return _run_server(settings)


def _demo(args: argparse.Namespace) -> int:
    _apply_overrides(args)
    settings = Settings.from_env()
    # Before seeding, which can take a minute: a busy port is known at once.
    if (busy := _ports_in_use(settings)) is not None:
        print(busy, file=sys.stderr)
        return 1
    tracking_uri = _seed(settings)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    # A newcomer sees the decision log: on under the demo's home unless DECISION_LOG is set (empty: off).
    os.environ.setdefault("DECISION_LOG", str(settings.home / "decisions"))
    return _run_server(Settings.from_env())


def _check(args: argparse.Namespace) -> int:
    import msgspec

    from fraud_inference.checks import render, run_checks

    settings = Settings.from_env()
    if settings.mlflow_tracking_uri is None:
        print("fraud-inference: MLFLOW_TRACKING_URI is not set: name the registry to check.", file=sys.stderr)
        return 1
    _check_registry_uri(settings.mlflow_tracking_uri, must_exist=True)
    report = run_checks(settings, load=True)
    print(msgspec.json.encode(report).decode() if args.json else render(report), flush=True)
    return 0 if report.ok else 1


def _replay(args: argparse.Namespace) -> int:
    from fraud_inference.decisions.replay import ReplayError, parse_time, render, replay, write_output
    from fraud_inference.models.artifact import UnservableModelError
    from fraud_inference.observability.logging import configure_logging
    from fraud_inference.registry import RegistryUnavailableError, ResolutionError

    settings = Settings.from_env()
    # stdout is the replay's answer (a reader may pipe it): the loading's log lines go to stderr.
    configure_logging(settings.log_level, settings.log_format, role="replay", stream=sys.stderr)
    if settings.mlflow_tracking_uri is None:
        print(
            "fraud-inference: MLFLOW_TRACKING_URI is not set: name the registry holding the versions.", file=sys.stderr
        )
        return 1
    _check_registry_uri(settings.mlflow_tracking_uri, must_exist=True)
    try:
        # What the command line got wrong is said before any slow work, naming the option.
        if args.version is not None and not args.version.isdigit():
            raise ReplayError(f"--version {args.version!r}: a version is a number, e.g. --version 3")
        if args.output is not None and args.output.suffix != ".parquet":
            raise ReplayError(f"--output {args.output}: the output is Parquet; name it FILE.parquet")
        since = None if args.since is None else parse_time(args.since)
        until = None if args.until is None else parse_time(args.until)
        if since is not None and until is not None and since >= until:
            raise ReplayError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
        summary, replayed = replay(
            settings, args.directory, args.model, version=args.version, alias=args.alias, since=since, until=until
        )
    except (ReplayError, ResolutionError, RegistryUnavailableError, UnservableModelError) as error:
        print(f"fraud-inference: cannot replay: {error}", file=sys.stderr)
        return 1
    print(render(summary, replayed), flush=True)
    if args.output is not None:
        try:
            write_output(replayed, args.output)
        except OSError as error:
            print(f"fraud-inference: cannot write --output {args.output}: {error}", file=sys.stderr)
            return 1
        print(f"wrote {replayed.num_rows} rows to {args.output}", flush=True)
    return 0


def _seed_demo(_args: argparse.Namespace) -> int:
    _seed(Settings.from_env())
    return 0


def _seed(settings: Settings) -> str:
    """Seed the demo models into MLFLOW_TRACKING_URI, else the embedded registry; return the URI."""
    from fraud_inference.demo.seeding import embedded_registry, seed_demo

    if settings.mlflow_tracking_uri:
        _check_registry_uri(settings.mlflow_tracking_uri, must_exist=False)
        tracking_uri, artifact_location = settings.mlflow_tracking_uri, None
        if tracking_uri.startswith("sqlite:"):
            artifact_location = (settings.home / "artifacts").as_uri()
    else:
        tracking_uri, artifact_location = embedded_registry(settings.home)
    seed_demo(tracking_uri, artifact_location=artifact_location, progress=_progress)
    print(f"MLFLOW_TRACKING_URI={redact_credentials(tracking_uri)}", flush=True)
    return tracking_uri


def _check_registry_uri(tracking_uri: str, *, must_exist: bool) -> None:
    """Refuse a registry URI that cannot work here (a missing SQLite file, a database driver not installed)."""
    problem = registry_uri_problem(tracking_uri, must_exist=must_exist)
    if problem is not None:
        raise SettingsError("MLFLOW_TRACKING_URI", problem)


def _ports_in_use(settings: Settings) -> str | None:
    """One line naming the first of PORT and (when GRPC=on) GRPC_PORT that cannot be bound now; None when both can."""
    if settings.grpc == "on" and settings.grpc_port == settings.port:
        return (f"fraud-inference: PORT and GRPC_PORT are both {settings.port}: give gRPC its own port "
                "(or GRPC=off)")  # fmt: skip
    busy = _address_in_use(settings.host, settings.port)
    if busy is None and settings.grpc == "on":
        busy = _address_in_use(settings.host, settings.grpc_port, variable="GRPC_PORT")
    return busy


def _address_in_use(host: str, port: int, *, variable: str = "PORT / --port") -> str | None:
    """One line naming `host:port` when it cannot be bound now, before any slow work; None when it can.

    NOTE: SO_REUSEADDR as granian binds, so a port in TIME_WAIT from a previous run is not reported busy.
    """
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        return f"fraud-inference: cannot listen on {host}:{port}: {error.strerror} (check HOST / --host)"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (
                    f"fraud-inference: cannot listen on {host}:{port}: the address is already in use "
                    f"(stop what holds it, or choose another {variable})"
                )
            return f"fraud-inference: cannot listen on {host}:{port}: {error.strerror} (check HOST / {variable})"
    return None


def _preflight(settings: Settings) -> CheckReport:
    """`run_checks`, with the models loaded and gated unless PARITY_CHECK=off, in a spawned process.

    NOTE: granian forks the HTTP process from this one; a process forked after OpenMP ran (the model libraries)
    can hang in its next OpenMP call, so this process never loads a model.
    """
    from fraud_inference.checks import run_checks
    from fraud_inference.parity import gate_process

    if settings.parity_check == "off":
        return run_checks(settings, load=False)
    with gate_process(settings.log_level, settings.log_format) as executor:
        return executor.submit(run_checks, settings, load=True).result()


def _progress(line: str) -> None:
    print(f"seed-demo: {line}", flush=True)


def _run_server(settings: Settings) -> int:  # noqa: RET503 (execv does not return)
    """Check the registry resolves, then become granian's supervisor (`fraud_inference.supervisor`); 1 when a
    check fails."""
    from fraud_inference.checks import render
    from fraud_inference.observability.logging import configure_logging, get_logger

    configure_logging(settings.log_level, settings.log_format, role="supervisor")
    log = get_logger("fraud_inference.cli")
    # Before granian is imported (which raises it silently); the supervisor, the HTTP process and the workers
    # inherit it, and MAX_CONNECTIONS is bounded by it.
    open_files = raise_open_file_limit()
    limits = connection_limits(settings, open_files=open_files.soft)
    log.info(
        "connections.limits",
        open_files=open_files.soft,
        open_files_was=open_files.was,
        open_files_hard=open_files.hard,
        max_connections=limits.max_connections,
        listen_backlog=limits.listen_backlog,
        header_timeout_s=settings.header_timeout_s,
    )
    if limits.max_connections < settings.max_connections:
        log.warning(
            "connections.bounded_by_open_files",
            max_connections=limits.max_connections,
            configured=settings.max_connections,
            open_files=open_files.soft,
            detail="raise the hard open-file limit (ulimit -Hn, the container's nofile) to serve MAX_CONNECTIONS",
        )
    # Fail before accepting traffic when a model cannot be served here: resolution, signature, dependencies, and
    # the parity gate (each model loaded as the workers load it, its rows scored as MLflow's loader scores them).
    try:
        report = _preflight(settings)
    except BrokenProcessPool:
        from fraud_inference.parity import crash_cause

        print(
            "fraud-inference: cannot serve: the process loading the models for the parity gate died: "
            f"{crash_cause([settings.compiled_trees_cache()])}",
            file=sys.stderr,
        )
        return 1
    if report.registry_unavailable:
        # Not fatal: the server starts unready and retries with backoff until the registry answers.
        log.warning("registry.unavailable_at_startup", error=report.registry_unavailable)
    elif not report.ok:
        print(f"fraud-inference: cannot serve:\n{render(report)}", file=sys.stderr)
        return 1
    else:
        log.info(
            "models.checked",
            models={key: f"{c.name}/{c.version} ({c.selected_by})" for key, c in report.models.items()},
            parity={key: c.parity.max_abs_diff for key, c in report.models.items() if c.parity is not None},
        )
        for key, check in report.models.items():
            for warning in check.warnings:  # PARITY_CHECK=warn
                log.warning("model.parity_mismatch", model=key, detail=warning)
    # A fresh interpreter for granian's supervisor, in this process: it keeps none of what the checks imported.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "fraud_inference.supervisor"])
