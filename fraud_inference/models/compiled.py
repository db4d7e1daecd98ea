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
import glob
import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fraud_inference.models.artifact import FeatureSpec, ModelArtifact
from fraud_inference.models.flavors import Scorer
from fraud_inference.models.flavors._base import Matrix, model_path
from fraud_inference.models.tolerance import TOLERANCE
from fraud_inference.observability.logging import get_logger

__all__ = ["CompiledTreesScorer", "compile_trees", "compiler_versions", "crashed_libraries"]

_SCHEME = "2"
"""Bump when the probe rows or the library layout change: entries cached by an older service are not reused.
2: a record (size, sha256, split values) beside each library."""
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

    def split_thresholds(self) -> dict[str, list[float]]: ...
    def pyfunc_answer(self, scores: Matrix) -> list[Any]: ...


class CompiledTreesScorer:
    """Scores through the compiled library; everything else (decoding, categories, the fraud class) is the native's.

    `library` is the cached shared library it loaded. One ctypes call per batch (the GIL released), into the
    loop this service adds to the generated code: no per-call object of tl2cgen's runtime. A batch of at least
    the native scorer's `native_from_rows` (when it has one) goes to the native library, faster there.
    """

    def __init__(self, native: _TreeScorer, library: Path, width: int, content: bytes | None = None) -> None:
        self._native = native
        # NOTE: loaded from a sealed in-memory copy of the bytes checked against the record, never from the cache
        # path: a file cut short or changed after the check (or after loading) cannot SIGBUS this process, and
        # a library rebuilt under the same name is a new object (dlopen returns a path it has loaded as it was).
        loaded = _loaded_library(library.read_bytes() if content is None else content)
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

    @property
    def native(self) -> Scorer:
        """The library's own scorer of the same trees (explanations: compiled trees compute no contributions)."""
        return self._native

    def fraud_probability(self, batch: Any) -> Matrix:
        if self._native_from_rows is not None and len(batch) >= self._native_from_rows:
            return self._native.fraud_probability(batch)
        return self.compiled_probability(batch)

    def split_thresholds(self) -> dict[str, list[float]]:
        """The native model's (`RecordsSplits`): the same trees."""
        return self._native.split_thresholds()

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
        library, compiled_now, content, splits = _cached_library(artifact, tree_scorer, cache)
        with _loading(library):
            compiled = CompiledTreesScorer(tree_scorer, library, len(artifact.features), content)
            worst = _worst_probe_difference(artifact, tree_scorer, compiled, splits)
        if worst is not None and not compiled_now:
            # A library that matches its record but not the version (another version's, put under this name):
            # the cache is wrong, not the model. Built again from this version's trees, then probed again.
            log.warning("compiled_trees.cache_mismatch", model=ref.key, library=str(library), reason=worst[:500])
            _discard(library)
            library, compiled_now, content, splits = _cached_library(artifact, tree_scorer, cache)
            with _loading(library):
                compiled = CompiledTreesScorer(tree_scorer, library, len(artifact.features), content)
                worst = _worst_probe_difference(artifact, tree_scorer, compiled, splits)
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


def _cached_library(
    artifact: ModelArtifact, native: _TreeScorer, cache: Path
) -> tuple[Path, bool, bytes, dict[int, list[float]]]:
    """The version's library, compiled now (True) or found in `cache` (False), its bytes as checked against the
    record written when it was built, and the split values of its trees; `_RefusedBeforeError` if refused before.

    NOTE: one compiler per key at a time (an flock), and the library appears under its final name only by a rename
    of a complete file: two workers loading the same version never read a half-written library. Beside it a record
    (`.json`, renamed into place too) holds its size, sha256 and split values; a library that does not match its
    record (cut short, changed), or one that crashed a process loading it, is built again. Only a refusal of the
    model's own is recorded; any other exception (a fault that may pass) leaves no trace, so the next load tries
    again.
    """
    import treelite

    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(artifact)
    library = cache / f"{key}.so"
    refused = cache / f"{key}.refused"
    record_path = library.with_suffix(".json")
    with _locked(cache / f"{key}.lock"):
        if refused.exists():
            raise _RefusedBeforeError(f"{refused.read_text()} (recorded in {refused})")
        crashed = _crashed_loads(library)
        if crashed:
            log.error(
                "compiled_trees.load_crashed", model=artifact.ref.key, library=str(library), processes=len(crashed),
                action="building it again",
            )  # fmt: skip
            _discard(library)
            for marker in crashed:
                marker.unlink(missing_ok=True)
        if library.exists():
            found = _verified(library, record_path)
            if found is not None:
                return library, False, *found
            _discard(library)
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
        try:
            splits = _split_values(model)
        except ValueError as error:  # e.g. `"threshold":,` for a LightGBM cross_entropy model (treelite 4.8)
            refused.write_text(f"treelite's dump of its trees is not valid JSON: {str(error)[:200]}")
            raise _RefusedBeforeError(refused.read_text()) from None
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".{key}-") as building:
            built = _compile(_generate(model, Path(building) / "source"))
            content = built.read_bytes()
            record = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest(), "splits": splits}
            (Path(building) / "record.json").write_text(json.dumps(record))
            os.replace(Path(building) / "record.json", record_path)
            os.replace(built, library)
        log.info(
            "compiled_trees.compiled", model=artifact.ref.key, name=artifact.ref.name, version=artifact.ref.version,
            seconds=round(time.perf_counter() - started, 3), trees=model.num_tree, library=str(library),
        )  # fmt: skip
        return library, True, content, {int(feature): found for feature, found in splits.items()}


