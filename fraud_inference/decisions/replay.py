"""Replay logged rows through a model version: the service's own loading and scoring code (what the workers run),
the new probabilities and decisions beside the logged ones.

The logged features go back to the model as a request sent as columns goes (`SignatureDecoder.columns`), so a
version replayed on the rows it scored gives back its logged probabilities.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fraud_inference.decisions.records import FEATURE_PREFIX, feature_column
from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.registry import ModelRef, ResolutionError
from fraud_inference.settings import ModelSpec, Settings

__all__ = ["Replay", "ReplayError", "parse_time", "read_logged", "render", "replay", "write_output"]

_CHUNK_ROWS = 16_384
"""Rows scored per model call: large batches in bounded memory, as the workers chunk them."""
_SHIFT_QUANTILES = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)


class ReplayError(Exception):
    """The rows cannot be replayed as asked: the message says why and what to change."""


class Replay(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay found: the version replayed, how many rows, the decision counts and the score shift."""

    model: str
    name: str
    version: str
    threshold: float
    logged_versions: tuple[str, ...]
    rows: int
    counts: dict[str, int]
    """`logged->replayed` decision pairs (`legit->legit`, `legit->fraud`, `fraud->legit`, `fraud->fraud`)."""
    shift_quantiles: dict[str, float]
    """Quantiles of replayed minus logged probability (`p0` is the least, `p100` the most)."""
    flips: int


def read_logged(
    directory: Path, model: str, *, since: datetime.datetime | None = None, until: datetime.datetime | None = None
) -> pa.Table:
    """The rows `model` logged under `directory`, in time order; `since` inclusive, `until` exclusive (UTC).

    Each file is read on its own and the tables joined by column name: files of versions whose signatures differ
    each keep their own columns (missing ones are null).
    """
    if not directory.is_dir():
        raise ReplayError(
            f"no directory {directory}: name the decision log's directory (the service's DECISION_LOG; the demo's "
            "is $FRAUD_INFERENCE_HOME/decisions)"
        )
    root = directory / f"model={model}"
    every = sorted(path for path in root.glob("date=*/*.parquet") if not path.name.startswith("."))
    if not every:
        held = sorted(path.name.removeprefix("model=") for path in directory.glob("model=*"))
        raise ReplayError(
            f"no decision-log files for model {model!r} under {directory} (looked in {root}); "
            f"models logged there: {', '.join(held) or 'none'}"
        )
    files = [path for path in every if _in_dates(_date_of(path), since, until)]
    if not files:
        dates = sorted({_date_of(path) for path in every})
        raise ReplayError(
            f"no rows of model {model!r} logged {_range_words(since, until)}: its log holds the dates "
            f"{dates[0]} to {dates[-1]} (UTC)"
        )
    table = pa.concat_tables([pq.read_table(path) for path in files], promote_options="permissive")
    mask = None
    if since is not None:
        mask = pc.greater_equal(table["time"], pa.scalar(since, pa.timestamp("us", tz="UTC")))
    if until is not None:
        before = pc.less(table["time"], pa.scalar(until, pa.timestamp("us", tz="UTC")))
        mask = before if mask is None else pc.and_(mask, before)
    if mask is not None:
        table = table.filter(mask)
    return table.sort_by([("time", "ascending"), ("request_id", "ascending"), ("row", "ascending")])


