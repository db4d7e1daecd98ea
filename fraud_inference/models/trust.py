"""Which serialized models may be loaded: skops files of trusted types only; pickles and custom code when allowed.

MLflow's own loaders take skops's trust list from the model's MLmodel file, so a crafted model can trust any
type (mlflow/sklearn/__init__.py, `_load_model_from_local_file`). Here the list is the service's: the classes
of scikit-learn, numpy, scipy, xgboost and lightgbm (what their own estimators are made of) as the classes of
the objects the file describes, numpy's ufuncs, plus `SKOPS_TRUSTED_TYPES`; the file's types, and where each is
used, are read without running any of its code.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = [
    "BUILTIN_TRUSTED_CALLABLES",
    "BUILTIN_TRUSTED_TYPES",
    "ModelTrust",
    "UntrustedModelError",
    "check_serialized",
    "load_serialized",
    "skops_objects",
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

BUILTIN_TRUSTED_CALLABLES: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",  # LGBMClassifier's file holds the class itself; calling it builds an empty dict
        "sklearn.utils.validation.check_array",
    }
)
"""What a file may hand to the model (or to skops) to call, by default: see the NOTE on calls below."""

# NOTE: why those two are safe by default (read in skops 0.16, skops/io/_general.py and _audit.py):
# - `functools.partial`: skops's PartialNode rebuilds it as `functools.partial(func, *args, **kwds)` (never a
#   subclass) and audits `func`, `args`, `kwds` and `namespace` as nodes of their own, so trusting the partial
#   does not trust what it wraps: a wrapped function is a FunctionNode, checked by its own name (`posix.system`
#   stays refused). Building it calls nothing. What that leaves open: a partial wrapping a *class* trusted by default
#   (`numpy.memmap`) would call that class's constructor with positional arguments chosen by the file (memmap
#   opens and truncates a path) when the FunctionTransformer runs, so the default covers only partials whose
#   `func` is a function (`_partials_around_non_functions`); a file that needs more must list the partial in
#   SKOPS_TRUSTED_TYPES (and a class it wraps, as the NOTE on calls below says).
# - `sklearn.utils.validation.check_array`: it validates and converts its input array (dtype, finiteness,
#   shape) and returns it; it imports, executes and opens nothing, whatever (trusted) arguments the file binds.

# NOTE: calls. Trusting the classes of the packages above is safe only where skops rebuilds an *object* of that
# class without calling it: an ObjectNode is `cls.__new__(cls)` plus its saved attributes (skops 0.16,
# skops/io/_general.py), a TreeNode always calls `Tree`, a DTypeNode / MaskedArrayNode / SparseMatrixNode build
# from saved arrays, a PartialNode always calls `functools.partial`, a CachedNode repeats an earlier node.
# Everywhere else the named class is called with values the file chose: a class stored as an attribute is a
# TypeNode (a FunctionNode can name a class too), which the model calls on the rows (`FunctionTransformer(func=,
# inverse_func=)`, a ColumnTransformer's column selector, `score_func`); ConstructorFromReduceNode, LossNode,
# NdArrayNode, DictNode, RandomStateNode and the like call it while loading. `numpy.memmap` is a numpy class, but
# called it opens and truncates a file, so in those places only BUILTIN_TRUSTED_CALLABLES, numpy ufuncs and
# SKOPS_TRUSTED_TYPES are trusted (`_called_types`); numpy's dtype classes (`numpy.float64`) never reach this
# check, as skops trusts them itself.
_BUILT_WITHOUT_CALLING = frozenset(
    {"ObjectNode", "TreeNode", "DTypeNode", "MaskedArrayNode", "SparseMatrixNode", "PartialNode", "CachedNode"}
)

# NOTE: classes only (and numpy ufuncs, which are pure arithmetic): a *function* from these packages can do
# anything when a FunctionTransformer calls it (numpy.testing's `runstring` executes a string), so functions
# still need SKOPS_TRUSTED_TYPES. A class is trusted by default only where skops does not call it (NOTE above).
_TRUSTED_PACKAGES = frozenset({"sklearn", "numpy", "scipy", "xgboost", "lightgbm"})


class UntrustedModelError(Exception):
    """The version's serialized model may not be loaded; the message says why and how to fix it."""


class ModelTrust(msgspec.Struct, frozen=True, kw_only=True):
    """The service's rules: `SKLEARN_PICKLE`, `PYFUNC` and the extra `SKOPS_TRUSTED_TYPES`."""

    pickle: PicklePolicy = "refuse"
    pyfunc: PicklePolicy = "refuse"
    extra_types: tuple[str, ...] = ()

    def trusts(self, type_name: str, *, called: bool = False) -> bool:
        """Whether a skops file may hold `type_name`; `called` when the file hands it to something that calls it."""
        if type_name in self.extra_types or type_name in BUILTIN_TRUSTED_CALLABLES:
            return True
        if called:
            return trusted_by_default(type_name, called=True)
        return type_name in BUILTIN_TRUSTED_TYPES or trusted_by_default(type_name)


def trusted_by_default(type_name: str, *, called: bool = False) -> bool:
    """A class of scikit-learn, numpy, scipy, xgboost or lightgbm, or a numpy ufunc (imported, never called).

    `called`: only a numpy ufunc, as any class could do anything when it is called (see the NOTE on calls).
    """
    module_name, _, attribute = type_name.rpartition(".")
    if module_name.split(".")[0] not in _TRUSTED_PACKAGES:
        return False
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    import numpy as np

    return isinstance(found, np.ufunc) if called else isinstance(found, type | np.ufunc)


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
    called = _called_types(model_dir / file, needed)
    untrusted = [
        f"{name} (trusted by default as the class of an object, not to be called, and this file has it called)"
        if trust.trusts(name)
        else name
        for name in needed
        if not trust.trusts(name, called=name in called)
    ]
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


def _called_types(path: Path, needed: list[str]) -> set[str]:
    """Which of `needed` the file names anywhere but as the class of an object skops builds without calling it.

    A name the schema does not show as a node's class (a bound method's `module.Class.name`) counts as called.
    """
    loaders: dict[str, set[str]] = defaultdict(set)
    for node in skops_nodes(_schema(path)):
        loaders[f"{node.get('__module__')}.{node.get('__class__')}"].add(node["__loader__"])
    return {name for name in needed if not loaders[name] or not loaders[name] <= _BUILT_WITHOUT_CALLING}


def _schema(path: Path) -> Any:
    """The JSON skops builds its nodes from, read without building any of them."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("schema.json"))


def _partials_around_non_functions(path: Path) -> Iterator[str]:
    """The name of what each `functools.partial` in the skops file wraps, when that is not a plain function.

    Read from the file's schema.json (the JSON skops builds its nodes from), running nothing; a reference to an
    object seen earlier in the file (skops's CachedNode) is followed to that object.
    """
    nodes = list(skops_nodes(_schema(path)))
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


def skops_objects(schema: Any, class_name: str, module: str) -> Iterator[dict[str, Any]]:
    """Every node of a skops schema describing a `class_name` of the package `module` (`Booster`, `xgboost`),
    however deeply nested (pipeline steps, dict values), read without building any of them."""
    for node in skops_nodes(schema):
        if node.get("__class__") == class_name and str(node.get("__module__", "")).startswith(module):
            yield node


def skops_nodes(state: Any) -> Iterator[dict[str, Any]]:
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
