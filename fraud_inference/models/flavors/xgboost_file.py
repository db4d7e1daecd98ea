"""XGBoost's JSON and UBJSON model files, checked in pure Python for what XGBoost 3.2's loader leaves unchecked.

XGBoost 3.2 (src/tree/tree_model.cc `RegTree::LoadModel`, src/gbm/gbtree_model.cc `GBTreeModel::LoadModel`) checks
that each tree's arrays hold `num_nodes` entries, that the tree count matches `num_trees` and `tree_info`, that tree
ids are inside the model (`trees.at(id)`), that `iteration_indptr` ends at the tree count and that every node but the
root has a parent other than -1. It does not check the values: a child index, a parent index or a categorical
segment outside the tree is followed as it is (out-of-bounds reads at load and at predict), a split feature past the
model's features is read past the row, a negative category is written before the bitset, two trees with one id
leave a null tree. This module refuses those before XGBoost parses the file.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fraud_inference.models.flavors.lightgbm_text import InvalidTreesError
from fraud_inference.models.trust import skops_objects

__all__ = ["InvalidTreesError", "check_model_file", "check_skops_boosters", "read_model_file"]

_MAX_CATEGORY = 16_777_216
"""XGBoost's largest category (`OutOfRangeCat`, 2**24): a category in a split is a bit in a bitset of that size."""
_NO_PARENT = 2_147_483_647


def check_skops_boosters(content: bytes) -> int:
    """`check_model_file` on the model of every XGBoost `Booster` in a skops file (an `XGBClassifier` inside a
    Pipeline); return how many it held. skops hands each Booster's `handle`, the model serialised as UBJSON and
    stored as a file of the archive, to `Booster.__setstate__`, which XGBoost parses. Raises `InvalidTreesError`, and
    `KeyError` / `zipfile.BadZipFile` / `ValueError` for an archive that cannot be read."""
    found = 0
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for booster in skops_objects(json.loads(archive.read("schema.json")), "Booster", "xgboost"):
            handle = booster.get("content", {}).get("content", {}).get("handle")
            if not isinstance(handle, dict) or handle.get("__loader__") != "BytearrayNode" or "file" not in handle:
                raise InvalidTreesError("an XGBoost Booster in the skops file holds its model in a form that cannot be "
                                        "checked")  # fmt: skip
            # NOTE: Booster.__getstate__ gives XGBoost's serialised form, {"Config": ..., "Model": {"learner": ...}}:
            # its Model is the model document check_model_file reads (the Config is parameters XGBoost parses itself).
            document = read_model_file(archive.read(str(handle["file"])))
            model = document.get("Model", document)
            _check_document(model if isinstance(model, dict) else {}, None)
            found += 1
    return found


def read_model_file(content: bytes) -> dict[str, Any]:
    """The model's JSON document, decoded in Python from JSON or UBJSON, chosen as XGBoost chooses from a buffer."""
    if content[:4] == b"binf":
        raise InvalidTreesError("it is XGBoost's old binary format, which XGBoost 3 no longer reads")
    if content[:1] != b"{":
        raise InvalidTreesError("it is neither JSON nor UBJSON (it does not start with '{')")
    following = content[1:].lstrip()[:1]
    try:
        if following in {b'"', b"}"}:
            document = json.loads(content)
        elif following.isalpha():
            document = _Ubjson(content).document()
        else:
            raise InvalidTreesError("it is neither JSON nor UBJSON")
    except (ValueError, struct.error, IndexError, RecursionError) as error:
        raise InvalidTreesError(f"it cannot be decoded: {error}") from None
    if not isinstance(document, dict):
        raise InvalidTreesError("its document is not an object")
    return document


def check_model_file(content: bytes, *, features: int | None = None) -> int:
    """Refuse (`InvalidTreesError`) an XGBoost JSON/UBJSON model whose trees are not trees; return its tree count.

    `features`: the signature's column count; split features must also lie inside it.
    """
    return _check_document(read_model_file(content), features)


def _check_document(document: Mapping[str, Any], features: int | None) -> int:
    try:
        return _check_learner(document["learner"], features)
    except InvalidTreesError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidTreesError(f"its model document is malformed ({type(error).__name__}: {error})") from None


