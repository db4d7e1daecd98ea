"""Crafted LightGBM and XGBoost model files are refused before any native parser reads them; real ones pass.

Each crafted file is a real registered model's file with one number changed, as an attacker with registry write
access would change it. The refusal is checked where a version is fetched (pure Python) and where a worker loads
it: `load_model` runs in a fresh interpreter, so a file that crashed the native library would kill that process,
not pytest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from fraud_inference.models.artifact import ModelArtifact, UnservableModelError
from fraud_inference.models.flavors.lightgbm_text import check_model_text
from fraud_inference.models.flavors.xgboost_file import check_model_file
from fraud_inference.models.reading import fetch_artifact, read_artifact
from fraud_inference.models.trust import ModelTrust
from fraud_inference.registry import ModelRef, Registry
from tests.real_models import categorized, make_fraud_table

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def registry(real_models: tuple[str, dict[str, str]]) -> Registry:
    return Registry(real_models[0], alias="champion", stages=(), timeout_s=10)


def fetched(registry: Registry, key: str, downloads: Path) -> ModelArtifact:
    ref = registry.resolve(key, f"real-{key}")
    return fetch_artifact(registry, ref, downloads, dependency_policy="compatible", trust=ModelTrust())


def _tree_line(text: str, tree: int, key: str, change: Callable[[list[str]], None]) -> str:
    """`text` with the `key=` line of tree `tree` changed in place (its numbers as strings)."""
    start = text.index(f"Tree={tree}\n")
    line = re.compile(rf"^{key}=(.*)$", re.MULTILINE).search(text, start)
    assert line is not None
    numbers = line.group(1).split(" ")
    change(numbers)
    return text[: line.start(1)] + " ".join(numbers) + text[line.end(1) :]


def _categorical_tree(text: str) -> int:
    return int(re.search(r"Tree=(\d+)\nnum_leaves=\d+\nnum_cat=[1-9]", text).group(1))  # type: ignore[union-attr]


def _set(index: int, value: str) -> Callable[[list[str]], None]:
    def change(numbers: list[str]) -> None:
        numbers[index] = value

    return change


def _first_categorical_threshold(text: str, tree: int) -> Callable[[list[str]], None]:
    """Make the tree's first categorical node point at a category set far past cat_boundaries."""
    start = text.index(f"Tree={tree}\n")
    decision = re.compile(r"^decision_type=(.*)$", re.MULTILINE).search(text, start)
    assert decision is not None
    node = next(i for i, kind in enumerate(decision.group(1).split(" ")) if int(kind) & 1)
    return _set(node, "40000")


LIGHTGBM_CRAFTS: dict[str, tuple[str, Callable[[str], str], str]] = {
    "child out of range": (
        "lgb-booster", lambda text: _tree_line(text, 0, "left_child", _set(0, "97")), "outside the tree's"
    ),
    "cycle": ("lgb-booster", lambda text: _tree_line(text, 0, "right_child", _set(1, "0")), "reached twice"),
    "bad feature index": (
        "lgb-booster", lambda text: _tree_line(text, 0, "split_feature", _set(0, "4000")), "splits on feature 4000"
    ),
    "bad categorical threshold": (
        "lgb-booster-categorical",
        lambda text: _tree_line(
            text, _categorical_tree(text), "threshold", _first_categorical_threshold(text, _categorical_tree(text))
        ),
        "not the index of one of the tree's",
    ),
}  # fmt: skip


def _xgboost_change(key: str, index: int, value: int) -> Callable[[dict[str, object]], None]:
    def change(model: dict[str, object]) -> None:
        tree = model["learner"]["gradient_booster"]["model"]["trees"][0]  # type: ignore[index]
        tree[key][index] = value

    return change


XGBOOST_CRAFTS: dict[str, tuple[Callable[[dict[str, object]], None], str]] = {
    "child out of range": (_xgboost_change("left_children", 0, 4000), "outside the tree's"),
    "cycle": (_xgboost_change("right_children", 0, 0), "outside the tree's"),
    "bad split index": (_xgboost_change("split_indices", 0, 4000), "splits on feature 4000"),
    "parent out of range": (_xgboost_change("parents", 1, 90000), "parent is 90000"),
}


def crafted_lightgbm(artifact: ModelArtifact, destination: Path, craft: Callable[[str], str]) -> Path:
    """The version's model file with one number changed, and without `tree_sizes` (a crafter would fix them or
    drop them; LightGBM then reads tree after tree)."""
    shutil.copytree(artifact.path, destination)
    model = destination / artifact.model_file.file
    text = model.read_text()
    if "num_cat=0\n" in text and "lgb-booster-categorical" in artifact.ref.key:
        text = categorical_splits_model()  # the registered one is too small to have made a categorical split
    model.write_text(re.sub(r"^tree_sizes=.*\n", "", craft(text), flags=re.MULTILINE))
    return destination


