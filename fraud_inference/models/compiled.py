"""COMPILED_TREES=on: XGBoost and LightGBM trees compiled to native code (treelite + tl2cgen, C built with gcc).

A version compiles once, into a shared library cached on disk under a key of its name, version, the model file's
content and the versions of treelite, tl2cgen and gcc: a restart, a second worker or the parity gate's process
reuses it. Before it serves, the compiled model scores probe rows built from the model's own splits (each
threshold and its float32 / float64 neighbours, zeros, missing values, every training category and an unseen one)
through the same decoder and batch as the native scorer; any row off by more than 1e-6, or a model treelite
cannot read, keeps the native path for that version, with a log line saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fraud_inference.models.artifact import FeatureSpec, ModelArtifact
from fraud_inference.models.flavors import Scorer
from fraud_inference.models.flavors._base import Matrix, model_path
from fraud_inference.observability.logging import get_logger
from fraud_inference.parity import TOLERANCE

__all__ = ["CompiledTreesScorer", "compile_trees", "compiler_versions"]

_SCHEME = "1"
"""Bump when the probe rows or the library layout change: entries cached by an older service are not reused."""
_MAX_PROBE_ROWS = 20_000
_MAX_TREES_BYTES = 8 * 2**20
"""Larger trees (treelite's serialized size, about that of the C generated) are not compiled at load (gcc -O1
takes ~3 s per MiB here): the version stays native. The demo models are 0.6 and 0.9 MiB."""
_GCC_OPTIONS = ("-O1",)
"""Appended to tl2cgen's `gcc -O3` (the later -O wins). NOTE: -O1 compiled the demo models 2-3x faster than -O3
and scored them as fast or faster (benchmarks/compiled_trees.py); -O0 was slower on 100 rows."""
_UNSEEN = "\x00unseen category"

_DTYPES: dict[str, Any] = {"float32": np.float32, "float64": np.float64}
_C_TYPES = {"float32": "float", "float64": "double"}

log = get_logger("fraud_inference.compiled_trees")


class _TreeScorer(Scorer, Protocol):
    """A native scorer whose trees can be compiled: XGBoost's and LightGBM's."""

    def treelite_model(self) -> Any: ...

    def fraud_column(self, scores: Matrix) -> Matrix: ...

    def pyfunc_answer(self, scores: Matrix) -> list[Any]: ...


class CompiledTreesScorer:
    """Scores through the compiled library; everything else (decoding, categories, the fraud class) is the native's.

    `library` is the cached shared library it loaded. One ctypes call per batch (the GIL released), into the
    loop this service adds to the generated code: no per-call object of tl2cgen's runtime. A batch of at least
    the native scorer's `native_from_rows` (when it has one) goes to the native library, faster there.
    """

    def __init__(self, native: _TreeScorer, library: Path, width: int) -> None:
        self._native = native
        loaded = ctypes.CDLL(str(library))
        loaded.get_threshold_type.restype = ctypes.c_char_p
        loaded.get_leaf_output_type.restype = ctypes.c_char_p
        self._dtype = _DTYPES[loaded.get_threshold_type().decode()]
        self._leaf_dtype = _DTYPES[loaded.get_leaf_output_type().decode()]
        if loaded.get_num_feature() > width:
            raise ValueError(f"the compiled trees take {loaded.get_num_feature()} features, the signature {width}")
        self._outputs = int(loaded.fraud_inference_outputs())
        self._predict = loaded.fraud_inference_predict
        self._predict.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self._predict.restype = None
        self._native_from_rows: int | None = getattr(native, "native_from_rows", None)
        self.library = library
        self.needs_frame = native.needs_frame
        self.categories = native.categories
        self.takes_missing = native.takes_missing
        self.positive_class = native.positive_class

    def fraud_probability(self, batch: Any) -> Matrix:
        if self._native_from_rows is not None and len(batch) >= self._native_from_rows:
            return self._native.fraud_probability(batch)
        return self.compiled_probability(batch)

    def mlflow_predictions(self, batch: Any) -> tuple[Matrix, list[Any]]:
        if self._native_from_rows is not None and len(batch) >= self._native_from_rows:
            return self._native.mlflow_predictions(batch)
        scores = self._compiled_scores(batch)
        probabilities = self._native.fraud_column(scores)
        # NOTE: the compiled trees are exact to 1e-6 (probe rows), not always to the bit: a row that close to the
        # 0.5 a label is cut at is scored by the library itself, so a label never differs from MLflow's.
        if np.any(np.abs(probabilities - 0.5) <= TOLERANCE):
            return self._native.mlflow_predictions(batch)
        return probabilities, self._native.pyfunc_answer(scores)

    def compiled_probability(self, batch: Any) -> Matrix:
        """`fraud_probability` through the compiled trees, whatever the batch's size."""
        return self._native.fraud_column(self._compiled_scores(batch))

    def _compiled_scores(self, batch: Any) -> Matrix:
        """The compiled trees' output, shaped as the library's `predict`'s."""
        # NOTE: XGBoost compares float32 features with float32 thresholds: the batch is cast as XGBoost casts it.
        matrix = np.ascontiguousarray(_as_matrix(batch), dtype=self._dtype)
        rows, width = matrix.shape
        scores = np.empty((rows, self._outputs), dtype=self._leaf_dtype)
        self._predict(matrix.ctypes.data, rows, width, scores.ctypes.data)
        scores = scores.astype(np.float64, copy=False)
        return scores[:, 0] if self._outputs == 1 else scores


