"""The one typed settings object, read from the environment once at startup."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from fraud_inference.models.trust import ModelTrust

__all__ = ["DEFAULT_MODELS", "Settings", "SettingsError", "redact_credentials"]

DEFAULT_MODELS = "xgboost=fraud-xgboost,lightgbm=fraud-lightgbm,sklearn=fraud-sklearn"
LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_Number = TypeVar("_Number", int, float)
_Choice = TypeVar("_Choice", bound=str)


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable and how to fix it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service can be configured with. Build it with `Settings.from_env()`."""

    mlflow_tracking_uri: str | None = None
    models: dict[str, str] = msgspec.field(default_factory=lambda: _parse_models(DEFAULT_MODELS))
    default_model: str = "xgboost"
    model_alias: str = "champion"
    model_stages: tuple[str, ...] = ("Production", "Staging")
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_batch_rows: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    inference_timeout_s: float = 10.0
    hung_worker_s: float = 120.0
    queue_limit: int = 1024
    batch_max_requests: int = 64
    batch_max_bytes: int = 512 * 1024
    batch_wait_ms: float = 0.0
    refresh_interval_s: float = 0.0
    registry_timeout_s: int = 10
    dependency_check: Literal["strict", "compatible", "warn", "off"] = "compatible"
    error_detail: Literal["full", "generic"] = "full"
    sklearn_pickle: Literal["allow", "refuse"] = "refuse"
    skops_trusted_types: tuple[str, ...] = ()
    home: Path = Path(".fraud-inference")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise `SettingsError` naming the first bad one."""
        env = os.environ if environ is None else environ
        models = _parse_models(_get(env, "MODELS") or DEFAULT_MODELS)
        default_model = _get(env, "DEFAULT_MODEL") or next(iter(models))
        if default_model not in models:
            raise SettingsError("DEFAULT_MODEL", f"{default_model!r} is not one of the served models {sorted(models)}")
        stages = _split(_get(env, "MODEL_STAGES") or "Production,Staging")
        if not stages:
            raise SettingsError("MODEL_STAGES", "name at least one stage, e.g. 'Production,Staging'")
        return cls(
            mlflow_tracking_uri=_get(env, "MLFLOW_TRACKING_URI") or _secret_file(env, "MLFLOW_TRACKING_URI_FILE"),
            models=models,
            default_model=default_model,
            model_alias=_get(env, "MODEL_ALIAS") or "champion",
            model_stages=tuple(stages),
            workers=_number(env, "WORKERS", int, os.cpu_count() or 1, minimum=1, maximum=64),
            host=_get(env, "HOST") or "127.0.0.1",
            port=_number(env, "PORT", int, 8000, minimum=0, maximum=65535),
            log_level=_choice(env, "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO"),
            log_format=_choice(env, "LOG_FORMAT", ("json", "console"), "json"),
            api_keys=_api_keys(env),
            cors_origins=tuple(_split(_get(env, "CORS_ORIGINS") or "")),
            max_batch_rows=_number(env, "MAX_BATCH_ROWS", int, 10_000, minimum=1, maximum=1_000_000),
            max_body_bytes=_number(env, "MAX_BODY_BYTES", int, 16 * 1024 * 1024, minimum=1024, maximum=1024**3),
            inference_timeout_s=_number(env, "INFERENCE_TIMEOUT_S", float, 10.0, minimum=0.01, maximum=3600.0),
            hung_worker_s=_number(env, "HUNG_WORKER_S", float, 120.0, minimum=1.0, maximum=86400.0),
            queue_limit=_number(env, "QUEUE_LIMIT", int, 1024, minimum=1, maximum=1_000_000),
            batch_max_requests=_number(env, "BATCH_MAX_REQUESTS", int, 64, minimum=1, maximum=10_000),
            batch_max_bytes=_number(env, "BATCH_MAX_BYTES", int, 512 * 1024, minimum=1024, maximum=1024**3),
            batch_wait_ms=_number(env, "BATCH_WAIT_MS", float, 0.0, minimum=0.0, maximum=100.0),
            refresh_interval_s=_number(env, "REFRESH_INTERVAL_S", float, 0.0, minimum=0.0, maximum=86400.0),
            registry_timeout_s=_number(env, "REGISTRY_TIMEOUT_S", int, 10, minimum=1, maximum=600),
            dependency_check=_choice(env, "DEPENDENCY_CHECK", ("strict", "compatible", "warn", "off"), "compatible"),
            error_detail=_choice(env, "ERROR_DETAIL", ("full", "generic"), "full"),
            sklearn_pickle=_choice(env, "SKLEARN_PICKLE", ("allow", "refuse"), "refuse"),
            skops_trusted_types=tuple(_split(_get(env, "SKOPS_TRUSTED_TYPES") or "")),
            home=Path(_get(env, "FRAUD_INFERENCE_HOME") or ".fraud-inference").absolute(),
        )

    def model_trust(self) -> ModelTrust:
        """The rules for loading serialized estimators: SKLEARN_PICKLE and SKOPS_TRUSTED_TYPES."""
        return ModelTrust(pickle=self.sklearn_pickle, extra_types=self.skops_trusted_types)

    def redacted(self) -> dict[str, object]:
        """The settings as a dict safe to log: API keys and URI credentials hidden."""
        shown = msgspec.to_builtins(self, enc_hook=str)
        shown["api_keys"] = f"<{len(self.api_keys)} configured>"
        if self.mlflow_tracking_uri:
            shown["mlflow_tracking_uri"] = redact_credentials(self.mlflow_tracking_uri)
        return shown  # type: ignore[no-any-return]  # to_builtins of a Struct is a dict


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URI_END = re.compile(r"""[\s"'<>`]""")
_AUTHORITY_END = re.compile(r"[/?#]")


