"""Which model version to serve (alias first, then stages), and where its files live."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from fraud_inference.settings import redact_credentials

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["ModelRef", "Registry", "RegistryUnavailableError", "ResolutionError"]

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

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    """Resolve served models against an MLflow Model Registry and download their artifacts."""

    def __init__(self, tracking_uri: str, *, alias: str, stages: Sequence[str], timeout_s: int = 10) -> None:
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

    def resolve_all(self, models: Mapping[str, str]) -> dict[str, ModelRef]:
        """Resolve every served model; raise for the first that cannot be resolved."""
        return {key: self.resolve(key, name) for key, name in models.items()}

    def resolve(self, key: str, name: str) -> ModelRef:
        """Pick the version for `name`: alias first, else the newest version of the first stage that has one."""
        tried: list[str] = []
        version = self._by_alias(name)
        selected_by = f"alias:{self._alias}"
        tried.append(f"alias {self._alias!r}")
        if version is None:
            for stage in self._stages:
                tried.append(f"stage {stage!r}")
                version = self._newest_in_stage(name, stage)
                if version is not None:
                    selected_by = f"stage:{stage}"
                    break
        if version is None:
            raise ResolutionError(
                f"model {key!r} (registered name {name!r}) resolves to no version: tried {', '.join(tried)} "
                f"in the registry at {redact_credentials(self.tracking_uri)}. Set the alias with "
                f"MlflowClient().set_registered_model_alias({name!r}, {self._alias!r}, <version>), "
                "or run `fraud-inference seed-demo` for the demo models."
            )
        return ModelRef(
            key=key,
            name=name,
            version=str(version.version),
            selected_by=selected_by,
            run_id=version.run_id or None,
            threshold=_threshold(key, version),
            positive_class=(version.tags or {}).get("positive_class"),
            probability_column=(version.tags or {}).get("probability_column"),
        )

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

    def _by_alias(self, name: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version_by_alias(name, self._alias)
        except MlflowException as error:
            if _is_not_found(error):
                return None
            raise RegistryUnavailableError(f"registry error looking up {name}@{self._alias}: {error}") from error
        except Exception as error:
            raise RegistryUnavailableError(f"registry unreachable looking up {name}@{self._alias}: {error}") from error

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


def _bound_http_calls(timeout_s: int) -> None:
    """Bound every call to an http(s) registry: MLflow's defaults (120 s, 7 retries) hang a refresh for minutes.

    MLflow reads these settings only from its environment variables, at each request.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


def _is_not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


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
