"""The one typed settings object, read from the environment once at startup."""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import os
import re
import textwrap
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fraud_inference.models.trust import ModelTrust

__all__ = [
    "DEFAULT_MODELS",
    "ModelSpec",
    "Setting",
    "Settings",
    "SettingsError",
    "redact_credentials",
    "settings_reference",
]

DEFAULT_MODELS = "xgboost=fraud-xgboost,lightgbm=fraud-lightgbm,sklearn=fraud-sklearn"
LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable and how to fix it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One served model as MODELS names it: `name`, `name@alias` (that alias only) or `name/3` (that version)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Read `name`, `name@alias` or `name/3`; raise `SettingsError` (MODELS) for anything else."""
        name, at, alias = text.partition("@")
        if at:
            if not name or not alias:
                raise SettingsError("MODELS", f"{text!r}: write name@alias, e.g. 'fraud-xgboost@challenger'")
            return cls(name=name, alias=alias)
        name, slash, version = text.rpartition("/")
        if slash:
            if not name or not version.isdigit():
                raise SettingsError("MODELS", f"{text!r}: write name/version, e.g. 'fraud-xgboost/3'")
            return cls(name=name, version=str(int(version)))
        return cls(name=text)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service can be configured with. Build it with `Settings.from_env()`.

    Each field is the one definition of a setting: its type, its default, its bounds (`msgspec.Meta`) and the
    docstring under it, which starts with the environment variable's name. Reading the environment
    (`from_env`), `fraud-inference --help` and the README's configuration table (checked by a test) derive from
    them. `Meta(extra=...)` holds what a field alone cannot say: `shown` (a default computed at startup, as
    people should read it) and `file` (a variable naming a file that holds the value, for container secrets).
    """

    mlflow_tracking_uri: Annotated[
        str | None, Meta(extra={"shown": "none (`serve` requires it)", "file": "MLFLOW_TRACKING_URI_FILE"})
    ] = None
    """MLFLOW_TRACKING_URI: the MLflow tracking/registry server, e.g. http://mlflow:5000 or sqlite:////abs/mlflow.db;
    MLFLOW_TRACKING_URI_FILE names a file holding it instead (a container secret: the URI may carry credentials)."""
    models: dict[str, str] = msgspec.field(default_factory=lambda: _parse_models(DEFAULT_MODELS))
    """MODELS: served models as key=registered-name pairs; key=name@alias serves that alias (no stage fallback),
    key=name/3 pins version 3."""
    default_model: Annotated[str, Meta(extra={"shown": "first key of `MODELS`"})] = "xgboost"
    """DEFAULT_MODEL: the model used when a request names none."""
    model_alias: str = "champion"
    """MODEL_ALIAS: the alias tried first for each model."""
    challenger_alias: Annotated[str, Meta(extra={"empty": True})] = "challenger"
    """CHALLENGER_ALIAS: the alias of each served model's challenger, a version scored in the workers beside the
    served one on the same rows, for comparison only (empty: no challenger)."""
    shadow_share: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0
    """SHADOW_SHARE: the share of requests the challenger also scores, decided from the request id (a retry with
    the same id is shadowed the same way); a batch sent while other requests wait or are being scored skips its
    challenger's turn."""
    explain_nice: Annotated[int, Meta(ge=0, le=19)] = 19
    """EXPLAIN_NICE: how far below scoring's the CPU priority of each worker's explanation thread is (a nice value,
    0 to 19, Linux): with 19, explanations take the CPU that plain scoring and the HTTP process leave, so they
    slow plain requests less (the README's Reason codes has the figures), and on a saturated server they wait
    (504 past INFERENCE_TIMEOUT_S); 0: same priority."""
    model_stages: Annotated[tuple[str, ...], Meta(min_length=1)] = ("Production", "Staging")
    """MODEL_STAGES: stages tried in order when the alias is missing (newest version in the stage)."""
    workers: Annotated[int, Meta(ge=1, le=64, extra={"shown": "CPU count"})] = msgspec.field(
        default_factory=lambda: os.cpu_count() or 1
    )
    """WORKERS: inference worker processes in the pool."""
    host: str = "127.0.0.1"
    """HOST: the address the HTTP server listens on."""
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    """PORT: the port the HTTP server listens on."""
    grpc: Literal["off", "on"] = "on"
    """GRPC: `on` serves the Open Inference Protocol over gRPC on GRPC_PORT (HOST's address), beside HTTP and over
    the same models; `off` does not listen for gRPC."""
    grpc_port: Annotated[int, Meta(ge=1, le=65535)] = 8001
    """GRPC_PORT: the port the gRPC server listens on (8001: Triton's, beside its HTTP 8000)."""
    header_timeout_s: Annotated[float, Meta(ge=0.5, le=3600.0)] = 10.0
    """HEADER_TIMEOUT_S: a connection that has not sent a complete request header this many seconds after it opened,
    or after its previous answer, is closed: silent, slow-header and idle keep-alive connections alike (one
    timer in granian); keep it above the idle timeout of a proxy that pools connections to the service."""
    max_connections: Annotated[int, Meta(ge=64, le=1_000_000)] = 16_384
    """MAX_CONNECTIONS: connections the HTTP process serves at once, lowered at start to fit its open-file limit
    (raised to the hard limit first); past it, new connections wait in the listen backlog."""
    listen_backlog: Annotated[int, Meta(ge=128, le=65_535)] = 1024
    """LISTEN_BACKLOG: connections the kernel queues past MAX_CONNECTIONS (capped by net.core.somaxconn); past
    it, a new connection's handshake is dropped until its client retries."""
    log_level: LogLevel = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    log_format: LogFormat = "json"
    """LOG_FORMAT: json (one object per line) or console."""
    api_keys: Annotated[tuple[str, ...], Meta(extra={"file": "API_KEYS_FILE"})] = ()
    """API_KEYS: admin API keys, comma-separated; API_KEYS_FILE names a file holding more, one per line."""
    cors_origins: tuple[str, ...] = ()
    """CORS_ORIGINS: origins allowed to call the API from a browser, comma-separated (empty: no CORS)."""
    max_batch_rows: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """MAX_BATCH_ROWS: most instances in one request (413 past it)."""
    max_body_bytes: Annotated[int, Meta(ge=1024, le=1024**3)] = 16 * 1024 * 1024
    """MAX_BODY_BYTES: largest request body, on the wire and once decoded from its Content-Encoding (413 past it);
    10,000 demo rows are ~6 MiB."""
    min_body_piece_bytes: Annotated[int, Meta(ge=1, le=1024**2)] = 512
    """MIN_BODY_PIECE_BYTES: past a body's first 64 pieces (chunks, or socket reads), the least its pieces must
    average (413 below it): each piece costs the HTTP process the same CPU, whatever its size."""
    body_read_timeout_s: Annotated[float, Meta(ge=0.1, le=3600.0)] = 30.0
    """BODY_READ_TIMEOUT_S: longest a request body may take to arrive once its headers are in (408 past it, and
    the connection is closed)."""
    inference_timeout_s: Annotated[float, Meta(ge=0.01, le=3600.0)] = 10.0
    """INFERENCE_TIMEOUT_S: longest a request waits for the pool (504 past it); its worker is not killed for it."""
    hung_worker_s: Annotated[float, Meta(ge=1.0, le=86400.0)] = 120.0
    """HUNG_WORKER_S: a worker still scoring one batch after this long is replaced as hung (a worker silent for
    5 s with work is replaced sooner)."""
    queue_limit: Annotated[int, Meta(ge=1, le=1_000_000)] = 1024
    """QUEUE_LIMIT: requests that may wait for a busy pool; past it, 503 with Retry-After at once."""
    batch_max_requests: Annotated[int, Meta(ge=1, le=10_000)] = 64
    """BATCH_MAX_REQUESTS: most requests coalesced into one model call (1 turns batching off)."""
    batch_max_bytes: Annotated[int, Meta(ge=1024, le=1024**3)] = 512 * 1024
    """BATCH_MAX_BYTES: most request-body bytes in one batch (~1,000 demo rows); a larger request goes alone."""
    batch_wait_ms: Annotated[float, Meta(ge=0.0, le=100.0)] = 0.0
    """BATCH_WAIT_MS: how long a request may wait for others to share its batch when a worker is free."""
    refresh_interval_s: Annotated[float, Meta(ge=0.0, le=86400.0)] = 0.0
    """REFRESH_INTERVAL_S: poll the registry every N seconds (0: never) and swap to new versions like an admin
    refresh, so every replica converges on a promotion."""
    registry_timeout_s: Annotated[int, Meta(ge=1, le=600)] = 10
    """REGISTRY_TIMEOUT_S: bound on each attempt of a call to an http(s) registry, two attempts per call."""
    dependency_check: Literal["strict", "compatible", "warn", "off"] = "compatible"
    """DEPENDENCY_CHECK: strict, compatible, warn (log, serve anyway) or off: how the packages a model was
    trained with must match the installed ones."""
    error_detail: Literal["full", "generic"] = "full"
    """ERROR_DETAIL: generic keeps feature names (and the list of served models) out of error bodies."""
    sklearn_pickle: Literal["allow", "refuse"] = "refuse"
    """SKLEARN_PICKLE: allow loads scikit-learn-API models saved as pickle (which runs any code the file holds);
    refuse serves only skops files."""
    skops_trusted_types: tuple[str, ...] = ()
    """SKOPS_TRUSTED_TYPES: more types a skops model may hold, comma-separated."""
    parity_check: Literal["strict", "warn", "off"] = "strict"
    """PARITY_CHECK: strict refuses a version whose served probabilities differ from MLflow's own loader by more
    than 1e-6; warn logs the difference and serves it; off does not compare."""
    pyfunc: Literal["allow", "refuse"] = "refuse"
    """PYFUNC: allow serves custom mlflow.pyfunc models (loading one runs the code it carries); refuse serves none."""
    extra_features: Literal["reject", "ignore"] = "reject"
    """EXTRA_FEATURES: reject answers 422 to a key outside the model's signature; ignore drops it."""
    compiled_trees: Literal["off", "on"] = "on"
    """COMPILED_TREES: on compiles XGBoost and LightGBM trees to native code (treelite, gcc) once per version,
    cached under FRAUD_INFERENCE_HOME, and serves them where they score as the library does (within 1e-6 on probe
    rows); a version that cannot compile exactly is served natively, and the log says why. off: always native."""
    home: Annotated[Path, Meta(extra={"shown": "./.fraud-inference"})] = Path(".fraud-inference")
    """FRAUD_INFERENCE_HOME: where `demo` keeps its embedded registry and COMPILED_TREES its compiled models."""
    decision_log: Annotated[
        Path | None, Meta(extra={"shown": "none (off; `demo`: FRAUD_INFERENCE_HOME/decisions)"})
    ] = None
    """DECISION_LOG: a directory where every scored row is logged (model, version, features, probability, threshold,
    decision) as a Parquet dataset partitioned by model and date; unset: no log."""
    decision_log_features: Literal["all", "none"] = "all"
    """DECISION_LOG_FEATURES: all logs each feature as the model received it; none leaves features out (no replay)."""
    decision_log_flush_s: Annotated[float, Meta(ge=0.05, le=3600.0)] = 1.0
    """DECISION_LOG_FLUSH_S: the decision log writes a new file this often (when rows came): what `kill -9` can lose."""
    decision_log_max_rows: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """DECISION_LOG_MAX_ROWS: most rows in one decision-log file (a busier interval writes more files); requests
    waiting to be written past 10 times it are dropped and counted."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise `SettingsError` naming the first bad one."""
        env = os.environ if environ is None else environ
        values = {setting.field: value for setting in settings_reference() if (value := setting.read(env)) is not None}
        settings = cls(**values)
        default_model = values.get("default_model") or next(iter(settings.models))
        if default_model not in settings.models:
            raise SettingsError(
                "DEFAULT_MODEL", f"{default_model!r} is not one of the served models {sorted(settings.models)}"
            )
        return msgspec.structs.replace(settings, default_model=default_model, home=settings.home.absolute())

    def model_trust(self) -> ModelTrust:
        """The rules for loading serialized models: SKLEARN_PICKLE, PYFUNC and SKOPS_TRUSTED_TYPES."""
        return ModelTrust(pickle=self.sklearn_pickle, pyfunc=self.pyfunc, extra_types=self.skops_trusted_types)

    def compiled_trees_cache(self) -> Path | None:
        """Where compiled trees are cached under COMPILED_TREES=on; None when off."""
        return self.home / "compiled-trees" if self.compiled_trees == "on" else None

    def redacted(self) -> dict[str, object]:
        """The settings as a dict safe to log: API keys and URI credentials hidden."""
        shown = msgspec.to_builtins(self, enc_hook=str)
        shown["api_keys"] = f"<{len(self.api_keys)} configured>"
        if self.mlflow_tracking_uri:
            shown["mlflow_tracking_uri"] = redact_credentials(self.mlflow_tracking_uri)
        return shown  # type: ignore[no-any-return]  # to_builtins of a Struct is a dict