def replay(
    settings: Settings,
    directory: Path,
    model: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
) -> tuple[Replay, pa.Table]:
    """Score `model`'s logged rows with a version of its registered model (`version`, `alias`, else the one
    MODELS serves now), loaded and scored as the workers do. Returns the summary and the logged rows with the
    replayed columns beside them."""
    logged = read_logged(directory, model, since=since, until=until)
    if logged.num_rows == 0:
        held = read_logged(directory, model)["time"]
        first, last = (value.as_py().isoformat() for value in pc.min_max(held).values())
        raise ReplayError(
            f"no rows of model {model!r} logged {_range_words(since, until)}: its rows were logged from {first} "
            f"to {last}"
        )
    name = _registered_name(settings, model, logged)
    if version is not None:
        spec = f"{name}/{version}"
    elif alias is not None:
        spec = f"{name}@{alias}"
    else:  # what the service would serve now: MODELS's entry as written (a pin, an alias), else the name
        spec = settings.models.get(model, name)
    ModelSpec.parse(spec)
    artifact, probabilities = _score(settings, model, spec, logged)
    ref = artifact.ref
    replayed_flag = probabilities >= ref.threshold
    shift = probabilities - logged["fraud_probability"].to_numpy()
    logged_flag = logged["is_fraud"].to_numpy(zero_copy_only=False)
    counts = {
        f"{_word(before)}->{_word(after)}": int(np.count_nonzero((logged_flag == before) & (replayed_flag == after)))
        for before in (False, True)
        for after in (False, True)
    }
    result = logged.append_column("model", pa.array([model] * logged.num_rows, pa.string()))
    result = result.append_column("replayed_name", pa.array([ref.name] * logged.num_rows, pa.string()))
    result = result.append_column("replayed_version", pa.array([ref.version] * logged.num_rows, pa.string()))
    result = result.append_column("replayed_fraud_probability", pa.array(probabilities, pa.float64()))
    result = result.append_column("replayed_threshold", pa.array(np.full(logged.num_rows, ref.threshold)))
    result = result.append_column("replayed_is_fraud", pa.array(replayed_flag))
    result = result.append_column("score_shift", pa.array(shift, pa.float64()))
    summary = Replay(
        model=model,
        name=ref.name,
        version=ref.version,
        threshold=ref.threshold,
        logged_versions=tuple(sorted(set(logged["version"].to_pylist()), key=_version_order)),
        rows=logged.num_rows,
        counts=counts,
        shift_quantiles={f"p{round(q * 100)}": float(np.quantile(shift, q)) for q in _SHIFT_QUANTILES},
        flips=int(np.count_nonzero(logged_flag != replayed_flag)),
    )
    return summary, result


def render(summary: Replay, replayed: pa.Table, *, show_flips: int = 50) -> str:
    """The replay in words: rows, the four decision counts, the score shift's quantiles, the flipped rows."""
    lines = [
        f"replayed {summary.rows} rows of model {summary.model!r} (logged by version "
        f"{', '.join(summary.logged_versions)}) through {summary.name} version {summary.version} "
        f"(threshold {summary.threshold:g})",
        "decisions, logged (at each row's logged threshold) x replayed:",
        f"  {'':14}{'replayed legit':>16}{'replayed fraud':>16}",
        f"  {'logged legit':14}{summary.counts['legit->legit']:>16}{summary.counts['legit->fraud']:>16}",
        f"  {'logged fraud':14}{summary.counts['fraud->legit']:>16}{summary.counts['fraud->fraud']:>16}",
        "score shift (replayed - logged probability): "
        + ", ".join(f"{name} {value:+.3g}" for name, value in summary.shift_quantiles.items()),
        f"decision flips: {summary.flips}",
    ]
    if summary.flips:
        flipped = replayed.filter(pc.not_equal(replayed["is_fraud"], replayed["replayed_is_fraud"]))
        shown = flipped.slice(0, show_flips).to_pylist()
        # Each probability beside the threshold it was decided at: a flip can come from either.
        lines.append(f"  {'time':32} {'request_id':34} {'row':>5} {'logged':>10} {'at':>8} {'replayed':>10} {'at':>8}")
        for row in shown:
            lines.append(
                f"  {row['time'].isoformat():32} {row['request_id'][:34]:34} {row['row']:>5} "
                f"{row['fraud_probability']:>10.6f} {row['threshold']:>8.4g} "
                f"{row['replayed_fraud_probability']:>10.6f} {row['replayed_threshold']:>8.4g}"
            )
        if summary.flips > len(shown):
            lines.append(f"  ... {summary.flips - len(shown)} more (all of them in --output)")
    return "\n".join(lines)


