"""Training-serving consistency: the packages that decide a model's numbers must match the ones it trained with."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Sequence
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
    "PackageRule",
    "check_dependencies",
    "describe_violations",
    "recorded_pins",
]

DependencyPolicy = Literal["strict", "compatible", "warn", "off"]
DEPENDENCY_POLICIES: tuple[DependencyPolicy, ...] = ("strict", "compatible", "warn", "off")
Rule = Literal["same version", "same major.minor", "same major"]
# pip's syntax: a comment starts at a `#` at the line's start or after whitespace; options follow ` --`.
_COMMENT = re.compile(r"(^|\s)#.*$")
_OPTION = re.compile(r"\s--[a-z]")


class PackageRule(msgspec.Struct, frozen=True):
    """A package that decides a flavour's numbers (any of `distributions`) and how close `compatible` wants it.

    Each flavour module lists its own (`ModelFlavor.packages`); the first rule names the flavour's library.
    """

    distributions: tuple[str, ...]
    rule: Rule


class DependencyCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One package of one model: the version it was trained with, the one installed, and the verdict."""

    package: str
    recorded: str | None
    installed: str | None
    rule: str
    ok: bool


def check_dependencies(
    model_dir: Path, packages: Sequence[PackageRule], flavor_version: object, policy: DependencyPolicy
) -> tuple[DependencyCheck, ...]:
    """Compare the model's recorded requirements with what is installed, under `policy`.

    `packages` are the flavour's rules; the first names the flavour's library, whose version MLflow also records
    in MLmodel (`flavor_version`, the fallback when requirements.txt has no pin). `strict` asks for the same
    version; `compatible` (and `warn`, which only reports) for each package's rule. `off` checks nothing.
    """
    if policy == "off":
        return ()
    recorded = recorded_pins(model_dir / "requirements.txt")
    checks = []
    for index, package_rule in enumerate(packages):
        distributions = package_rule.distributions
        rule: Rule = "same version" if policy == "strict" else package_rule.rule
        installed_name, installed = _installed(distributions)
        trained = next((recorded[name] for name in distributions if name in recorded), None)
        if trained is None and index == 0 and flavor_version is not None:
            trained = str(flavor_version)
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


def recorded_pins(requirements: Path) -> dict[str, str]:
    """`name -> version` for every exact pin (`name==version`) MLflow recorded that applies to this interpreter.

    Read as pip reads a requirements file: comments and option lines ignored, continuation lines joined, per-line
    options (`--hash=...`) stripped, and a requirement whose environment marker does not hold for the serving
    interpreter (`numpy==1.26.4; python_version < "3.11"`) skipped, as `packaging` evaluates it.
    """
    try:
        text = requirements.read_text()
    except OSError:
        return {}
    pins: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = _COMMENT.sub("", line).strip()
        if not line or line.startswith("-"):
            continue
        line = _OPTION.split(line, maxsplit=1)[0].strip()
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
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
