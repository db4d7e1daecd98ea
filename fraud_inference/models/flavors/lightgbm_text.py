"""LightGBM's text model format, checked in pure Python before LightGBM or treelite parse it.

LightGBM's parser (src/boosting/gbdt_model_text.cpp, src/io/tree.cpp, 4.7.0) checks how many numbers each array
holds, not what they are: a crafted child index, split feature or categorical threshold makes `predict` read, and
`predict(pred_contrib=True)` write, outside its arrays (lightgbm-org/LightGBM#7357, GHSA-wvg4-4w35-4jc9, #7437,
#7438); `tree_sizes` are byte offsets it follows unchecked, and `num_tree_per_iteration=0` divides by zero. This
module reads the same lines the way LightGBM finds them and refuses a file unless each tree is a tree: every child
index inside it, every node and leaf reached once from the root, split features and linear-leaf features inside
the model's (and the signature's) features, categorical thresholds inside `cat_boundaries` / `cat_threshold`.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

from fraud_inference.models.trust import skops_objects

__all__ = ["InvalidTreesError", "check_model_text", "check_skops_boosters", "has_linear_trees", "model_objective"]

_TREE_LINES = 22
"""LightGBM reads at most this many `key=value` lines of a tree (tree.cpp, `max_num_line`)."""
_UINT32 = 2**32


class InvalidTreesError(ValueError):
    """A model file whose trees a native parser must not read; the message names the tree and what is wrong."""


def check_model_text(text: bytes, *, features: int | None = None) -> int:
    """Refuse (`InvalidTreesError`) a LightGBM text model that is not well-formed trees; return its tree count.

    `features`: the signature's column count; split features must also lie inside it.
    """
    if b"\x00" in text or b"\r" in text:
        # NOTE: LightGBM reads the text as a C string and ends lines at '\r' too; it writes neither.
        raise InvalidTreesError("it holds a NUL byte or a carriage return, which LightGBM never writes")
    header, trees_at = _header(text)
    num_class = _int(header, "num_class", low=1)
    per_iteration = _int(header, "num_tree_per_iteration", low=1) if "num_tree_per_iteration" in header else num_class
    if per_iteration != num_class:
        raise InvalidTreesError(
            f"num_tree_per_iteration={per_iteration} but num_class={num_class} (LightGBM writes one tree per class "
            "and iteration, and sizes its output by num_class)"
        )
    _int(header, "label_index")
    width = _int(header, "max_feature_idx", low=0) + 1
    for key in ("feature_names", "feature_infos"):
        if key not in header:
            raise InvalidTreesError(f"the header has no {key}")
        if len(header[key].split(b" ")) != width:
            raise InvalidTreesError(f"{key} lists {len(header[key].split(b' '))} features, max_feature_idx {width - 1}")
    if features is not None and width > features:
        raise InvalidTreesError(f"the model takes {width} features, its signature {features}")
    usable = width if features is None else min(width, features)
    count = 0
    for index, tree in enumerate(_trees(text, trees_at, header.get("tree_sizes"))):
        try:
            _check_tree(tree, usable)
        except InvalidTreesError as error:
            raise InvalidTreesError(f"tree {index}: {error}") from None
        count += 1
    if count % per_iteration:
        raise InvalidTreesError(f"{count} trees is not a whole number of iterations of {per_iteration} trees")
    return count


def check_skops_boosters(schema: Mapping[str, Any], *, features: int | None = None) -> int:
    """`check_model_text` on the model text of every LightGBM `Booster` in a skops file's schema.json; return how
    many it held. skops rebuilds a Booster from that text (`Booster.__setstate__` hands it to LightGBM's parser)."""
    found = 0
    for model in _skops_model_texts(schema):
        check_model_text(model.encode(), features=features)
        found += 1
    return found


def model_objective(content: bytes, file_format: str) -> str | None:
    """The `objective` line of a checked LightGBM model (`binary sigmoid:1`, `cross_entropy`): of the text itself
    (`native`), or of the first Booster in a skops file's schema.json (`skops`); None when it holds none."""
    for text in _model_texts(content, file_format):
        objective = _header(text)[0].get("objective")
        return None if objective is None else objective.decode(errors="replace").strip()
    return None


def has_linear_trees(content: bytes, file_format: str) -> bool:
    """Some tree of a checked LightGBM model (`native` text, or a `skops` file's Boosters) has linear leaves
    (`is_linear` other than 0), for which LightGBM computes no contributions."""
    return any(
        re.search(rb"^is_linear=(?!0$).", text, flags=re.MULTILINE) is not None
        for text in _model_texts(content, file_format)
    )


def _model_texts(content: bytes, file_format: str) -> Iterator[bytes]:
    if file_format == "native":
        yield content
        return
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        schema = json.loads(archive.read("schema.json"))
    for text in _skops_model_texts(schema):
        yield text.encode()


def _skops_model_texts(schema: Mapping[str, Any]) -> Iterator[str]:
    """The model text of every LightGBM Booster in a skops schema (None models skipped)."""
    for booster in skops_objects(schema, "Booster", "lightgbm"):
        state = booster.get("content", {}).get("content", {})
        handle = state.get("_handle", state.get("handle"))
        if handle is None:
            continue
        if handle.get("__class__") != "str" or handle.get("__loader__") != "JsonNode":
            raise InvalidTreesError(
                "a LightGBM Booster in the skops file holds its model in a form that cannot be checked"
            )
        model = json.loads(handle["content"])
        if model is None:
            continue
        if not isinstance(model, str):
            raise InvalidTreesError("a LightGBM Booster in the skops file holds no model text")
        yield model


def _header(text: bytes) -> tuple[dict[str, bytes], int]:
    """The `key=value` lines before the first tree, and the offset of the first `Tree=` line (as LightGBM reads)."""
    header: dict[str, bytes] = {}
    position = 0
    while position < len(text):
        end = _line_end(text, position)
        line = text[position:end]
        if line.startswith(b"Tree="):
            return header, position
        if line:
            key, _, value = line.partition(b"=")
            header[key.decode(errors="replace")] = value
        position = end + 1
    return header, len(text)


def _line_end(text: bytes, position: int) -> int:
    end = text.find(b"\n", position)
    return len(text) if end < 0 else end


def _trees(text: bytes, start: int, tree_sizes: bytes | None) -> Iterator[dict[str, bytes]]:
    """Each tree's `key=value` lines, found exactly where LightGBM looks for them."""
    if tree_sizes is None:
        # NOTE: without tree_sizes LightGBM reads tree after tree while a line starts with "Tree=".
        position = start
        while position < len(text):
            if text.startswith(b"\n", position):
                position += 1
                continue
            if not text.startswith(b"Tree=", position):
                return
            tree, position = _tree_lines(text, _line_end(text, position) + 1, len(text))
            yield tree
        return
    # NOTE: with tree_sizes LightGBM jumps to each tree by those byte counts, without a bound: each must land on a
    # "Tree=" line whose tree ends inside its own block.
    sizes = _ints(tree_sizes, "tree_sizes", low=0)
    position = start
    for index, size in enumerate(sizes):
        end = position + size
        if end > len(text) or not text.startswith(b"Tree=", position):
            raise InvalidTreesError(f"tree_sizes does not lead to tree {index} (offset {position} of {len(text)})")
        tree, _ = _tree_lines(text, _line_end(text, position) + 1, end)
        yield tree
        position = end


def _tree_lines(text: bytes, position: int, limit: int) -> tuple[dict[str, bytes], int]:
    """A tree's lines from `position`: at most 22, each `key=value` ending in a newline before `limit`, up to a blank
    line. NOTE: LightGBM scans each line for '=' and for its newline without a bound (tree.cpp `Tree::Tree`)."""
    blank = text.find(b"\n\n", position - 1, limit)
    end = limit if blank < 0 else blank + 1
    lines = text[position:end].split(b"\n")
    if blank < 0 or len(lines) > _TREE_LINES + 1:
        # No blank line in reach, or more lines than LightGBM reads: read them one by one, as it does.
        lines = lines[:_TREE_LINES] if len(lines) > _TREE_LINES else []
        if not lines:
            raise InvalidTreesError("it ends without the blank line that closes a tree")
        end = position + sum(len(line) + 1 for line in lines)
        if end > limit:
            raise InvalidTreesError("its last line has no newline before the next tree")
    else:
        lines.pop()  # the empty piece after the last newline
    tree: dict[str, bytes] = {}
    for line in lines:
        key, equals, value = line.partition(b"=")
        if not equals:
            raise InvalidTreesError(f"line {key[:40]!r} is not key=value")
        tree[key.decode(errors="replace")] = value
    return tree, end


def _check_tree(tree: Mapping[str, bytes], features: int) -> None:
    leaves = _int(tree, "num_leaves", low=1)
    categorical_splits = _int(tree, "num_cat", low=0)
    _count(tree, "leaf_value", leaves)
    for key in ("leaf_weight", "leaf_count"):
        if key in tree:
            _count(tree, key, leaves)
    linear = "is_linear" in tree and _int(tree, "is_linear") != 0
    if linear:
        _check_linear_leaves(tree, leaves, features)
    if leaves == 1:
        return
    internal = leaves - 1
    left = _ints(tree.get("left_child"), "left_child", count=internal)
    right = _ints(tree.get("right_child"), "right_child", count=internal)
    split_feature = _ints(tree.get("split_feature"), "split_feature", count=internal)
    _count(tree, "threshold", internal)
    decision = (
        _ints(tree["decision_type"], "decision_type", count=internal, low=-128, high=127)
        if "decision_type" in tree
        else [0] * internal
    )
    for key in ("split_gain", "internal_value", "internal_weight", "internal_count"):
        if key in tree:
            _count(tree, key, internal)
    _check_structure(left, right, leaves)
    for node, feature in enumerate(split_feature):
        if not 0 <= feature < features:
            raise InvalidTreesError(f"node {node} splits on feature {feature}, outside the model's {features} features")
    categorical = [node for node, kind in enumerate(decision) if kind & 1]
    if categorical:
        _check_categorical(tree, categorical, _floats(tree, "threshold", internal), categorical_splits)


def _check_structure(left: list[int], right: list[int], leaves: int) -> None:
    """Every internal node and every leaf reached exactly once from the root (node 0): a tree, no cycle."""
    internal = leaves - 1
    node_seen = bytearray(internal)
    leaf_seen = bytearray(leaves)
    node_seen[0] = 1
    stack = [0]
    while stack:
        node = stack.pop()
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= internal or node_seen[child]:
                    _bad_child(node, child, internal, leaves, "node")
                node_seen[child] = 1
                stack.append(child)
            else:
                if ~child >= leaves or leaf_seen[~child]:
                    _bad_child(node, ~child, internal, leaves, "leaf")
                leaf_seen[~child] = 1
    if node_seen.count(1) != internal or leaf_seen.count(1) != leaves:
        raise InvalidTreesError(
            f"from its root {node_seen.count(1)} of {internal} internal nodes and {leaf_seen.count(1)} of {leaves} "
            "leaves are reached"
        )


def _bad_child(node: int, child: int, internal: int, leaves: int, kind: str) -> None:
    limit = internal if kind == "node" else leaves
    if child >= limit:
        raise InvalidTreesError(f"node {node} has child {kind} {child}, outside the tree's {limit} {kind}s")
    raise InvalidTreesError(f"{kind} {child} is reached twice (again from node {node}): a cycle or shared branch")


def _check_categorical(
    tree: Mapping[str, bytes], nodes: list[int], thresholds: list[float], categorical_splits: int
) -> None:
    if categorical_splits < 1:
        raise InvalidTreesError(f"node {nodes[0]} is a categorical split but num_cat is {categorical_splits}")
    boundaries = _ints(tree.get("cat_boundaries"), "cat_boundaries", count=categorical_splits + 1, low=0)
    words = _ints(tree.get("cat_threshold"), "cat_threshold", low=0, high=_UINT32 - 1)
    if boundaries[0] != 0 or boundaries[-1] != len(words):
        raise InvalidTreesError(
            f"cat_boundaries run from {boundaries[0]} to {boundaries[-1]}, not from 0 to the {len(words)} words of "
            "cat_threshold"
        )
    if any(later < earlier for earlier, later in itertools.pairwise(boundaries)):
        raise InvalidTreesError("cat_boundaries decrease")
    for node in nodes:
        threshold = thresholds[node]
        if not (threshold == int(threshold) and 0 <= threshold < categorical_splits):
            raise InvalidTreesError(
                f"categorical node {node} has threshold {threshold:g}, not the index of one of the tree's "
                f"{categorical_splits} category sets (cat_boundaries)"
            )


def _check_linear_leaves(tree: Mapping[str, bytes], leaves: int, features: int) -> None:
    if "leaf_const" in tree:
        _count(tree, "leaf_const", leaves)
    if "num_features" not in tree:
        return
    counts = _ints(tree["num_features"], "num_features", count=leaves, low=0)
    total = sum(counts)
    # NOTE: LightGBM writes these two with a space after each leaf's list (even an empty one) and reads them
    # skipping blanks.
    if "leaf_features" in tree:
        for feature in _ints(b" ".join(tree["leaf_features"].split()), "leaf_features", count=total):
            if not 0 <= feature < features:
                raise InvalidTreesError(
                    f"a linear leaf uses feature {feature}, outside the model's {features} features"
                )
    if "leaf_coeff" in tree and len(tree["leaf_coeff"].split()) != total:
        raise InvalidTreesError(f"leaf_coeff holds {len(tree['leaf_coeff'].split())} numbers, not {total}")


def _int(values: Mapping[str, bytes], key: str, *, low: int | None = None) -> int:
    if key not in values:
        raise InvalidTreesError(f"it has no {key}")
    (number,) = _ints(values[key], key, count=1, low=low)
    return number


def _ints(
    value: bytes | None, key: str, *, count: int | None = None, low: int | None = None, high: int = 2**31 - 1
) -> list[int]:
    if value is None:
        raise InvalidTreesError(f"it has no {key}")
    try:
        numbers = list(map(int, value.split(b" "))) if value else []
    except ValueError:
        raise InvalidTreesError(f"{key} holds something other than integers") from None
    if count is not None and len(numbers) != count:
        raise InvalidTreesError(f"{key} holds {len(numbers)} numbers, not {count}")
    if numbers and (min(numbers) < (-(2**31) if low is None else low) or max(numbers) > high):
        raise InvalidTreesError(f"{key} holds {min(numbers)}..{max(numbers)}, outside {low}..{high}")
    return numbers


def _count(values: Mapping[str, bytes], key: str, count: int) -> None:
    if key not in values:
        raise InvalidTreesError(f"it has no {key}")
    found = len(values[key].split(b" "))
    if found != count:
        raise InvalidTreesError(f"{key} holds {found} numbers, not {count}")


def _floats(values: Mapping[str, bytes], key: str, count: int) -> list[float]:
    if key not in values:
        raise InvalidTreesError(f"it has no {key}")
    try:
        numbers = [float(token) for token in values[key].split(b" ")]
    except ValueError:
        raise InvalidTreesError(f"{key} holds something other than numbers") from None
    if len(numbers) != count:
        raise InvalidTreesError(f"{key} holds {len(numbers)} numbers, not {count}")
    return numbers