def compile_trees(artifact: ModelArtifact, native: Scorer, cache: Path) -> Scorer:
    """The compiled scorer for the version when it is exact on every probe row; else `native`, logging why.

    Only XGBoost and LightGBM scorers compile; any other flavour's scorer comes back as it is, silently.
    """
    if not (hasattr(native, "treelite_model") and hasattr(native, "fraud_column")):
        return native
    tree_scorer: _TreeScorer = native  # type: ignore[assignment]  # checked just above
    ref = artifact.ref
    started = time.perf_counter()
    try:
        library, compiled_now = _cached_library(artifact, tree_scorer, cache)
        compiled = CompiledTreesScorer(tree_scorer, library, len(artifact.features))
        worst = _worst_probe_difference(artifact, tree_scorer, compiled)
    except _RefusedBeforeError as reason:
        _fall_back(artifact, str(reason), recorded=True)
        return native
    except Exception as error:  # gcc missing or failing, a fault reading the trees: never worse than native
        # NOTE: not recorded in the cache (the fault may pass): the next load of the version tries again.
        _fall_back(artifact, f"{type(error).__name__}: {error}", recorded=False)
        return native
    if worst is not None:
        _refuse(artifact, cache, worst)
        return native
    log.info(
        "compiled_trees.serving", model=ref.key, name=ref.name, version=ref.version, compiled_now=compiled_now,
        seconds=round(time.perf_counter() - started, 3), library=str(library),
    )  # fmt: skip
    return compiled


class _RefusedBeforeError(Exception):
    """A version whose trees cannot compile exactly, for a reason of the model's own (treelite cannot read it, too
    large, not exact): recorded in the cache, so no process tries again."""


@functools.cache
def compiler_versions() -> dict[str, str]:
    """What the cache key holds besides the model: treelite's, tl2cgen's and gcc's versions."""
    try:
        gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True, timeout=30, check=True)
        gcc_version = gcc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gcc_version = "missing"
    return {
        "treelite": importlib.metadata.version("treelite"),
        "tl2cgen": importlib.metadata.version("tl2cgen"),
        "gcc": gcc_version,
        "scheme": _SCHEME,
    }


def _cache_key(artifact: ModelArtifact) -> str:
    digest = hashlib.sha256()
    with model_path(artifact).open("rb") as model_file:
        for block in iter(lambda: model_file.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps(compiler_versions(), sort_keys=True).encode())
    digest.update(json.dumps(artifact.model_file.model_class).encode())
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", artifact.ref.name)
    return f"{name}-v{artifact.ref.version}-{digest.hexdigest()[:20]}"


def _cached_library(artifact: ModelArtifact, native: _TreeScorer, cache: Path) -> tuple[Path, bool]:
    """The version's library, compiled now (True) or found in `cache` (False); `_RefusedBeforeError` if refused before.

    NOTE: one compiler per key at a time (an flock), and the library appears under its final name only by a rename
    of a complete file: two workers loading the same version never read a half-written library. Only a refusal of
    the model's own is recorded; any other exception (a fault that may pass) leaves no trace, so the next load
    tries again.
    """
    import treelite

    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(artifact)
    library = cache / f"{key}.so"
    refused = cache / f"{key}.refused"
    with _locked(cache / f"{key}.lock"):
        if refused.exists():
            raise _RefusedBeforeError(f"{refused.read_text()} (recorded in {refused})")
        if library.exists():
            return library, False
        if compiler_versions()["gcc"] == "missing":
            raise RuntimeError("no C compiler: gcc is not on PATH; install gcc or set COMPILED_TREES=off")
        started = time.perf_counter()
        try:
            model = native.treelite_model()
        except treelite.TreeliteError as error:  # e.g. XGBoost's categorical encoder, which treelite 4.8 does not read
            refused.write_text(f"treelite cannot read it: {type(error).__name__}: {str(error).strip()[-300:]}")
            raise _RefusedBeforeError(refused.read_text()) from None
        size = len(model.serialize_bytes())
        if size > _MAX_TREES_BYTES:
            refused.write_text(
                f"too large to compile at load: {model.num_tree} trees, {size / 2**20:.0f} MiB in treelite's form "
                f"(at most {_MAX_TREES_BYTES / 2**20:.0f} MiB, about as much C, ~3 s of gcc per MiB)"
            )
            raise _RefusedBeforeError(refused.read_text())
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".{key}-") as building:
            os.replace(_compile(_generate(model, Path(building) / "source")), library)
        log.info(
            "compiled_trees.compiled", model=artifact.ref.key, name=artifact.ref.name, version=artifact.ref.version,
            seconds=round(time.perf_counter() - started, 3), trees=model.num_tree, library=str(library),
        )  # fmt: skip
        return library, True


