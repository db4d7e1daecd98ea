"""Which serialized models may be loaded: skops files of trusted types only; pickles and custom code when allowed.

MLflow's own loaders take skops's trust list from the model's MLmodel file, so a crafted model can trust any
type (mlflow/sklearn/__init__.py, `_load_model_from_local_file`). Here the list is the service's: the classes
of scikit-learn, numpy, scipy, xgboost and lightgbm (what their own estimators are made of), numpy's ufuncs,
plus `SKOPS_TRUSTED_TYPES`; the file's types are read without running any of its code.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = [
    "BUILTIN_TRUSTED_TYPES",
    "ModelTrust",
    "UntrustedModelError",
    "check_serialized",
    "load_serialized",
    "trusted_by_default",
]

PicklePolicy = Literal["allow", "refuse"]
_PARTIAL = "functools.partial"

BUILTIN_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",  # a standard-library type LightGBM's classifier holds
        # The classes the usual models need, named so that checking them imports nothing into the HTTP process.
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
        "numpy.dtype",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        # HistGradientBoostingClassifier(categorical_features=...) keeps, in its column preprocessor, a
        # FunctionTransformer(func=functools.partial(check_array, dtype=[numpy.float64], ensure_all_finite=False)).
        _PARTIAL,
        "sklearn.utils.validation.check_array",
    }
)
"""Types trusted without looking them up; any other class of the trusted packages is found by importing it."""

# NOTE: why those two are safe by default (read in skops 0.16, skops/io/_general.py and _audit.py):
# - `functools.partial`: skops's PartialNode rebuilds it as `functools.partial(func, *args, **kwds)` (never a
#   subclass) and audits `func`, `args`, `kwds` and `namespace` as nodes of their own, so trusting the partial
#   does not trust what it wraps: a wrapped function is a FunctionNode, checked by its own name (`posix.system`
#   stays refused). Building it calls nothing. What that leaves open: a partial wrapping a *class* trusted by default
#   (`numpy.memmap`) would call that class's constructor with positional arguments chosen by the file (memmap
#   opens and truncates a path) when the FunctionTransformer runs, so the default covers only partials whose
#   `func` is a function (`_partials_around_non_functions`); a file that needs more must list the partial in
#   SKOPS_TRUSTED_TYPES.
# - `sklearn.utils.validation.check_array`: it validates and converts its input array (dtype, finiteness,
#   shape) and returns it; it imports, executes and opens nothing, whatever (trusted) arguments the file binds.

# NOTE: classes only (and numpy ufuncs, which are pure arithmetic): a *function* from these packages can do
# anything when a FunctionTransformer calls it (numpy.testing's `runstring` executes a string), so functions
# still need SKOPS_TRUSTED_TYPES. skops builds classes without calling their constructors.
_TRUSTED_PACKAGES = frozenset({"sklearn", "numpy", "scipy", "xgboost", "lightgbm"})


class UntrustedModelError(Exception):
    """The version's serialized model may not be loaded; the message says why and how to fix it."""


class ModelTrust(msgspec.Struct, frozen=True, kw_only=True):
    """The service's rules: `SKLEARN_PICKLE`, `PYFUNC` and the extra `SKOPS_TRUSTED_TYPES`."""

    pickle: PicklePolicy = "refuse"
    pyfunc: PicklePolicy = "refuse"
    extra_types: tuple[str, ...] = ()

    def trusts(self, type_name: str) -> bool:
        return type_name in BUILTIN_TRUSTED_TYPES or type_name in self.extra_types or trusted_by_default(type_name)


def trusted_by_default(type_name: str) -> bool:
    """A class of scikit-learn, numpy, scipy, xgboost or lightgbm, or a numpy ufunc (imported, never called)."""
    module_name, _, attribute = type_name.rpartition(".")
    if module_name.split(".")[0] not in _TRUSTED_PACKAGES:
        return False
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    import numpy as np

    return isinstance(found, type | np.ufunc)


def check_serialized(file: str, serialization_format: str, model_dir: Path, trust: ModelTrust) -> tuple[str, ...]:
    """Check a serialized estimator against `trust`; return the skops types to trust when loading it.

    Raises `UntrustedModelError` for a pickle under `SKLEARN_PICKLE=refuse`, or a skops file holding a type
    that is not trusted.
    """
    if serialization_format != "skops":
        if trust.pickle == "refuse":
            raise UntrustedModelError(
                f"the model is saved as {serialization_format}, and loading a pickle runs whatever code it holds: "
                "log it again with serialization_format='skops', or set SKLEARN_PICKLE=allow if only trusted "
                "people can write to the registry"
            )
        return ()
    import skops.io

    needed = sorted(skops.io.get_untrusted_types(file=model_dir / file))
    untrusted = [name for name in needed if not trust.trusts(name)]
    if _PARTIAL in needed and _PARTIAL not in trust.extra_types:
        untrusted += [
            f"{_PARTIAL} around {wrapped} (trusted by default only around a function)"
            for wrapped in sorted(set(_partials_around_non_functions(model_dir / file)))
        ]
    if untrusted:
        raise UntrustedModelError(
            f"its skops file holds types this service does not trust: {', '.join(untrusted)}; if they are safe, "
            "add them to SKOPS_TRUSTED_TYPES (comma-separated)"
        )
    return tuple(needed)


def _partials_around_non_functions(path: Path) -> Iterator[str]:
    """The name of what each `functools.partial` in the skops file wraps, when that is not a plain function.

    Read from the file's schema.json (the JSON skops builds its nodes from), running nothing; a reference to an
    object seen earlier in the file (skops's CachedNode) is followed to that object.
    """
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    nodes = list(_nodes(schema))
    by_id = {node["__id__"]: node for node in nodes if "__id__" in node and node.get("__loader__") != "CachedNode"}
    for node in nodes:
        if node.get("__loader__") != "PartialNode":
            continue
        wrapped = node.get("content", {}).get("func", {})
        if isinstance(wrapped, dict) and wrapped.get("__loader__") == "CachedNode":
            wrapped = by_id.get(wrapped.get("__id__"), wrapped)
        if not isinstance(wrapped, dict) or wrapped.get("__loader__") != "FunctionNode":
            described = wrapped if isinstance(wrapped, dict) else {}
            yield f"{described.get('__module__')}.{described.get('__class__')} ({described.get('__loader__')})"


def _nodes(state: Any) -> Iterator[dict[str, Any]]:
    """Every node of a skops schema (a dict with a `__loader__`), depth first."""
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                yield item
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def load_serialized(
    path: Path, serialization_format: str, skops_types: tuple[str, ...], *, content: bytes | None = None
) -> Any:
    """Load a file `check_serialized` passed: skops trusting exactly `skops_types`, or a pickle it allowed.

    `content`: the file's bytes, already read (and checked) by the caller; skops then loads exactly those.
    """
    if serialization_format == "skops":
        import skops.io

        if content is not None:
            return skops.io.loads(content, trusted=list(skops_types))
        return skops.io.load(path, trusted=list(skops_types))
    # NOTE: reached only when SKLEARN_PICKLE=allow let check_serialized pass; MLflow loads both with cloudpickle's
    # compatible reader (pickle.load reads cloudpickle files).
    import pickle

    with path.open("rb") as file:
        return pickle.load(file)