def _verified(library: Path, record_path: Path) -> tuple[bytes, dict[int, list[float]]] | None:
    """The library's bytes and split values when they match the record written when it was built; else None,
    logging what differs."""
    content = library.read_bytes()
    try:
        record = json.loads(record_path.read_text())
        expected = (int(record["size"]), str(record["sha256"]))
        splits = {int(feature): [float(v) for v in found] for feature, found in record["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("compiled_trees.cache_mismatch", library=str(library), reason=f"no usable record: {error!r}")
        return None
    found = (len(content), hashlib.sha256(content).hexdigest())
    if found != expected:
        log.warning(
            "compiled_trees.cache_mismatch", library=str(library), reason="size or sha256 differs from its record",
            size=found[0], recorded_size=expected[0],
        )  # fmt: skip
        return None
    return content, splits


def _discard(library: Path) -> None:
    """Remove a cached library and its record (the caller holds the key's lock, or the library is not exact)."""
    library.unlink(missing_ok=True)
    library.with_suffix(".json").unlink(missing_ok=True)


@contextlib.contextmanager
def _loading(library: Path) -> Iterator[None]:
    """Mark, for as long as this process loads and probes `library`, that it does (a locked marker file).

    NOTE: a process that dies meanwhile leaves the marker unlocked: the next load finds it (`_crashed_loads`),
    names the library in its log and builds it again, and `crashed_libraries` lets a crash report name it.
    """
    name = f"{library.name}.loading-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    # Locked before it has the name `_crashed_loads` looks for: a marker seen unlocked is one whose process died.
    unnamed = library.with_name(f".{library.stem}-{os.getpid()}-{threading.get_ident()}.locking")
    with unnamed.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        marker = library.with_name(name)
        os.replace(unnamed, marker)
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)


def _crashed_loads(library: Path) -> list[Path]:
    """The markers of processes that died while loading `library` (their lock released, the marker left)."""
    crashed = []
    for marker in library.parent.glob(f"{glob.escape(library.name)}.loading-*"):
        with contextlib.suppress(OSError), marker.open("r") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is loading it now
            if os.fstat(held.fileno()).st_nlink == 0:
                continue  # its process finished and removed it (before unlocking) since the glob
            crashed.append(marker)
    return crashed


def crashed_libraries(cache: Path) -> list[Path]:
    """The cached libraries that a process died while loading (for a crash report to name them)."""
    if not cache.is_dir():
        return []
    libraries = {marker.parent / marker.name.split(".loading-")[0] for marker in cache.glob("*.so.loading-*")}
    return sorted(library for library in libraries if _crashed_loads(library))


_LOADED: dict[str, ctypes.CDLL] = {}
_LOADING = threading.Lock()


def _loaded_library(content: bytes) -> ctypes.CDLL:
    """The library holding `content`, loaded once per process from a sealed in-memory copy.

    NOTE: by content, once: a loaded library is never unloaded (ctypes has no safe dlclose), so a fresh copy at
    each refresh that loads the same version again would grow every worker by the library's size (the memory
    soak test: 30 refreshes between two versions). A process holds one copy per distinct library, as dlopen of
    a path did.
    """
    key = hashlib.sha256(content).hexdigest()
    with _LOADING:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = _LOADED[key] = ctypes.CDLL(f"/proc/self/fd/{_sealed_copy(content)}")
        return loaded


def _sealed_copy(content: bytes) -> int:
    """A file descriptor of an in-memory file holding `content`, sealed against any change."""
    descriptor = os.memfd_create("fraud-inference-compiled-trees", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(descriptor, content)
    fcntl.fcntl(
        descriptor, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    )
    return descriptor


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
        _discard(cache / f"{key}.so")
    _fall_back(artifact, reason, recorded=recorded)


def _worst_probe_difference(
    artifact: ModelArtifact, native: _TreeScorer, compiled: CompiledTreesScorer, splits: dict[int, list[float]]
) -> str | None:
    """None when the compiled model scores every probe row within TOLERANCE of the native one; else the worst row."""
    from fraud_inference.models.signature import SignatureDecoder

    rows = _probe_rows(artifact, native, splits)
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


def _probe_rows(artifact: ModelArtifact, native: _TreeScorer, splits: dict[int, list[float]]) -> list[dict[str, Any]]:
    """Rows in which every split value of every feature (and its neighbours) appears at least once, shuffled."""
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


def _split_values(model: Any) -> dict[str, list[float]]:
    """Per feature index, the thresholds and category codes the trees split on (recorded beside the library).

    Raises ValueError when treelite's dump is not JSON (treelite 4.8 writes `"threshold":,` for a LightGBM
    cross_entropy model): a property of the model."""
    dump = json.loads(model.dump_as_json(pretty_print=False))
    values: dict[int, set[float]] = {}
    for tree in dump["trees"]:
        for node in tree["nodes"]:
            feature = node.get("split_feature_id")
            if feature is not None:
                found = values.setdefault(int(feature), set())
                found.update(float(code) for code in node.get("category_list", []))
                if "threshold" in node:
                    found.add(float(node["threshold"]))
    return {str(feature): sorted(found) for feature, found in values.items()}


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