class Setting(msgspec.Struct, frozen=True, kw_only=True):
    """One setting as its field in `Settings` defines it: what `from_env` reads and `--help` shows."""

    field: str
    variable: str
    doc: str
    shown_default: str
    kind: Any
    minimum: float | None = None
    maximum: float | None = None
    at_least_one: bool = False
    file_variable: str | None = None
    empty: bool = False
    """Set but empty is a value (`""`, e.g. CHALLENGER_ALIAS= turns challengers off), not the default."""

    @property
    def bounds(self) -> str | None:
        if self.minimum is None or self.maximum is None:
            return None
        return f"{_number_text(self.minimum)}..{_number_text(self.maximum)}"

    def read(self, env: Mapping[str, str]) -> Any:
        """The value of the variable (and of its file), converted and checked; None when neither is set."""
        raw = _get(env, self.variable)
        from_file = None if self.file_variable is None else _secret_file(env, self.file_variable)
        if self.kind is dict:
            return None if raw is None else _parse_models(raw)
        if self.kind is tuple:
            items = _split(raw or "")
            if from_file is not None:
                items += [line.strip() for line in from_file.replace(",", "\n").splitlines() if line.strip()]
            if raw is not None and not items and self.at_least_one:
                raise SettingsError(self.variable, f"name at least one, e.g. {self.shown_default!r}")
            return tuple(items) if raw is not None or from_file is not None else None
        if raw is None:
            return "" if self.empty and self.variable in env else from_file
        if self.kind in (int, float):
            return self._number(raw)
        if isinstance(self.kind, tuple):  # the choices of a Literal
            return self._choice(raw)
        return self.kind(raw)

    def _number(self, raw: str) -> float:
        try:
            value = self.kind(raw)
        except ValueError:
            raise SettingsError(self.variable, f"{raw!r} is not a valid {self.kind.__name__}") from None
        if self.minimum is not None and self.maximum is not None and not self.minimum <= value <= self.maximum:
            raise SettingsError(self.variable, f"{raw} is outside {self.bounds}")
        return value  # type: ignore[no-any-return]  # kind is int or float

    def _choice(self, raw: str) -> str:
        for choice in self.kind:
            if raw.lower() == choice.lower():
                return choice  # type: ignore[no-any-return]  # the choices of a Literal of strings
        raise SettingsError(self.variable, f"{raw!r} is not one of {', '.join(self.kind)}")