def _check_learner(learner: Mapping[str, Any], features: int | None) -> int:
    parameters = learner["learner_model_param"]
    width = int(parameters["num_feature"])
    if features is not None and width > features:
        raise InvalidTreesError(f"the model takes {width} features, its signature {features}")
    usable = width if features is None else min(width, features)
    outputs = max(int(parameters.get("num_class", "0")), int(parameters.get("num_target", "1")), 1)
    booster = learner["gradient_booster"]
    name = booster["name"]
    if name == "dart":
        booster = booster["gbtree"]
    elif name != "gbtree":
        return 0  # gblinear: no trees (its weights are one array XGBoost sizes itself)
    model = booster["model"]
    trees: Sequence[Mapping[str, Any]] = model["trees"]
    count = int(model["gbtree_model_param"]["num_trees"])
    ids = sorted(int(tree["id"]) for tree in trees)
    if ids != list(range(len(trees))) or len(trees) != count:
        raise InvalidTreesError(f"its {len(trees)} trees do not have the ids 0..{count - 1} once each")
    groups = [int(group) for group in model["tree_info"]]
    if len(groups) != count or any(not 0 <= group < outputs for group in groups):
        raise InvalidTreesError(f"tree_info names an output outside the model's {outputs}")
    indptr = [int(value) for value in model.get("iteration_indptr", [0, count])]
    if indptr[0] != 0 or indptr[-1] != count or any(b < a for a, b in itertools.pairwise(indptr)):
        raise InvalidTreesError("iteration_indptr does not run from 0 to the tree count")
    for tree in trees:
        try:
            _check_tree(tree, usable)
        except InvalidTreesError as error:
            raise InvalidTreesError(f"tree {tree['id']}: {error}") from None
    _check_categories(model.get("cats"))
    return count


def _check_tree(tree: Mapping[str, Any], features: int) -> None:
    parameters = tree["tree_param"]
    if int(parameters.get("size_leaf_vector", "1")) > 1:
        raise InvalidTreesError("it is a multi-target tree (size_leaf_vector > 1), which this service does not serve")
    size = int(parameters["num_nodes"])
    if size < 1:
        raise InvalidTreesError(f"num_nodes is {size}")
    left, right, parents, split_indices = (
        _integers(tree[key], key, size) for key in ("left_children", "right_children", "parents", "split_indices")
    )
    for key in ("split_conditions", "default_left", "loss_changes", "sum_hessian", "base_weights"):
        if len(tree[key]) != size:
            raise InvalidTreesError(f"{key} holds {len(tree[key])} entries, not {size}")
    if parents.size > 1 and (parents[1:].min() < 0 or parents[1:].max() >= size):
        node = 1 + int(np.argmax((parents[1:] < 0) | (parents[1:] >= size)))
        raise InvalidTreesError(f"node {node}'s parent is {parents[node]}, outside the tree's {size} nodes")
    lefts, rights, parent_of, split_of = left.tolist(), right.tolist(), parents.tolist(), split_indices.tolist()
    seen = bytearray(size)
    seen[0] = 1
    stack = [0]
    while stack:
        node = stack.pop()
        children = lefts[node], rights[node]
        if children == (-1, -1):
            continue
        feature = split_of[node]
        if not 0 <= feature < features:
            raise InvalidTreesError(f"node {node} splits on feature {feature}, outside the model's {features} features")
        for side, child in zip(("left", "right"), children, strict=True):
            if not 0 < child < size:
                raise InvalidTreesError(f"node {node}'s {side} child is {child}, outside the tree's {size} nodes")
            if seen[child]:
                raise InvalidTreesError(f"node {child} is reached twice (node {node}'s {side} child): a cycle")
            if parent_of[child] != node:
                raise InvalidTreesError(f"node {child}'s parent is {parent_of[child]}, but node {node} points to it")
            seen[child] = 1
            stack.append(child)
    if "split_type" in tree:
        _check_categorical_splits(tree, size)


def _check_categorical_splits(tree: Mapping[str, Any], size: int) -> None:
    split_type = _integers(tree["split_type"], "split_type", size)
    nodes = _integers(tree["categories_nodes"], "categories_nodes", None)
    segments = _integers(tree["categories_segments"], "categories_segments", nodes.size)
    sizes = _integers(tree["categories_sizes"], "categories_sizes", nodes.size)
    categories = _integers(tree["categories"], "categories", None)
    if split_type.size and (split_type.min() < 0 or split_type.max() > 1):
        raise InvalidTreesError("split_type holds a value other than 0 (numerical) and 1 (categorical)")
    if nodes.size:
        if nodes.min() < 0 or nodes.max() >= size or np.any(np.diff(nodes) <= 0):
            raise InvalidTreesError(f"categories_nodes are not increasing node indices inside the tree's {size} nodes")
        if segments.min() < 0 or sizes.min() < 1 or np.any(segments + sizes > categories.size):
            raise InvalidTreesError(
                f"a categorical split's categories_segments / categories_sizes run outside its {categories.size} "
                "categories"
            )
    if categories.size and (categories.min() < 0 or categories.max() >= _MAX_CATEGORY):
        raise InvalidTreesError(f"a categorical split holds category {int(categories.min())}..{int(categories.max())}, "
                                f"outside 0..{_MAX_CATEGORY - 1}")  # fmt: skip


