"""Which model version to serve (alias first, then stages), and where its files live."""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from fraud_inference.settings import ModelSpec, redact_credentials

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["ModelRef", "Registry", "RegistryUnavailableError", "ResolutionError", "registry_uri_problem"]

DEFAULT_THRESHOLD = 0.5
# MODEL_STAGES is a supported setting: MLflow's deprecation warning on every lookup would only be noise.
warnings.filterwarnings("ignore", message=r".*get_latest_versions.*", category=FutureWarning)


class ResolutionError(Exception):
    """A served model resolves to no usable version; the message says what was tried."""


class RegistryUnavailableError(Exception):
    """The registry could not be asked (unreachable, timed out, or answered with a server error)."""

    def __init__(self, message: str) -> None:
        # NOTE: MLflow's errors quote the request URL, credentials included; this message reaches logs and /readyz.
        super().__init__(redact_credentials(message))


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    """One registry version chosen to serve under a model key, and why it was chosen."""

    key: str
    name: str
    version: str
    selected_by: str
    run_id: str | None
    threshold: float
    positive_class: str | None = None
    """Version tag `positive_class`: the fraud label, needed when the classes are not 0/1 or False/True."""
    probability_column: str | None = None
    """Version tag `probability_column`: the output column of a custom pyfunc model holding the probabilities."""
    reason_codes: str | None = None
    """Version tag `reason_codes`: JSON mapping features to reason codes and texts (`reasons.codes`)."""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    """Resolve served models against an MLflow Model Registry and download their artifacts."""

    def __init__(self, tracking_uri: str, *, alias: str, stages: Sequence[str], timeout_s: int) -> None:
        """`timeout_s` is REGISTRY_TIMEOUT_S: no default here, so every caller passes the setting."""
        _bound_http_calls(timeout_s)
        import mlflow
        from mlflow import MlflowClient  # NOTE: import mlflow (~2.5 s) only where a registry is used.

        # NOTE: some of MLflow's artifact paths (models:/ downloads) read the process-wide registry URI,
        # not the one passed in: make it ours, whatever MLFLOW_REGISTRY_URI the environment holds.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self._alias = alias
        self._stages = tuple(stages)
        self._client: MlflowClient = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._download_locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def resolve_all(self, models: Mapping[str, str]) -> dict[str, ModelRef]:
        """Resolve every served model; raise for the first that cannot be resolved."""
        return {key: self.resolve(key, name) for key, name in models.items()}

    def resolve(self, key: str, name: str) -> ModelRef:
        """Pick the version for `name` (a MODELS entry): `name/3` is version 3, `name@alias` that alias only;
        a bare name takes MODEL_ALIAS first, else the newest version of the first stage that has one."""
        spec = ModelSpec.parse(name)
        if spec.version is not None:
            version, selected_by, tried = self._pinned(spec.name, spec.version), "pinned", [f"version {spec.version}"]
        elif spec.alias is not None:
            version, selected_by, tried = self._by_alias(spec.name, spec.alias), f"alias:{spec.alias}", []
            tried.append(f"alias {spec.alias!r}")
        else:
            version, selected_by, tried = self._by_alias(spec.name, self._alias), f"alias:{self._alias}", []
            tried.append(f"alias {self._alias!r}")
            for stage in self._stages if version is None else ():
                tried.append(f"stage {stage!r}")
                version = self._newest_in_stage(spec.name, stage)
                if version is not None:
                    selected_by = f"stage:{stage}"
                    break
        if version is None:
            raise ResolutionError(self._explain_missing(key, spec, tried))
        return _ref(key, version, selected_by)

    def challengers(self, served: Mapping[str, ModelRef], alias: str) -> dict[str, ModelRef]:
        """Per served model, the version its registered model's `alias` (CHALLENGER_ALIAS) points at, when there
        is one and it is not the served version. `ResolutionError` for a challenger with an invalid threshold tag."""
        found: dict[str, ModelRef] = {}
        for key, ref in served.items():
            version = self._by_alias(ref.name, alias)
            if version is not None and str(version.version) != ref.version:
                found[key] = _ref(key, version, f"alias:{alias}")
        return found

    def _explain_missing(self, key: str, spec: ModelSpec, tried: list[str]) -> str:
        """Why `spec` resolves to nothing: a name no model is registered under, else what was tried and the fix."""
        where = f"the registry at {redact_credentials(self.tracking_uri)}"
        registered = self._registered_names()
        if spec.name not in registered:
            close = difflib.get_close_matches(spec.name, registered, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(sorted(registered)) or "none"
            return (
                f"model {key!r}: no registered model named {spec.name!r} in {where}{hint}; registered: {listed}. "
                "Fix MODELS, or run `fraud-inference seed-demo` for the demo models."
            )
        if spec.version is not None:
            return f"model {key!r}: {spec.name!r} has no version {spec.version} in {where}: fix the pin in MODELS."
        alias = spec.alias or self._alias
        return (
            f"model {key!r} (registered name {spec.name!r}) resolves to no version: tried {', '.join(tried)} "
            f"in {where}. Set the alias with "
            f"MlflowClient().set_registered_model_alias({spec.name!r}, {alias!r}, <version>), "
            "or run `fraud-inference seed-demo` for the demo models."
        )

    def _registered_names(self) -> list[str]:
        try:
            found = self._client.search_registered_models(max_results=1000)
        except Exception as error:
            raise RegistryUnavailableError(f"registry unreachable listing registered models: {error}") from error
        return [model.name for model in found]

    def _pinned(self, name: str, version: str) -> ModelVersion | None:
        return _found_or_none(f"{name} v{version}", lambda: self._client.get_model_version(name, version))

    def download_once(self, ref: ModelRef, downloads: Path) -> Path:
        """The version's files under `downloads/<name>/<version>`, downloaded only if no complete copy is there.

        Served keys on the same version are fetched at the same time by a refresh: the first downloads (into a
        `.partial` folder, renamed when complete) while the others wait for it, then all share that folder.
        """
        destination = downloads / ref.name / ref.version
        with self._lock_of(destination):
            if not destination.exists():
                partial = destination.with_name(f"{ref.version}.partial")
                shutil.rmtree(partial, ignore_errors=True)  # left by a process that died mid-download
                self.download(ref, partial)
                partial.rename(destination)
        return destination

    def _lock_of(self, destination: Path) -> threading.Lock:
        with self._locks_guard:
            return self._download_locks.setdefault(destination, threading.Lock())

    def download(self, ref: ModelRef, destination: Path) -> Path:
        """Copy the version's model directory to `destination` and return its local path."""
        from mlflow.artifacts import download_artifacts

        destination.mkdir(parents=True, exist_ok=True)
        try:
            local = download_artifacts(
                artifact_uri=ref.uri,
                dst_path=str(destination),
                tracking_uri=self.tracking_uri,
                registry_uri=self.tracking_uri,
            )
        except Exception as error:
            raise RegistryUnavailableError(f"cannot download {ref.uri} for model {ref.key!r}: {error}") from error
        return Path(local)

    def _by_alias(self, name: str, alias: str) -> ModelVersion | None:
        return _found_or_none(f"{name}@{alias}", lambda: self._client.get_model_version_by_alias(name, alias))

    def _newest_in_stage(self, name: str, stage: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        get_latest_versions = getattr(self._client, "get_latest_versions", None)
        if get_latest_versions is None:
            raise ResolutionError(
                f"this MLflow has no model stages (MlflowClient.get_latest_versions is gone), so stage "
                f"{stage!r} cannot be looked up for {name!r}: point alias {self._alias!r} at a version "
                "or set MODEL_STAGES to stages this MLflow still supports."
            )
        try:
            versions: list[ModelVersion] = get_latest_versions(name, stages=[stage])
        except MlflowException as error:
            if _is_not_found(error):
                return None
            raise RegistryUnavailableError(f"registry error listing {name} in stage {stage}: {error}") from error
        except Exception as error:
            raise RegistryUnavailableError(f"registry unreachable listing {name} in {stage}: {error}") from error
        return max(versions, key=lambda version: int(version.version), default=None)


# SQLAlchemy's default driver of each database MLflow's store accepts: (module to import, package to install).
_DATABASE_DRIVERS: dict[str, tuple[str, str]] = {
    "postgresql": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
    "mssql": ("pyodbc", "pyodbc"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
}


def registry_uri_problem(tracking_uri: str, *, must_exist: bool) -> str | None:
    """What stops `tracking_uri` from working here, in one sentence with the fix; None when nothing does.

    A `sqlite:///` file that does not exist (MLflow would silently create an empty registry) is a problem
    when `must_exist`; a database URI whose SQLAlchemy driver is not installed always is.
    """
    scheme = tracking_uri.partition(":")[0].lower()
    if scheme == "sqlite":
        path = tracking_uri.removeprefix("sqlite:///").partition("?")[0]
        if must_exist and path not in {"", ":memory:"} and not Path(path).is_file():
            return (
                f"there is no SQLite registry at {Path(path).absolute()}: check the path (an absolute path takes "
                "four slashes, sqlite:////abs/mlflow.db), or create one with `fraud-inference seed-demo`"
            )
        return None
    driver = _DATABASE_DRIVERS.get(scheme)
    if driver is not None and importlib.util.find_spec(driver[0]) is None:
        module, package = driver
        return (
            f"a {scheme}:// registry needs the database driver {module}, which is not installed: install "
            f"{package!r} beside fraud-inference (uv pip install '{package}'), or point MLFLOW_TRACKING_URI "
            "at the MLflow server in front of the database (http://...)"
        )
    return None


def _bound_http_calls(timeout_s: int) -> None:
    """Bound every call to an http(s) registry: MLflow's defaults (120 s, 7 retries) hang a refresh for minutes.

    MLflow reads these settings only from its environment variables, at each request. Against a registry that
    accepts and never answers, one call takes at most two attempts of `timeout_s` and urllib3's backoff between
    them (none before the first retry, plus MLflow's jitter of up to 1 s): 2 x `timeout_s` + 1 s.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


def _found_or_none(what: str, lookup: Callable[[], ModelVersion]) -> ModelVersion | None:
    """The version `lookup` finds; None when the registry says there is none; `RegistryUnavailableError` else."""
    from mlflow.exceptions import MlflowException

    try:
        return lookup()
    except MlflowException as error:
        if _is_not_found(error):
            return None
        raise RegistryUnavailableError(f"registry error looking up {what}: {error}") from error
    except Exception as error:
        raise RegistryUnavailableError(f"registry unreachable looking up {what}: {error}") from error


def _is_not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def _ref(key: str, version: ModelVersion, selected_by: str) -> ModelRef:
    """The ref of registry `version` served under `key`, its tags read."""
    return ModelRef(
        key=key,
        name=version.name,
        version=str(version.version),
        selected_by=selected_by,
        run_id=version.run_id or None,
        threshold=_threshold(key, version),
        positive_class=(version.tags or {}).get("positive_class"),
        probability_column=(version.tags or {}).get("probability_column"),
        reason_codes=(version.tags or {}).get("reason_codes"),
    )


def _threshold(key: str, version: ModelVersion) -> float:
    raw = (version.tags or {}).get("threshold")
    if raw is None:
        return DEFAULT_THRESHOLD
    try:
        threshold = float(raw)
    except ValueError:
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:
        raise ResolutionError(
            f"model {key!r} ({version.name} v{version.version}) has tag threshold={raw!r}: "
            "it must be a number between 0 and 1"
        )
    return threshold
