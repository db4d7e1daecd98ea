"""What the HTTP process itself spends per request, without granian, the pipe or a model.

    uv run python -m benchmarks.http_process                 # every scoring route, 1 and 100 rows
    uv run python -m benchmarks.http_process --profile /v1/predict   # and cProfile's top functions
    uv run python -m benchmarks.http_process --log off       # the access log off only (`--log on`: on only)

Drives the real app (`create_app`: the request-id edge, Litestar's routing and exception handlers, each
protocol's parsing and answer) by calling it as an ASGI app in this process. The one thing faked is the
dataplane's call to the pool: `DataPlane.score` answers at once with fixed probabilities, so the
figure is the HTTP process's own Python cost per request, the part the worker pool cannot take off it.
Routes are measured in alternation, round after round (the machine is noisy), as CPU microseconds of this
process per request (`time.process_time_ns`); by default each route with the access log off (LOG_LEVEL=WARNING)
then on (INFO, `serve`'s default; its lines to a file, as the benchmarks' service writes them), in every round.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks.scenarios import Scenario, our_requests
from fraud_inference.api.app import create_app
from fraud_inference.dataplane import DataPlane
from fraud_inference.lifecycle import Generation
from fraud_inference.models.artifact import FeatureSpec, ModelArtifact
from fraud_inference.models.flavors._base import ModelFile
from fraud_inference.observability.logging import configure_logging
from fraud_inference.pool import Scores
from fraud_inference.pool.messages import FRAUD_PROBABILITY, Columns
from fraud_inference.registry import ModelRef
from fraud_inference.service import FraudService
from fraud_inference.settings import Settings

__all__ = ["main"]

_MODEL = "xgboost"


class _Route(msgspec.Struct, frozen=True):
    name: str
    path: str
    body: bytes
    content_type: bytes = b"application/json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1_000, help="per route and round")
    parser.add_argument("--profile", metavar="PATH", help="cProfile this route (e.g. /v1/predict) after timing")
    parser.add_argument(
        "--log",
        choices=("on", "off", "both"),
        default="both",
        help="the access log (LOG_LEVEL=INFO, `serve`'s default, to a file) or not (WARNING); "
        "both: each route measured with it off then on, in every round",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fraud-inference-http-bench-") as model_directory:
        timings = _measure(args, Path(model_directory))
    print(f"CPU us per request in this process, median (min-max) of {args.rounds} rounds of {args.requests}:")
    for name, values in timings.items():
        print(f"  {name:34} {statistics.median(values):7.1f}  ({min(values):.1f}-{max(values):.1f})")
    return 0


def _measure(args: argparse.Namespace, model_directory: Path) -> dict[str, list[float]]:
    """Each route's CPU microseconds per request, one figure a round; the app's model files in `model_directory`."""
    app, routes = _app_and_routes(model_directory)
    levels = {"on": ["INFO"], "off": ["WARNING"], "both": ["WARNING", "INFO"]}[args.log]
    log_file = (model_directory / "access.log").open("w")
    timings: dict[str, list[float]] = {
        f"{route.name}, log {'on' if level == 'INFO' else 'off'}": [] for route in routes for level in levels
    }

    async def drive() -> None:
        for route in routes:  # warm up: first-call caches, lazily built handlers
            await _call_many(app, route, 50)
        for _ in range(args.rounds):
            for route in routes:
                for level in levels:
                    configure_logging(level, "json", role="server", stream=log_file)
                    started = time.process_time_ns()
                    await _call_many(app, route, args.requests)
                    name = f"{route.name}, log {'on' if level == 'INFO' else 'off'}"
                    timings[name].append((time.process_time_ns() - started) / args.requests / 1000)
        if args.profile:
            configure_logging(levels[-1], "json", role="server", stream=log_file)
            route = next(r for r in routes if r.path.startswith(args.profile))
            profiler = cProfile.Profile()
            profiler.enable()
            await _call_many(app, route, args.requests)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)

    async def drive_then_stop() -> None:
        try:
            await drive()
        finally:
            await app.state.service.stop()  # removes the service's downloads directory (its pool never started)
            configure_logging("WARNING", "json", role="server", stream=sys.stderr)
            await asyncio.sleep(0)  # the access log's last lines, written at the end of the loop's turn
            log_file.close()

    asyncio.run(drive_then_stop())
    return timings


def _app_and_routes(model_directory: Path) -> tuple[Any, list[_Route]]:
    settings = Settings.from_env({"GRPC": "off", "MLFLOW_TRACKING_URI": "sqlite:///unused.db", "LOG_LEVEL": "WARNING"})
    app = create_app(settings)
    rows: dict[int, list[dict[str, Any]]] = {}
    for n in (1, 100):
        body = our_requests(Scenario(name="x", models=(_MODEL,), rows=n, connections=1), "http://x").bodies[0]
        rows[n] = msgspec.json.decode(body)["instances"]
    features = tuple(FeatureSpec(name=name, type="double") for name in rows[1][0])
    generation = Generation(number=1, models={_MODEL: _artifact(features, model_directory)})
    app.state.service = _InstantService(settings, app.state.metrics, generation)
    routes = []
    for n, instances in rows.items():
        names = list(instances[0])
        split = {"columns": names, "data": [[row[name] for name in names] for row in instances]}
        tensor = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [n, len(names)],
                              "data": [row[name] for row in instances for name in names]}]}  # fmt: skip
        v1 = {"model": _MODEL, "instances": instances}
        mlflow = {"dataframe_split": split}
        routes += [
            _Route(f"/v1/predict, {n} row(s)", "/v1/predict", msgspec.json.encode(v1)),
            _Route(f"/invocations, {n} row(s)", f"/invocations/{_MODEL}", msgspec.json.encode(mlflow)),
            _Route(f"/v2 infer, {n} row(s)", f"/v2/models/{_MODEL}/infer", msgspec.json.encode(tensor)),
        ]
    return app, routes


_MLMODEL = """\
flavors:
  python_function:
    loader_module: mlflow.xgboost
    data: model.ubj
  xgboost:
    data: model.ubj
    model_class: xgboost.sklearn.XGBClassifier
    model_format: ubj