def categorical_splits_model() -> str:
    """A real LightGBM Booster on the same columns as lgb-booster-categorical, trained to split on categories."""
    import lightgbm as lgb

    table, labels = make_fraud_table(2000, seed=3)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1,
         "verbose": -1, "num_threads": 1},
        lgb.Dataset(categorized(table), label=labels), num_boost_round=20,
    )  # fmt: skip
    text: str = booster.model_to_string()
    assert re.search(r"num_cat=[1-9]", text), "the model must split on a category"
    return text


def crafted_xgboost(artifact: ModelArtifact, destination: Path, craft: Callable[[dict[str, object]], None]) -> Path:
    """The version's model as XGBoost's own JSON (converted by XGBoost from the real file), one number changed."""
    import xgboost

    shutil.copytree(artifact.path, destination)
    original = destination / artifact.model_file.file
    model = json.loads(xgboost.Booster(model_file=str(original)).save_raw("json"))
    craft(model)
    original.unlink()
    (destination / "model.json").write_text(json.dumps(model))
    mlmodel = destination / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace(original.name, "model.json"))
    return destination


_LOAD_IN_A_PROCESS = """
import sys, msgspec
from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.scoring import load_model
artifact = msgspec.json.decode(sys.stdin.buffer.read(), type=ModelArtifact)
try:
    load_model(artifact, extra="ignore")  # loads, then scores a warm-up row, as a worker does
except Exception as error:
    print("refused:", error, flush=True)
else:
    print("loaded", flush=True)
"""