# A leaf value the generated C adds: `result[0] += 0.0953083;`.
_LEAF_SUM = re.compile(r"(result\[[^\]]+\] \+= )(-?[0-9][0-9.eE+-]*);")
# How the generated C asks whether a feature is present: the int member of the value's union.
_PRESENT = re.compile(r"data\[(\d+)\]\.missing != -1")
_MATRIX_LOOP = """
#include "header.h"
/* Added by fraud-inference: score a C-contiguous row-major matrix in one call; NaN is a missing value. */
int32_t fraud_inference_outputs(void) { return N_TARGET * MAX_N_CLASS; }
void fraud_inference_predict(const FEATURE_T* rows, int64_t count, int64_t width, LEAF_T* out) {
  union Entry entries[width];
  for (int64_t row = 0; row < count; ++row) {
    for (int64_t column = 0; column < width; ++column) {
      entries[column].fvalue = rows[row * width + column];
    }
    LEAF_T* result = out + row * N_TARGET * MAX_N_CLASS;
    for (int i = 0; i < N_TARGET * MAX_N_CLASS; ++i) {
      result[i] = 0;
    }
    predict(entries, 0, result);
  }
}
"""


def _generate(model: Any, source: Path) -> Path:
    """Generate the model's C code in `source`.

    NOTE: two rewrites of tl2cgen's code. It writes a float32 leaf as a bare literal, a double in C, so
    `float += double` rounds in double, then to float: not XGBoost's float32 sum; cast to float, the literal (its
    shortest round-trip form) is the leaf exactly. And it tests presence by the int alias of the value's union
    (`missing != -1`), which a double whose low 32 bits are all ones would fail; NaN is tested instead.
    """
    import tl2cgen

    # NOTE: tl2cgen print()s its native log lines ("Parallel compilation enabled ...") on stdout, which is the
    # service's JSON log stream: they go through the logger instead.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        tl2cgen.generate_c_code(model, dirpath=str(source), params={"parallel_comp": 4})
    if printed.getvalue().strip():
        log.debug("compiled_trees.tl2cgen", output=printed.getvalue().strip()[-500:])
    for file in source.glob("*.c"):
        code = _PRESENT.sub(r"!isnan(data[\1].fvalue)", file.read_text())
        if "missing" in code:
            raise RuntimeError(f"the generated {file.name} tests missing values in a form this service does not know")
        file.write_text(_LEAF_SUM.sub(r"\1(float)\2;", code) if model.output_type == "float32" else code)
    loop = _MATRIX_LOOP.replace("FEATURE_T", _C_TYPES[model.input_type]).replace("LEAF_T", _C_TYPES[model.output_type])
    (source / "fraud_inference_matrix.c").write_text(loop)
    recipe = json.loads((source / "recipe.json").read_text())
    recipe["sources"].append({"name": "fraud_inference_matrix", "length": loop.count("\n")})
    (source / "recipe.json").write_text(json.dumps(recipe))
    return source


def _compile(source: Path) -> Path:
    """Compile the C code in `source` with gcc into a shared library; return its path."""
    import tl2cgen

    options = list(_GCC_OPTIONS)
    return Path(tl2cgen.create_shared("gcc", str(source), nthread=1, options=options, long_build_time_warning=False))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fall_back(artifact: ModelArtifact, reason: str, *, recorded: bool) -> None:
    """Log that the version is served natively; `recorded`: in the cache for good, else tried again next load."""
    ref = artifact.ref
    log.warning(
        "compiled_trees.native_fallback", model=ref.key, name=ref.name, version=ref.version, reason=reason[:500],
        recorded=recorded,
    )  # fmt: skip


def _refuse(artifact: ModelArtifact, cache: Path, worst: str) -> None:
    """Record that the version's compiled trees are not exact, so no process compiles it again; then fall back."""
    reason = f"not exact: {worst}"
    key = _cache_key(artifact)
    recorded = False
    with contextlib.suppress(OSError), _locked(cache / f"{key}.lock"):
        (cache / f"{key}.refused").write_text(reason)
        recorded = True
        (cache / f"{key}.so").unlink(missing_ok=True)
    _fall_back(artifact, reason, recorded=recorded)