@functools.cache
def settings_reference() -> tuple[Setting, ...]:
    """Every setting, in the order `Settings` defines them, read from its fields (types, defaults, docstrings)."""
    hints = typing.get_type_hints(Settings, include_extras=True)
    docs = _field_docstrings(Settings)
    defaults = Settings()
    reference = []
    for field in Settings.__struct_fields__:
        variable, _, doc = docs[field].partition(": ")
        kind, metas = hints[field], []
        if typing.get_origin(kind) is Annotated:
            kind, *metas = typing.get_args(kind)
        constraints: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for meta in metas:
            constraints |= {
                name: getattr(meta, name) for name in ("ge", "le", "min_length") if getattr(meta, name) is not None
            }
            extra |= meta.extra or {}
        if typing.get_origin(kind) is Literal:
            kind = typing.get_args(kind)
        elif typing.get_origin(kind) in (tuple, dict):
            kind = typing.get_origin(kind)
        elif kind == str | None:
            kind = str
        elif kind == Path | None:
            kind = Path
        reference.append(
            Setting(
                field=field,
                variable=variable,
                doc=" ".join(doc.split()),
                shown_default=extra.get("shown") or _shown(getattr(defaults, field)),
                kind=kind,
                minimum=constraints.get("ge"),
                maximum=constraints.get("le"),
                at_least_one=constraints.get("min_length", 0) >= 1,
                file_variable=extra.get("file"),
                empty=bool(extra.get("empty", False)),
            )
        )
    return tuple(reference)


