"""The parity gate: a version serves only if the service scores its rows as MLflow's own flavour loader does.

For every served version the logged input example (and, where the signature has optional columns, the same rows
with those columns left out; without a usable example, rows built from the signature and the model's own splits
and categories, `models/signature_rows.py`) is scored twice: through the service's own loading and scoring code
(what the workers run: `load_model`, the request decoder, the flavour's scorer) and through
`mlflow.<flavour>.load_model`. Any |diff| > 1e-6, or a row MLflow scores that the service refuses, fails the gate.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

import msgspec

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.flavors import flavor_named
from fraud_inference.models.signature_frame import on_training_categories, text_dtype
from fraud_inference.models.tolerance import TOLERANCE
from fraud_inference.observability.logging import configure_logging

__all__ = [
    "PARITY_POLICIES",
    "TOLERANCE",
    "ParityPolicy",
    "ParityReport",
    "check_parity",
    "check_parity_isolated",
    "crash_cause",
    "gate_process",
    "mlflow_frame",
]

ParityPolicy = Literal["strict", "warn", "off"]
PARITY_POLICIES: tuple[ParityPolicy, ...] = ("strict", "warn", "off")


class ParityReport(msgspec.Struct, kw_only=True):
    """One version's gate: the rows compared, where they came from, the largest difference, every failure."""

    model: str
    name: str
    version: str
    rows: int = 0
    rows_from: Literal["input example", "signature"] = "input example"
    """`signature` when the version has no input example that can be used: the rows are built from its signature."""
    example_unused: str | None = None
    """With rows from the signature: why the input example was not used (none logged, or MLflow cannot read it)."""
    rows_cover: str | None = None
    """With rows from the signature: what they exercise (split thresholds, categories, optional columns left out)."""
    max_abs_diff: float | None = None
    """None when nothing was compared (PARITY_CHECK=off, or the service could not load the version)."""
    loaded: bool = False
    """The service loaded the version and scored its rows as the workers would."""
    seconds: float = 0.0
    failures: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_parity(
    artifact: ModelArtifact,
    *,
    against_mlflow: bool = True,
    load: Callable[[ModelArtifact], Any] | None = None,
) -> ParityReport:
    """Score the version's example rows through the service and through MLflow's loader; compare row by row.

    Without `against_mlflow` (PARITY_CHECK=off) the rows are only scored by the service: a version the workers
    cannot load or score still fails. `load` builds the service's model (default: `load_model`, exactly what the
    workers run); tests inject a deliberately wrong one to show the gate fails.
    """
    from threadpoolctl import threadpool_limits

    from fraud_inference.models.scoring import example_rows, load_model
    from fraud_inference.models.signature_errors import InstancesError
    from fraud_inference.reasons.parity import contribution_failures

    ref = artifact.ref
    report = ParityReport(model=ref.key, name=ref.name, version=ref.version)
    where = f"model {ref.key!r} ({ref.name} v{ref.version})"
    started = time.perf_counter()
    # NOTE: one thread: the gate runs beside serving (a refresh) and MLflow's loaders would start every core.
    with threadpool_limits(1):
        try:
            served = (load or load_model)(artifact)
        except Exception as error:
            report.failures.append(f"{where}: the service cannot load it: {type(error).__name__}: {error}")
            return report
        report.loaded = True
        rows, covers = example_rows(artifact, served.scorer)
        if covers is None:
            rows = rows + _with_optional_left_out(artifact, rows)
        else:  # the signature's rows leave out optional columns themselves
            report.rows_from, report.rows_cover = "signature", covers
            report.example_unused = artifact.input_example_unused
        report.rows = len(rows)
        differences: list[float] = []
        for index, row in enumerate(rows):
            expected = _mlflow_score(artifact, served, row) if against_mlflow else None
            try:
                got = float(served.score(json.dumps([row]).encode())[0])
            except InstancesError as error:  # refused, as a request would be: a failure only if MLflow scores it
                if expected is not None:
                    refused = f"MLflow's loader scores it {expected:.9g}, the service refuses it: {error}"
                    report.failures.append(f"{where} row {index}: {refused}")
                continue
            except Exception as error:  # the workers would fail on it: never served, whatever PARITY_CHECK says
                report.failures.append(f"{where} row {index}: the service fails to score it: {error!r}")
                report.loaded = False
                continue
            if not against_mlflow:
                continue
            if expected is None:
                report.failures.append(f"{where} row {index}: served {got:.9g}, MLflow's loader cannot score {row}")
                continue
            difference = abs(got - expected)
            differences.append(difference)
            if not difference <= TOLERANCE:
                report.failures.append(
                    f"{where} row {index}: served {got:.9g}, MLflow's loader {expected:.9g} (|diff| {difference:.3g} "
                    f"> {TOLERANCE:g}); likely cause: {_likely_cause(artifact, got, expected)}"
                )
        if against_mlflow and report.loaded:  # every explainable version: served contributions are the library's
            report.failures.extend(contribution_failures(artifact, served, rows, where))
    report.max_abs_diff = max(differences) if differences else None
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def gate_process(log_level: str, log_format: str) -> ProcessPoolExecutor:
    """One fresh `spawn`ed process for loading models and gating them, logging as the service does (role `parity`).

    NOTE: spawned, never forked: granian forks the HTTP process from the supervisor, and a process forked after
    OpenMP ran can hang in its next OpenMP call; the loaders (and a custom model's code) stay out of both.
    """
    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=functools.partial(configure_logging, role="parity"),
        initargs=(log_level, log_format),
    )


