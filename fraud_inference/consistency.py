"""Training-serving consistency: the packages that decide a model's numbers must match the ones it trained with."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

__all__ = [
    "DEPENDENCY_POLICIES",
    "DependencyCheck",
    "DependencyPolicy",
    "check_dependencies",
    "describe_violations",
]

DependencyPolicy = Literal["strict", "compatible", "warn", "off"]
DEPENDENCY_POLICIES: tuple[DependencyPolicy, ...] = ("strict", "compatible", "warn", "off")
Rule = Literal["same version", "same major.minor", "same major"]

# The distributions whose versions decide each flavour's scores, and how close `compatible` requires them.
# NOTE: scikit-learn does not support loading estimators across minor versions (their internals change and
# a model can load yet score differently); xgboost and lightgbm keep their model formats and prediction
# semantics within a major version; numpy and scipy break (ABI, numerics) across majors.
_CHECKED: dict[str, tuple[tuple[tuple[str, ...], Rule], ...]] = {
    "xgboost": ((("xgboost", "xgboost-cpu"), "same major"), (("numpy",), "same major")),
    "lightgbm": ((("lightgbm",), "same major"), (("numpy",), "same major")),
    "sklearn": ((("scikit-learn",), "same major.minor"), (("numpy",), "same major"), (("scipy",), "same major")),
}
# MLflow also records the flavour library's version in MLmodel: the fallback when requirements.txt has no pin.
_FLAVOR_VERSION_KEYS = {"xgboost": "xgb_version", "lightgbm": "lgb_version", "sklearn": "sklearn_version"}


class DependencyCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One package of one model: the version it was trained with, the one installed, and the verdict."""

    package: str
    recorded: str | None
    installed: str | None
    rule: str
    ok: bool


def check_dependencies(
    model_dir: Path, flavor: str, flavor_config: Mapping[str, object], policy: DependencyPolicy
) -> tuple[DependencyCheck, ...]:
    """Compare the model's recorded requirements with what is installed, under `policy`.

    `strict` asks for the same version; `compatible` (and `warn`, which only reports) for the rule per
    package above. `off` checks nothing.
    """
    if policy == "off":
        return ()
    recorded = _recorded_pins(model_dir / "requirements.txt")
    checks = []
    for distributions, compatible_rule in _CHECKED[flavor]:
        rule: Rule = "same version" if policy == "strict" else compatible_rule
        installed_name, installed = _installed(distributions)
        trained = next((recorded[name] for name in distributions if name in recorded), None)
        if trained is None and distributions[0] in {"xgboost", "lightgbm", "scikit-learn"}:
            flavor_version = flavor_config.get(_FLAVOR_VERSION_KEYS[flavor])
            trained = str(flavor_version) if flavor_version is not None else None
        package = installed_name or distributions[0]
        if trained is None:
            # Nothing recorded to compare with: only `strict` refuses what it cannot verify.
            checks.append(
                DependencyCheck(package=package, recorded=None, installed=installed, rule=rule, ok=policy != "strict")
            )
            continue
        checks.append(
            DependencyCheck(
                package=package,
                recorded=trained,
                installed=installed,
                rule=rule,
                ok=installed is not None and _satisfies(installed, trained, rule),
            )
        )
    return tuple(checks)


def describe_violations(model: str, name: str, version: str, checks: tuple[DependencyCheck, ...]) -> list[str]:
    """One line per failed check: model, package, trained and installed versions, the rule, the fix."""
    lines = []
    for check in checks:
        if check.ok:
            continue
        trained = check.recorded or "(not recorded)"
        installed = check.installed or "(not installed)"
        fix = (
            f"install {check.package}=={check.recorded} to match training, or retrain and log the model "
            f"with {check.package} {installed}"
            if check.recorded
            else f"log the model again with pip_requirements naming {check.package}"
        )
        lines.append(
            f"model {model!r} ({name} v{version}): {check.package} trained with {trained}, installed {installed}; "
            f"rule: {check.rule}. Fix: {fix}. (DEPENDENCY_CHECK=warn serves it anyway.)"
        )
    return lines


def _recorded_pins(requirements: Path) -> dict[str, str]:
    """`name -> version` for every exact pin (`name==version`) MLflow recorded with the model."""
    try:
        lines = requirements.read_text().splitlines()
    except OSError:
        return {}
    pins: dict[str, str] = {}
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        exact = [spec.version for spec in requirement.specifier if spec.operator in {"==", "==="}]
        if exact:
            pins[canonicalize_name(requirement.name)] = exact[0]
    return pins


def _installed(distributions: tuple[str, ...]) -> tuple[str | None, str | None]:
    for name in distributions:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _satisfies(installed: str, trained: str, rule: Rule) -> bool:
    try:
        have, want = Version(installed), Version(trained.removesuffix(".*"))
    except InvalidVersion:
        return installed == trained
    if rule == "same version":
        return have.release == want.release and have.pre == want.pre
    if rule == "same major.minor":
        return have.release[:2] == want.release[:2]
    return have.major == want.major