def _field_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each annotated field of `cls`, by field name (Python keeps none of them at run time)."""
    (definition,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(definition, ast.ClassDef)
    docs: dict[str, str] = {}
    for statement, following in itertools.pairwise(definition.body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = following.value.value
    return docs


def _number_text(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _shown(default: object) -> str:
    """A default as the README and --help write it."""
    if default is None:
        return "none"
    if isinstance(default, tuple):
        return ",".join(default) if default else "empty"
    if isinstance(default, dict):
        return ",".join(f"{key}={value}" for key, value in default.items())
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


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
            raise SettingsError("MODELS", f"{pair!r} is not a key=name pair (name, name@alias or name/3)")
        if not key.replace("-", "").replace("_", "").isalnum():
            raise SettingsError("MODELS", f"model key {key!r} may hold only letters, digits, '-' and '_'")
        if key in models:
            raise SettingsError("MODELS", f"model key {key!r} appears twice")
        ModelSpec.parse(name)  # checks `name@alias` / `name/3`; the registry reads the spec again
        models[key] = name
    if not models:
        raise SettingsError("MODELS", "name at least one model, e.g. 'xgboost=fraud-xgboost'")
    return models


def _secret_file(env: Mapping[str, str], name: str) -> str | None:
    """The stripped content of the file that variable `name` points at (a container secret), if set."""
    path = _get(env, name)
    if path is None:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as error:
        raise SettingsError(name, f"cannot read {path}: {error.strerror}") from None