def _score(settings: Settings, model: str, spec: str, logged: pa.Table) -> tuple[ModelArtifact, npt.NDArray[Any]]:
    """Resolve `spec`, fetch and load it as the service does (`fetch_artifact`, `load_model`), score the rows."""
    from threadpoolctl import threadpool_limits

    from fraud_inference.models.reading import fetch_artifact
    from fraud_inference.models.scoring import load_model
    from fraud_inference.registry import Registry

    assert settings.mlflow_tracking_uri is not None
    registry = Registry(
        settings.mlflow_tracking_uri, alias=settings.model_alias, stages=settings.model_stages,
        timeout_s=settings.registry_timeout_s,
    )  # fmt: skip
    try:
        ref: ModelRef = registry.resolve(model, spec)
    except ResolutionError as error:
        parsed = ModelSpec.parse(spec)
        if parsed.version is None and parsed.alias is None:
            raise  # what MODELS names: its message says how to fix MODELS
        asked = f"--version {parsed.version}" if parsed.version is not None else f"--alias {parsed.alias}"
        raise ReplayError(f"{asked}: {_what_exists(registry.tracking_uri, parsed.name)}") from error
    with tempfile.TemporaryDirectory(prefix="fraud-inference-replay-") as downloads:
        artifact = fetch_artifact(
            registry, ref, Path(downloads), dependency_policy=settings.dependency_check, trust=settings.model_trust(),
            compiled_trees=settings.compiled_trees_cache(),
        )  # fmt: skip
        names, missing = _columns_for(artifact, logged)
        if missing:
            raise ReplayError(
                f"{ref.name} version {ref.version} needs features the log does not hold: {', '.join(missing)} "
                "(logged under DECISION_LOG_FEATURES=none, or by a version with another signature)"
            )
        # NOTE: one thread, as in the workers; EXTRA_FEATURES=ignore, since older rows may hold retired features.
        with threadpool_limits(1):
            served = load_model(artifact, detail="full", extra="ignore")
            chunks = []
            for start in range(0, logged.num_rows, _CHUNK_ROWS):
                part = logged.slice(start, _CHUNK_ROWS)
                values = [msgspec.msgpack.encode(part[feature_column(name)].to_pylist()) for name in names]
                batch = served.decoder.columns(names, values)
                chunks.append(served.scorer.fraud_probability(batch))
    return artifact, np.concatenate(chunks)


def _what_exists(tracking_uri: str, name: str) -> str:
    """What registered model `name` has to replay through: its versions and aliases, for a --version or --alias
    that names none of them."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        versions = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=_version_order)
        aliases = client.get_registered_model(name).aliases
    except Exception:  # the registry went away meanwhile: the message only lacks the list
        return f"registered model {name!r} has no such version or alias"
    shown = ", ".join(map(str, versions[-20:])) or "none"
    named = ", ".join(f"{alias} (version {version})" for alias, version in sorted(aliases.items())) or "none"
    return f"registered model {name!r} has no such version or alias; its versions: {shown}; its aliases: {named}"


def _columns_for(artifact: ModelArtifact, logged: pa.Table) -> tuple[list[str], list[str]]:
    """The version's features the log holds, and its required ones it does not."""
    held = {column.removeprefix(FEATURE_PREFIX) for column in logged.column_names if column.startswith(FEATURE_PREFIX)}
    names = [feature.name for feature in artifact.features if feature.name in held]
    missing = [feature.name for feature in artifact.features if feature.required and feature.name not in held]
    return names, missing


def _registered_name(settings: Settings, model: str, logged: pa.Table) -> str:
    """The registered model behind `model`: MODELS's entry when it names it, else the one the rows were logged by."""
    if model in settings.models:
        return ModelSpec.parse(settings.models[model]).name
    names = sorted(set(logged["registered_name"].to_pylist()))
    if len(names) != 1:
        raise ReplayError(f"model {model!r} was logged under several registered models ({', '.join(names)}): "
                          f"name the one to replay in MODELS, e.g. MODELS={model}={names[-1]}")  # fmt: skip
    return str(names[0])


def _date_of(path: Path) -> str:
    return path.parent.name.removeprefix("date=")


def _range_words(since: datetime.datetime | None, until: datetime.datetime | None) -> str:
    """`--since`/`--until` as words: `from ... until ...` (UTC)."""
    words = [f"from {since.isoformat()}" if since else "", f"until {until.isoformat()}" if until else ""]
    return " ".join(word for word in words if word) or "at any time"


def _in_dates(date: str, since: datetime.datetime | None, until: datetime.datetime | None) -> bool:
    """Whether a `date=` partition can hold rows in [since, until)."""
    try:
        day = datetime.date.fromisoformat(date)
    except ValueError:
        return False
    return (since is None or day >= since.date()) and (until is None or day <= until.date())


def _word(flagged: bool) -> str:
    return "fraud" if flagged else "legit"


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 62, version)


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 time (`2026-12-07`, `2026-12-07T10:00`, with or without an offset; none means UTC)."""
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"{text!r} is not an ISO 8601 time; write e.g. 2026-12-07 or 2026-12-07T10:00:00Z") from None
    return parsed.replace(tzinfo=datetime.UTC) if parsed.tzinfo is None else parsed.astimezone(datetime.UTC)


def write_output(replayed: pa.Table, output: Path) -> None:
    """Write the replayed rows to `output` (Parquet), complete or not at all (a temporary name, then renamed)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    pq.write_table(replayed, temporary, compression="zstd")
    temporary.replace(output)