def load_in_a_process(artifact: ModelArtifact) -> subprocess.CompletedProcess[str]:
    """`load_model` as a worker runs it, in a fresh interpreter: a crash kills that process, not pytest."""
    return subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_PROCESS], input=msgspec.json.encode(artifact).decode(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def unchecked_artifact(artifact: ModelArtifact, model_dir: Path) -> ModelArtifact:
    """The crafted directory as a worker would be handed it (the fetch-time check bypassed, as if the file changed
    after it was fetched): the worker's own check must refuse it."""
    return msgspec.structs.replace(artifact, path=str(model_dir))


@pytest.mark.parametrize("craft", LIGHTGBM_CRAFTS)
def test_a_crafted_lightgbm_model_is_refused_before_lightgbm_reads_it(
    registry: Registry, tmp_path: Path, craft: str
) -> None:
    key, change, says = LIGHTGBM_CRAFTS[craft]
    artifact = fetched(registry, key, tmp_path / "downloads")
    model_dir = crafted_lightgbm(artifact, tmp_path / "crafted", change)
    with pytest.raises(UnservableModelError, match=says) as refused:
        read_artifact(artifact.ref, model_dir)
    assert "LightGBM model is not well-formed trees: tree" in str(refused.value)
    assert f"{artifact.ref.name} v{artifact.ref.version}" in str(refused.value)
    loaded = load_in_a_process(unchecked_artifact(artifact, model_dir))
    assert loaded.returncode == 0, f"the worker's load died ({loaded.returncode}): {loaded.stderr[-2000:]}"
    assert loaded.stdout.startswith("refused:"), loaded.stdout
    assert says in loaded.stdout


@pytest.mark.parametrize("craft", XGBOOST_CRAFTS)
def test_a_crafted_xgboost_model_is_refused_before_xgboost_reads_it(
    registry: Registry, tmp_path: Path, craft: str
) -> None:
    change, says = XGBOOST_CRAFTS[craft]
    artifact = fetched(registry, "xgb-numeric", tmp_path / "downloads")
    model_dir = crafted_xgboost(artifact, tmp_path / "crafted", change)
    with pytest.raises(UnservableModelError, match=says) as refused:
        read_artifact(artifact.ref, model_dir)
    assert "XGBoost model is not well-formed trees: tree 0" in str(refused.value)
    worker_artifact = msgspec.structs.replace(
        artifact, path=str(model_dir), model_file=msgspec.structs.replace(artifact.model_file, file="model.json")
    )
    loaded = load_in_a_process(worker_artifact)
    assert loaded.returncode == 0, f"the worker's load died ({loaded.returncode}): {loaded.stderr[-2000:]}"
    assert loaded.stdout.startswith("refused:"), loaded.stdout
    assert says in loaded.stdout


def crafted_pipeline(artifact: ModelArtifact, destination: Path, craft: Callable[[dict[str, object]], None]) -> Path:
    """The version's skops file with its XGBClassifier's booster (a file of the archive: XGBoost's serialised form,
    `{"Config", "Model"}`) written by XGBoost as JSON, one number of the model changed: what skops hands to
    `Booster.__setstate__`."""
    import io
    import zipfile

    import xgboost

    shutil.copytree(artifact.path, destination)
    path = destination / artifact.model_file.file
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    booster = next(name for name in members if name.endswith(".bin"))
    loaded = xgboost.Booster()
    loaded.__setstate__({"handle": bytearray(members[booster])})
    model = json.loads(loaded.save_raw("json"))
    craft(model)
    members[booster] = json.dumps({"Config": json.loads(loaded.save_config()), "Model": model}).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    path.write_bytes(buffer.getvalue())
    return destination


def test_a_crafted_xgboost_model_inside_a_pipeline_is_refused_before_xgboost_reads_it(
    registry: Registry, tmp_path: Path
) -> None:
    change, says = XGBOOST_CRAFTS["child out of range"]
    artifact = fetched(registry, "sklearn-xgb-pipeline", tmp_path / "downloads")
    model_dir = crafted_pipeline(artifact, tmp_path / "crafted", change)
    with pytest.raises(UnservableModelError, match=says) as refused:
        read_artifact(artifact.ref, model_dir)
    assert "XGBoost model is not well-formed trees: tree 0" in str(refused.value)
    loaded = load_in_a_process(unchecked_artifact(artifact, model_dir))
    assert loaded.returncode == 0, f"the worker's load died ({loaded.returncode}): {loaded.stderr[-2000:]}"
    assert loaded.stdout.startswith("refused:"), loaded.stdout
    assert says in loaded.stdout


TREE_SHAPES = ["xgb-classifier", "xgb-numeric", "xgb-booster", "xgb-booster-categorical", "xgb-early-stopped",
               "lgb-booster", "lgb-booster-categorical", "lgb-classifier"]  # fmt: skip


@pytest.mark.parametrize("key", TREE_SHAPES)
def test_every_real_tree_model_passes_the_check(registry: Registry, tmp_path: Path, key: str) -> None:
    """No false refusal: the file of every tree shape fraud teams register passes, with the signature's width."""
    artifact = fetched(registry, key, tmp_path / "downloads")
    content = (Path(artifact.path) / artifact.model_file.file).read_bytes()
    width = len(artifact.features)
    if artifact.flavor == "xgboost":
        assert check_model_file(content, features=width) > 0
    elif artifact.model_file.format == "native":
        assert check_model_text(content, features=width) > 0
    else:
        import io
        import zipfile

        from fraud_inference.models.flavors.lightgbm_text import check_skops_boosters

        schema = json.loads(zipfile.ZipFile(io.BytesIO(content)).read("schema.json"))
        assert check_skops_boosters(schema, features=width) == 1


def test_a_crafted_lightgbm_model_inside_a_scikit_learn_pipeline_is_refused_before_lightgbm_reads_it(
    tmp_path: Path,
) -> None:
    """A Pipeline ending in an LGBMClassifier, saved by MLflow's scikit-learn flavour with skops: its Booster's model
    text (in schema.json, which skops hands to LightGBM's parser) with a child index past the tree."""
    import io
    import zipfile

    import lightgbm as lgb
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.real_models import NUMERIC, untrusted

    table, labels = make_fraud_table(300, seed=11)
    numbers = table[NUMERIC].astype("float64")
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("model", lgb.LGBMClassifier(n_estimators=4, num_leaves=4, verbose=-1, n_jobs=1))]
    ).fit(numbers, labels)
    model_dir = tmp_path / "pipeline"
    mlflow.sklearn.save_model(
        pipeline, str(model_dir), serialization_format="skops", skops_trusted_types=untrusted(pipeline),
        signature=infer_signature(numbers), pip_requirements=["scikit-learn", "lightgbm"],
    )  # fmt: skip
    ref = ModelRef(
        key="pipeline", name="fraud-lgb-pipeline", version="1", selected_by="test", run_id=None, threshold=0.5
    )
    trust = ModelTrust(extra_types=tuple(untrusted(pipeline)))
    read_artifact(ref, model_dir, dependency_policy="off", trust=trust)  # the real file passes the check

    path = model_dir / "model.skops"
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(members["schema.json"])
    handles = list(_lightgbm_handles(schema))
    assert len(handles) == 1, "the pipeline holds one Booster"
    handles[0]["content"] = json.dumps(_tree_line(json.loads(handles[0]["content"]), 0, "left_child", _set(0, "97")))
    members["schema.json"] = json.dumps(schema).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UnservableModelError, match="outside the tree's") as refused:
        read_artifact(ref, model_dir, dependency_policy="off", trust=trust)
    assert "LightGBM model is not well-formed trees" in str(refused.value)


def _lightgbm_handles(node: object) -> Iterator[dict[str, object]]:
    """The JSON node holding each LightGBM Booster's model text in a skops schema (`lightgbm_text` reads the same)."""
    if isinstance(node, dict):
        if node.get("__class__") == "Booster" and str(node.get("__module__", "")).startswith("lightgbm"):
            state = node["content"]["content"]
            yield state.get("_handle", state.get("handle"))
            return
        for value in node.values():
            yield from _lightgbm_handles(value)
    elif isinstance(node, list):
        for value in node:
            yield from _lightgbm_handles(value)