def check_parity_isolated(
    artifacts: Sequence[ModelArtifact], *, log_level: str = "INFO", log_format: str = "json"
) -> list[ParityReport]:
    """`check_parity` for each version in a fresh `spawn`ed process, so this one never runs the model libraries.

    The process (`gate_process`) logs as the service does (`log_level`, `log_format`), under the role `parity`.
    """
    if not artifacts:
        return []
    try:
        with gate_process(log_level, log_format) as executor:
            return list(executor.map(check_parity, artifacts))
    except BrokenProcessPool:
        cause = crash_cause(artifact.compiled_trees for artifact in artifacts)
        return [
            ParityReport(
                model=artifact.ref.key,
                name=artifact.ref.name,
                version=artifact.ref.version,
                failures=[
                    f"model {artifact.ref.key!r} ({artifact.ref.name} v{artifact.ref.version}): the process gating "
                    f"the new versions died while loading them; {cause}"
                ],
            )
            for artifact in artifacts
        ]


def crash_cause(caches: Iterable[str | Path | None]) -> str:
    """What a process that died loading models most likely died of: a compiled-trees library it was loading (named,
    and built again at the next load), else one of the versions."""
    from fraud_inference.models.compiled import crashed_libraries

    libraries = sorted(
        {str(library) for cache in caches if cache is not None for library in crashed_libraries(Path(cache))}
    )
    if libraries:
        return (
            f"it died loading the cached compiled trees {', '.join(libraries)} (COMPILED_TREES cache; the next load "
            "checks and builds them again; if it recurs, set COMPILED_TREES=off)"
        )
    return "one crashes the process that loads it (PARITY_CHECK=off skips the gate)"


def _mlflow_score(artifact: ModelArtifact, served: Any, row: dict[str, Any]) -> float | None:
    """MLflow's loader on the row as a client's DataFrame (a left-out key is missing), categories from training;
    None when MLflow cannot score it either."""
    try:
        return float(_mlflow_scores(artifact, served, row)[0])
    except Exception:
        return None


def _mlflow_scores(artifact: ModelArtifact, served: Any, row: dict[str, Any]) -> Any:
    frame = mlflow_frame(artifact, served, row)
    return flavor_named(artifact.flavor).mlflow_scores(artifact, frame, served.scorer.positive_class)


def mlflow_frame(artifact: ModelArtifact, served: Any, row: dict[str, Any]) -> Any:
    """The row as a client's DataFrame for MLflow's loaded model (a left-out key is missing), categories from
    training."""
    import pandas as pd

    frame = pd.DataFrame([row], columns=[feature.name for feature in artifact.features])
    text = text_dtype()
    for feature in artifact.features:
        column = frame[feature.name]
        if feature.type == "string" and column.isna().all():  # left out (float NaN) or null (None): text
            frame[feature.name] = column.astype(text)
        elif column.dtype == object:  # a number sent as null: NaN, as a client's float column holds it
            frame[feature.name] = column.astype("float64")
    for name, categories in served.scorer.categories.items():
        frame[name] = on_training_categories(frame[name], pd.CategoricalDtype(pd.Index(categories)))
    return frame


def _with_optional_left_out(artifact: ModelArtifact, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    optional = {feature.name for feature in artifact.features if not feature.required}
    if not optional:
        return []
    return [{key: value for key, value in row.items() if key not in optional} for row in rows]


def _likely_cause(artifact: ModelArtifact, got: float, expected: float) -> str:
    if abs(got - (1.0 - expected)) <= TOLERANCE:
        return "the other class is scored: set the version tag positive_class to the fraud label"
    if artifact.flavor in {"xgboost", "lightgbm"}:
        return "the trees used differ (early stopping: best_iteration versus every tree), or the feature order"
    return "the scoring path differs from MLflow's loader (feature order, dtypes, categories or library versions)"