def _check_categories(cats: Mapping[str, Any] | None) -> None:
    """The training categories' container (`cats`, XGBoost >= 3.1): offsets inside their values."""
    if not cats:
        return
    for index, encoding in enumerate(cats.get("enc", [])):
        offsets = _integers(encoding.get("offsets", []), "offsets", None)
        values = encoding.get("values", [])
        if offsets.size and (offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0)):
            raise InvalidTreesError(f"the categories of feature {index}: offsets run outside their values")
    segments = _integers(cats.get("feature_segments", [0]), "feature_segments", None)
    order = _integers(cats.get("sorted_idx", []), "sorted_idx", None)
    if segments.size and (segments[0] != 0 or segments[-1] != order.size or np.any(np.diff(segments) < 0)):
        raise InvalidTreesError("the categories' feature_segments do not run from 0 to sorted_idx's length")
    for start, end in itertools.pairwise(segments):
        part = order[start:end]
        if part.size and (part.min() < 0 or part.max() >= end - start):
            raise InvalidTreesError("the categories' sorted_idx points outside its feature's categories")


def _integers(values: Any, key: str, size: int | None) -> np.ndarray[Any, np.dtype[np.int64]]:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise InvalidTreesError(f"{key} is not an array of integers")
    if size is not None and array.size != size:
        raise InvalidTreesError(f"{key} holds {array.size} entries, not {size}")
    return array.astype(np.int64, copy=False)


class _Ubjson:
    """A UBJSON decoder for what XGBoost writes: objects, arrays, typed and counted arrays, numbers and strings."""

    _SCALARS: ClassVar[dict[int, struct.Struct]] = {
        ord(marker): struct.Struct(">" + code) for marker, code in zip("iUIlLdD", "bBhiqfd", strict=True)
    }
    _ARRAYS: ClassVar[dict[int, np.dtype[Any]]] = {
        ord(marker): np.dtype(">" + code)
        for marker, code in zip("iUIlLdD", ("i1", "u1", "i2", "i4", "i8", "f4", "f8"), strict=True)
    }

    def __init__(self, content: bytes) -> None:
        self._content = content
        self._at = 0

    def document(self) -> Any:
        value = self._value(self._marker())
        if self._at != len(self._content):
            raise ValueError(f"{len(self._content) - self._at} bytes after the document")
        return value

    def _marker(self) -> int:
        marker = self._content[self._at]  # IndexError past the end: the document ends early
        self._at += 1
        return marker

    def _number(self, marker: int) -> Any:
        scalar = self._SCALARS.get(marker)
        if scalar is None:
            raise ValueError(f"unknown UBJSON marker {chr(marker)!r}")
        (value,) = scalar.unpack_from(self._content, self._at)  # struct.error past the end
        self._at += scalar.size
        return value

    def _count(self) -> int:
        count = self._number(self._marker())
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"a count of {count}")
        return count

    def _string(self) -> str:
        count = self._count()
        end = self._at + count
        if end > len(self._content):
            raise ValueError("a string runs past the end of the document")
        text = self._content[self._at : end].decode()
        self._at = end
        return text

    def _value(self, marker: int) -> Any:
        if marker == 0x7B:  # {
            return self._object()
        if marker == 0x5B:  # [
            return self._array()
        if marker == 0x53:  # S
            return self._string()
        if marker in {0x54, 0x46}:  # T, F
            return marker == 0x54
        if marker == 0x5A:  # Z
            return None
        return self._number(marker)

    def _object(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        while self._content[self._at] != 0x7D:  # }
            key = self._string()
            found[key] = self._value(self._marker())
        self._at += 1
        return found

    def _array(self) -> Any:
        marker = self._marker()
        if marker == 0x24:  # $: a typed array, then its count
            dtype = self._ARRAYS.get(self._marker())
            if dtype is None or self._marker() != 0x23:
                raise ValueError("a typed array of an unknown type, or without a count")
            count = self._count()
            end = self._at + count * dtype.itemsize
            if end > len(self._content):
                raise ValueError("an array runs past the end of the document")
            array = np.frombuffer(self._content, dtype=dtype, count=count, offset=self._at)
            self._at = end
            return array.astype(dtype.newbyteorder("="))
        if marker == 0x23:  # #: a counted array
            return [self._value(self._marker()) for _ in range(self._count())]
        items = []
        while marker != 0x5D:  # ]
            items.append(self._value(marker))
            marker = self._marker()
        return items
