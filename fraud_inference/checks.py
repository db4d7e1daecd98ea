"""The deployment gate: resolve the served models and run every check, without serving."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec

from fraud_inference.consistency import DependencyCheck
from fraud_inference.models.artifact import DependencyMismatchError, ModelArtifact, UnservableModelError, fetch_artifact
from fraud_inference.registry import Registry, RegistryUnavailableError, ResolutionError
from fraud_inference.settings import Settings, redact_credentials

__all__ = ["CheckReport", "ModelCheck", "render", "run_checks"]


class ModelCheck(msgspec.Struct, kw_only=True):
    """Everything checked for one served model."""

    name: str
    version: str | None = None
    selected_by: str | None = None
    flavor: str | None = None
    dependencies: list[DependencyCheck] = msgspec.field(default_factory=list)
    scored_input_example: bool = False
    errors: list[str] = msgspec.field(default_factory=list)


class CheckReport(msgspec.Struct, kw_only=True):
    """The gate's verdict: `ok` only when every model resolved, matched its dependencies and (if asked) scored."""

    ok: bool
    registry: str
    dependency_check: str
    registry_unavailable: str | None = None
    models: dict[str, ModelCheck]


def run_checks(settings: Settings, *, load: bool) -> CheckReport:
    """Resolve, download and check every served model; with `load`, also load it and score its input example."""
    assert settings.mlflow_tracking_uri is not None
    report = CheckReport(
        ok=True,
        registry=redact_credentials(settings.mlflow_tracking_uri),
        dependency_check=settings.dependency_check,
        models={key: ModelCheck(name=name) for key, name in settings.models.items()},
    )
    try:
        registry = Registry(
            settings.mlflow_tracking_uri,
            alias=settings.model_alias,
            stages=settings.model_stages,
            timeout_s=settings.registry_timeout_s,
        )
        with tempfile.TemporaryDirectory(prefix="fraud-inference-check-") as downloads:
            for key, check in report.models.items():
                _check_model(registry, key, check, Path(downloads), settings, load=load)
    except RegistryUnavailableError as error:
        report.registry_unavailable = str(error)
    report.ok = report.registry_unavailable is None and not any(check.errors for check in report.models.values())
    return report


def _check_model(
    registry: Registry, key: str, check: ModelCheck, downloads: Path, settings: Settings, *, load: bool
) -> None:
    try:
        ref = registry.resolve(key, check.name)
    except ResolutionError as error:
        check.errors.append(str(error))
        return
    check.version, check.selected_by = ref.version, ref.selected_by
    try:
        artifact = fetch_artifact(
            registry, ref, downloads, dependency_policy=settings.dependency_check, trust=settings.model_trust()
        )
    except DependencyMismatchError as error:
        artifact = error.artifact
        check.errors.extend(artifact.dependency_violations())
    except UnservableModelError as error:
        check.errors.append(str(error))
        return
    check.flavor = artifact.flavor
    check.dependencies = list(artifact.dependencies)
    if load and not check.errors:
        try:
            _score_input_example(artifact)
            check.scored_input_example = True
        except Exception as error:
            check.errors.append(f"model {key!r} ({ref.name} v{ref.version}) failed to load or score: {error}")


def _score_input_example(artifact: ModelArtifact) -> None:
    """Load the model as a worker does and score the input example logged with it, through the request path."""

    from mlflow.models import Model

    from fraud_inference.models.scoring import load_model

    path = artifact.path
    example: Any = Model.load(path).load_input_example(path)
    if example is None:
        raise ValueError("no input example was logged with the model: log one with input_example=X.head()")
    columns = [feature.name for feature in artifact.features if feature.name in example.columns]
    instances = example[columns].to_json(orient="records").encode()
    probabilities = load_model(artifact).score(instances)
    if probabilities.shape != (len(example),) or not ((probabilities >= 0) & (probabilities <= 1)).all():
        raise ValueError(f"scoring the input example gave {probabilities!r}, not one probability per row")


def render(report: CheckReport) -> str:
    """The report for people: one line per model, then every problem with its fix."""
    lines = [f"registry {report.registry} (DEPENDENCY_CHECK={report.dependency_check})"]
    if report.registry_unavailable:
        lines.append(f"  registry unavailable: {report.registry_unavailable}")
    for key, check in report.models.items():
        verdict = "FAIL" if check.errors else "ok"
        where = f"{check.name} v{check.version} ({check.selected_by})" if check.version else check.name
        packages = ", ".join(f"{d.package} {d.recorded or '?'}->{d.installed or '?'}" for d in check.dependencies)
        lines.append(f"  {verdict:4} {key}: {where}" + (f"; {packages}" if packages else ""))
        lines.extend(f"       - {error}" for error in check.errors)
    lines.append("all checks passed" if report.ok else "checks FAILED")
    return "\n".join(lines)