def redact_credentials(text: str) -> str:
    """Hide the credentials of every `scheme://userinfo@host` URI within `text`: a URI, or a library's message.

    The userinfo runs to the LAST `@` before the host, as urllib and requests read it (`http://alice:p@ss@host`
    has the password `p@ss`): `user:***@` keeps the user name, a userinfo without `:` (a token) becomes `***@`.
    A password holding a raw `/`, `?` or `#` (which no client can parse, and whose error message quotes the
    URI) is hidden too, up to the last `@` of the URI; the price is that an `@` in the path of a URI with a
    port (`http://host:80/a@b`) hides `80/a` as well: a secret shown is worse than a port hidden.
    """
    shown: list[str] = []
    position = 0
    while (scheme := _SCHEME.search(text, position)) is not None:
        start = scheme.end()
        end_match = _URI_END.search(text, start)
        end = end_match.start() if end_match else len(text)
        length = _userinfo_length(text[start:end])
        shown.append(text[position:start])
        position = start
        if length is not None:
            user, colon, _password = text[start : start + length].partition(":")
            shown.append(f"{user}:***@" if colon else "***@")
            position = start + length + 1
    shown.append(text[position:])
    return "".join(shown)


def _userinfo_length(after_scheme: str) -> int | None:
    """How long the userinfo is in what follows `scheme://` (up to its `@`), or None when there is none."""
    at = after_scheme.rfind("@")
    if at < 0:
        return None
    candidate = after_scheme[:at]
    delimiter = _AUTHORITY_END.search(candidate)
    colon = candidate.find(":")
    if delimiter is None or 0 <= colon < delimiter.start():
        return at  # `user:pass/word@host`: a password with a raw `/` still ends at the last `@`
    # A `/` before any `:`: a path, as in `file:///tmp/a@b`; the userinfo, if any, is in the authority alone.
    authority_at = after_scheme[: delimiter.start()].rfind("@")
    return authority_at if authority_at >= 0 else None


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _parse_models(value: str) -> dict[str, str]:
    models: dict[str, str] = {}
    for pair in _split(value):
        key, sep, name = (part.strip() for part in pair.partition("="))
        if not sep or not key or not name:
            raise SettingsError("MODELS", f"{pair!r} is not a key=registered-name pair")
        if not key.replace("-", "").replace("_", "").isalnum():
            raise SettingsError("MODELS", f"model key {key!r} may hold only letters, digits, '-' and '_'")
        if key in models:
            raise SettingsError("MODELS", f"model key {key!r} appears twice")
        models[key] = name
    if not models:
        raise SettingsError("MODELS", "name at least one model, e.g. 'xgboost=fraud-xgboost'")
    return models


def _number(
    env: Mapping[str, str],
    name: str,
    kind: type[_Number],
    default: _Number,
    *,
    minimum: float,
    maximum: float,
) -> _Number:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a valid {kind.__name__}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(name, f"{raw} is outside {minimum:g}..{maximum:g}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[_Choice, ...], default: _Choice) -> _Choice:
    raw = _get(env, name)
    if raw is None:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise SettingsError(name, f"{raw!r} is not one of {', '.join(choices)}")


def _secret_file(env: Mapping[str, str], name: str) -> str | None:
    """The stripped content of the file that variable `name` points at (a container secret), if set."""
    path = _get(env, name)
    if path is None:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as error:
        raise SettingsError(name, f"cannot read {path}: {error.strerror}") from None


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys = _split(_get(env, "API_KEYS") or "")
    text = _secret_file(env, "API_KEYS_FILE") or ""
    keys += [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    return tuple(keys)