def _worst_probe_difference(artifact: ModelArtifact, native: _TreeScorer, compiled: CompiledTreesScorer) -> str | None:
    """None when the compiled model scores every probe row within TOLERANCE of the native one; else the worst row."""
    from fraud_inference.models.signature import SignatureDecoder

    rows = _probe_rows(artifact, native, compiled.library)
    decoder = SignatureDecoder(
        artifact.ref.key, artifact.features, frame=native.needs_frame, categories=native.categories
    )
    batch = decoder.decode(json.dumps(rows).encode())
    expected = native.fraud_probability(batch)
    got = compiled.compiled_probability(batch)
    if expected.shape != got.shape:
        return f"{got.shape} scores for {expected.shape} rows"
    differences = np.abs(got - expected)
    differences[np.isnan(got) != np.isnan(expected)] = np.inf
    differences[np.isnan(got) & np.isnan(expected)] = 0.0
    index = int(np.argmax(differences))
    if differences[index] <= TOLERANCE:
        return None
    return (
        f"on probe row {rows[index]} the compiled trees give {got[index]:.9g}, the native library "
        f"{expected[index]:.9g} (|diff| {differences[index]:.3g} > {TOLERANCE:g}, {len(rows)} rows probed)"
    )


def _probe_rows(artifact: ModelArtifact, native: _TreeScorer, library: Path) -> list[dict[str, Any]]:
    """Rows in which every split value of every feature (and its neighbours) appears at least once, shuffled."""
    splits = _split_values(library.with_suffix(".splits.json"), native)
    candidates = [
        _candidates(feature, splits.get(index, []), native.categories.get(feature.name, []))
        for index, feature in enumerate(artifact.features)
    ]
    count = min(_MAX_PROBE_ROWS, max(256, *(len(values) for values in candidates)))
    rng = np.random.default_rng(0)
    columns = []
    for values in candidates:
        order = rng.permutation(count) % len(values)
        columns.append([values[i] for i in order])
    names = [feature.name for feature in artifact.features]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _split_values(cached: Path, native: _TreeScorer) -> dict[int, list[float]]:
    """Per feature index, the thresholds and category codes the trees split on; cached beside the library."""
    if not cached.exists():
        dump = json.loads(native.treelite_model().dump_as_json(pretty_print=False))
        values: dict[int, set[float]] = {}
        for tree in dump["trees"]:
            for node in tree["nodes"]:
                feature = node.get("split_feature_id")
                if feature is not None:
                    found = values.setdefault(int(feature), set())
                    found.update(float(code) for code in node.get("category_list", []))
                    if "threshold" in node:
                        found.add(float(node["threshold"]))
        with tempfile.NamedTemporaryFile("w", dir=cached.parent, suffix=".tmp", delete=False) as partial:
            partial.write(json.dumps({str(feature): sorted(found) for feature, found in values.items()}))
        os.replace(partial.name, cached)
    return {int(feature): found for feature, found in json.loads(cached.read_text()).items()}


def _candidates(feature: FeatureSpec, thresholds: Sequence[float], categories: Sequence[Any]) -> list[Any]:
    """The values a probe row may hold in `feature`: None (missing) always; the rest by the signature's type."""
    values: list[Any] = [None]
    if feature.type == "string":
        return [*values, *(str(category) for category in categories), _UNSEEN]
    if feature.type == "boolean":
        return [*values, True, False]
    numbers: set[float] = {0.0, 1.0, -1.0}
    for threshold in thresholds:
        if not math.isfinite(threshold):
            continue
        single = float(np.float32(threshold))
        numbers.update(
            {threshold, math.nextafter(threshold, math.inf), math.nextafter(threshold, -math.inf), single}
            | {float(np.nextafter(np.float32(threshold), np.float32(direction))) for direction in (np.inf, -np.inf)}
        )
    if feature.type in {"long", "integer"}:
        limit = 2.0**53 - 1
        whole = {float(math.floor(n)) for n in numbers} | {float(math.ceil(n)) for n in numbers}
        return [*values, *(int(n) for n in sorted(whole) if -limit <= n <= limit)]
    return [*values, *sorted(n for n in numbers if math.isfinite(n))]


def _as_matrix(batch: Any) -> Matrix:
    """The batch as one float matrix in column order: a categorical column by its code on the training categories
    (an unseen or missing value is NaN), booleans as 0 / 1."""
    if isinstance(batch, np.ndarray):
        return batch
    import pandas as pd

    matrix = np.empty(batch.shape, dtype=np.float64)
    for index, (_name, column) in enumerate(batch.items()):
        if isinstance(column.dtype, pd.CategoricalDtype):
            codes = column.cat.codes.to_numpy(dtype=np.float64)
            codes[codes < 0] = np.nan
            matrix[:, index] = codes
        else:
            matrix[:, index] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return matrix