"""


def _artifact(features: tuple[FeatureSpec, ...], directory: Path) -> ModelArtifact:
    """A model `directory` holding only its MLmodel: what /invocations reads to answer as MLflow's server would."""
    (directory / "MLmodel").write_text(_MLMODEL)
    ref = ModelRef(key=_MODEL, name="fraud-xgboost", version="1", selected_by="alias:champion", run_id=None,
                   threshold=0.5)  # fmt: skip
    model_file = ModelFile(file="model.ubj", format="native")
    return ModelArtifact(ref=ref, path=str(directory), flavor="xgboost", features=features, model_file=model_file)


class _InstantService(FraudService):
    """The real protocols, selection, metrics and dataplane; FAKE: the lifecycle holds `generation` from the start,
    and the dataplane's call to the pool answers at once (`_InstantDataPlane`)."""

    def __init__(self, settings: Settings, metrics: Any, generation: Generation) -> None:
        super().__init__(settings, metrics)
        self.lifecycle.active = generation
        self.dataplane = _InstantDataPlane(
            settings, metrics, self.pool, active=lambda: generation, not_ready_reason=lambda: "never"
        )


class _InstantDataPlane(DataPlane):
    """FAKE: the pool's scoring, which answers 0.25 for every row at once (rows or columns)."""

    _rows_of = msgspec.json.Decoder(list[msgspec.Raw]).decode

    async def score(
        self,
        generation: Generation,
        model: str,
        instances: bytes | Columns,
        request_id: str,
        *,
        wants: tuple[str, ...] = (),
    ) -> Scores:
        rows = instances
        count = len(self._rows_of(rows)) if isinstance(rows, bytes) else len(msgspec.msgpack.decode(rows.values[0]))
        ref = generation.models[model].ref
        probabilities = np.full(count, 0.25)
        self.metrics.record_scores(model, ref.version, probabilities, ref.threshold, 0.0001)
        # The workers encode MLflow's answer (an XGBClassifier's labels); here as they would send it.
        outputs = {name: msgspec.json.encode([0] * count) for name in wants}
        return Scores(outputs={FRAUD_PROBABILITY: probabilities.tobytes(), **outputs}, seconds=0.0001)


async def _call_many(app: Any, route: _Route, count: int) -> None:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", route.content_type),
               (b"content-length", str(len(route.body)).encode())]  # fmt: skip
    for _ in range(count):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": route.path, "raw_path": route.path.encode(), "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
                 "server": ("127.0.0.1", 8000)}  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": route.body, "more_body": False}

        status = 0
        answer = b""

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, answer
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                answer += message.get("body", b"")

        await app(scope, receive, send)
        if status != 200:
            raise SystemExit(f"{route.path} answered {status}: {answer[-600:].decode()}")


if __name__ == "__main__":
    sys.exit(main())
