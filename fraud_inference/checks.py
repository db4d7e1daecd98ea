"""The deployment gate: resolve the served models and run every check, without serving."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec

from fraud_inference.consistency import DependencyCheck
from fraud_inference.models.artifact import DependencyMismatchError, ModelArtifact, UnservableModelError
from fraud_inference.models.reading import fetch_artifact
from fraud_inference.parity import ParityPolicy, ParityReport, check_parity
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
    """The service loaded the version and scored its rows (input example, else rows from the signature)."""
    parity: ParityReport | None = None
    """The parity gate's figures: rows compared, where they came from, the largest |diff|, seconds."""
    errors: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    """Parity failures under PARITY_CHECK=warn: reported, not failing."""


class CheckReport(msgspec.Struct, kw_only=True):
    """The gate's verdict: `ok` only when every model resolved, matched its dependencies and (if asked) scored."""

    ok: bool
    registry: str
    dependency_check: str
    parity_check: str = "strict"
    registry_unavailable: str | None = None
    models: dict[str, ModelCheck]


def run_checks(settings: Settings, *, load: bool) -> CheckReport:
    """Resolve, download and check every served model; with `load`, also load it as the workers do and run the
    parity gate (`PARITY_CHECK`): its rows scored by the service and by MLflow's own loader must agree."""
    assert settings.mlflow_tracking_uri is not None
    report = CheckReport(
        ok=True,
        registry=redact_credentials(settings.mlflow_tracking_uri),
        dependency_check=settings.dependency_check,
        parity_check=settings.parity_check,
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
            registry, ref, downloads, dependency_policy=settings.dependency_check, trust=settings.model_trust(),
            compiled_trees=settings.compiled_trees_cache(),
        )  # fmt: skip
    except DependencyMismatchError as error:
        artifact = error.artifact
        check.errors.extend(artifact.dependency_violations())
    except UnservableModelError as error:
        check.errors.append(str(error))
        return
    check.flavor = artifact.flavor
    check.dependencies = list(artifact.dependencies)
    if load and not check.errors:
        gate(artifact, check, settings.parity_check)


def gate(artifact: ModelArtifact, check: ModelCheck, policy: ParityPolicy) -> None:
    """Load the version as the workers do and run the parity gate on it, recording the verdict in `check`.

    A version the service cannot load or score always fails; under PARITY_CHECK=warn a difference from MLflow's
    loader is a warning, under `off` it is not looked for (the rows are still scored by the service).
    """
    report = check_parity(artifact, against_mlflow=policy != "off")
    check.parity = report
    check.scored_input_example = report.loaded and report.rows > 0
    if not report.loaded or policy == "strict":
        check.errors.extend(report.failures)
    else:
        check.warnings.extend(report.failures)


def render(report: CheckReport) -> str:
    """The report for people: one line per model, then every problem with its fix."""
    lines = [
        f"registry {report.registry} (DEPENDENCY_CHECK={report.dependency_check}, PARITY_CHECK={report.parity_check})"
    ]
    if report.registry_unavailable:
        lines.append(f"  registry unavailable: {report.registry_unavailable}")
    for key, check in report.models.items():
        verdict = "FAIL" if check.errors else "ok"
        where = f"{check.name} v{check.version} ({check.selected_by})" if check.version else check.name
        packages = ", ".join(f"{d.package} {d.recorded or '?'}->{d.installed or '?'}" for d in check.dependencies)
        lines.append(f"  {verdict:4} {key}: {where}" + (f"; {packages}" if packages else ""))
        if check.parity is not None and check.parity.max_abs_diff is not None:
            parity = check.parity
            lines.append(
                f"       parity: {parity.rows} rows from the {parity.rows_from}, max |diff| against MLflow's loader "
                f"{parity.max_abs_diff:.3g}, {parity.seconds:.2f} s"
            )
            if parity.rows_from == "signature":
                lines.append(f"       input example not used: {parity.example_unused or 'none logged'}")
                lines.append(f"       rows from the signature: {parity.rows_cover}")
        lines.extend(f"       - {error}" for error in check.errors)
        lines.extend(f"       - warning: {warning}" for warning in check.warnings)
    lines.append("all checks passed" if report.ok else "checks FAILED")
    return "\n".join(lines)
