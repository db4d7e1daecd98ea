"""Serialized estimators load only through the service's own trust rules, never the list a model carries."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.models import infer_signature
from sklearn.compose import make_column_transformer
from sklearn.feature_selection import SelectKBest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from fraud_inference.demo import make_transactions
from fraud_inference.models.artifact import UnservableModelError
from fraud_inference.models.reading import read_artifact
from fraud_inference.models.scoring import load_scorer
from fraud_inference.models.trust import ModelTrust
from fraud_inference.registry import ModelRef
from tests.conftest import use_registry

# The demo features never miss values, so MLflow's hint about integer columns is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column:UserWarning")

REF = ModelRef(key="sklearn", name="fraud-sklearn", version="1", selected_by="test", run_id=None, threshold=0.5)


@pytest.fixture(scope="module")
def demo_sklearn_dir(demo_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.artifacts import download_artifacts

    use_registry(demo_registry)
    destination = tmp_path_factory.mktemp("sklearn-model")
    return Path(download_artifacts(artifact_uri="models:/fraud-sklearn@champion", dst_path=str(destination)))


@pytest.fixture(scope="module")
def small_data() -> tuple[pd.DataFrame, np.ndarray]:
    features, labels = make_transactions(400, seed=3)
    return features, np.asarray(labels)


def save(model: object, path: Path, features: pd.DataFrame, fmt: str, trusted: list[str] | None = None) -> Path:
    import mlflow.sklearn

    mlflow.sklearn.save_model(
        model, str(path), serialization_format=fmt, skops_trusted_types=trusted, signature=infer_signature(features),
        pip_requirements=["scikit-learn"],
    )  # fmt: skip
    return path


def test_the_demo_sklearn_model_is_skops_and_scores_as_mlflow_loads_it(
    demo_sklearn_dir: Path, transactions: pd.DataFrame
) -> None:
    import mlflow.sklearn

    flavor = yaml.safe_load((demo_sklearn_dir / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops"
    artifact = read_artifact(REF, demo_sklearn_dir)
    assert artifact.model_file.format == "skops"
    assert artifact.model_file.skops_types == ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
    rows = transactions[[f.name for f in artifact.features]].to_numpy(dtype=np.float64)
    expected = mlflow.sklearn.load_model(str(demo_sklearn_dir)).predict_proba(rows)[:, 1]
    np.testing.assert_array_equal(load_scorer(artifact).fraud_probability(rows), expected)


def test_a_pickled_model_is_refused_unless_sklearn_pickle_allows_it(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    features, labels = small_data
    path = save(DecisionTreeClassifier(max_depth=3).fit(features, labels), tmp_path / "model", features, "pickle")
    with pytest.raises(UnservableModelError, match=r"saved as pickle.*SKLEARN_PICKLE=allow"):
        read_artifact(REF, path)
    artifact = read_artifact(REF, path, trust=ModelTrust(pickle="allow"))
    rows = features.to_numpy(dtype=np.float64)
    assert load_scorer(artifact).fraud_probability(rows).shape == (len(rows),)


def test_a_skops_model_with_a_type_the_service_does_not_trust_is_refused_even_if_its_mlmodel_trusts_it(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    features, _labels = small_data
    model = make_pipeline(FunctionTransformer(math.fabs), DecisionTreeClassifier())  # loaded, never fitted or run
    path = save(model, tmp_path / "model", features, "skops", trusted=["math.fabs"])
    with pytest.raises(UnservableModelError, match=r"does not trust: math\.fabs.*SKOPS_TRUSTED_TYPES"):
        read_artifact(REF, path)
    artifact = read_artifact(REF, path, trust=ModelTrust(extra_types=("math.fabs",)))
    assert artifact.model_file.format == "skops"
    assert artifact.model_file.skops_types == ("math.fabs",)


def test_scikit_learn_trees_and_imputers_are_trusted_by_default(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer

    from fraud_inference.models.scoring import load_model

    features, labels = small_data
    model = make_pipeline(SimpleImputer(), RandomForestClassifier(n_estimators=5, random_state=0)).fit(features, labels)
    path = save(model, tmp_path / "model", features, "skops", trusted=["sklearn.tree._tree.Tree", "numpy.dtype"])
    artifact = read_artifact(REF, path)
    assert {"sklearn.tree._tree.Tree", "numpy.dtype"} <= set(artifact.model_file.skops_types)
    rows = features.to_numpy(dtype=np.float64)
    expected = model.predict_proba(features)[:, 1]
    body = features.to_json(orient="records").encode()
    np.testing.assert_allclose(load_model(artifact).score(body), expected, rtol=0, atol=1e-12)
    assert rows.shape[0] == len(expected)


@pytest.mark.parametrize(
    ("type_name", "trusted"),
    [
        ("sklearn.tree._tree.Tree", True),
        ("numpy.dtype", True),
        ("numpy.memmap", True),  # as the class of an object skops builds without calling it; see the next test
        ("numpy.log1p", True),  # a ufunc: arithmetic only
        ("lightgbm.basic.Booster", True),
        ("numpy.save", False),  # a function a FunctionTransformer would call: trust it by name, or not at all
        ("numpy.testing._private.utils.runstring", False),
        ("builtins.eval", False),
        ("math.fabs", False),
        ("sklearn.utils.validation.check_array", True),  # what HistGradientBoosting on categories holds
        ("functools.partial", True),  # around a function only: see the partial tests below
        ("sklearn.utils.validation.column_or_1d", False),
    ],
)
def test_default_trust_is_classes_of_the_model_libraries_and_ufuncs(type_name: str, trusted: bool) -> None:
    assert ModelTrust().trusts(type_name) is trusted


@pytest.mark.parametrize(
    ("type_name", "trusted"),
    [
        ("numpy.memmap", False),  # trusted as the class of an object; called, it opens and truncates a file
        ("lightgbm.basic.Booster", False),  # called with model_file=, it would parse any file natively
        ("sklearn.linear_model._logistic.LogisticRegression", False),
        ("numpy.log1p", True),
        ("sklearn.utils.validation.check_array", True),
        ("collections.OrderedDict", True),  # LGBMClassifier's file holds the class
    ],
)
def test_what_a_model_may_call_by_default_is_a_short_list_and_numpy_ufuncs(type_name: str, trusted: bool) -> None:
    assert ModelTrust().trusts(type_name, called=True) is trusted
    assert ModelTrust(extra_types=(type_name,)).trusts(type_name, called=True)


def test_a_function_from_a_trusted_package_still_needs_skops_trusted_types(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    features, _labels = small_data
    model = make_pipeline(FunctionTransformer(np.save), DecisionTreeClassifier())  # loaded, never fitted or run
    path = save(model, tmp_path / "model", features, "skops", trusted=["numpy.save"])
    with pytest.raises(UnservableModelError, match=r"does not trust: numpy\.save"):
        read_artifact(REF, path)


class _WritesMarker:
    """What a hostile pickle does: unpickling it runs code (here, it creates a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def disguised_pickle(directory: Path, marker: Path, features: pd.DataFrame) -> Path:
    """A LightGBM model whose MLmodel names an LGBMClassifier in a .pkl and no serialization_format (older MLflow).

    MLflow's own loader unpickles it with cloudpickle: only a LightGBM Booster is a native file.
    """
    import pickle

    import lightgbm
    from mlflow.models import Model

    directory.mkdir(parents=True)
    (directory / "model.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
    model = Model(signature=infer_signature(features))
    model.add_flavor(
        "lightgbm", lgb_version=lightgbm.__version__, data="model.pkl", model_class="lightgbm.sklearn.LGBMClassifier"
    )
    model.save(str(directory / "MLmodel"))
    return directory


def test_a_disguised_pickle_is_refused_without_running_it(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    marker = tmp_path / "pickle-ran"
    path = disguised_pickle(tmp_path / "model", marker, small_data[0])
    with pytest.raises(UnservableModelError, match=r"saved as cloudpickle.*SKLEARN_PICKLE=allow"):
        read_artifact(REF, path)
    assert not marker.exists()


@pytest.mark.slow
def test_check_refuses_a_disguised_pickle_without_running_it(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    from mlflow import MlflowClient

    from tests.conftest import run_cli

    marker = tmp_path / "pickle-ran"
    path = disguised_pickle(tmp_path / "model", marker, small_data[0])
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.create_registered_model("disguised")
    version = client.create_model_version("disguised", source=path.as_uri())
    client.set_registered_model_alias("disguised", "champion", version.version)
    result = run_cli(["check"], {"MLFLOW_TRACKING_URI": registry, "MODELS": "fraud=disguised"}, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "saved as cloudpickle" in result.stdout
    assert not marker.exists()


@pytest.mark.parametrize("categorical_features", ["from_dtype", [7, 8]], ids=["from-dtype", "by-column-index"])
def test_hist_gradient_boosting_on_categories_serves_by_default_exactly_as_mlflow_loads_it(
    tmp_path: Path, categorical_features: str | list[int]
) -> None:
    import mlflow.sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    from fraud_inference.models.scoring import load_model
    from tests.real_models import categorized, make_fraud_table, request_rows, untrusted

    table, labels = make_fraud_table(400, seed=5)
    training = categorized(table)  # merchant_category and country (columns 7 and 8) as pandas categories
    model = HistGradientBoostingClassifier(categorical_features=categorical_features, max_iter=20, random_state=0)
    model.fit(training, labels)
    assert {"functools.partial", "sklearn.utils.validation.check_array"} <= set(untrusted(model))
    mlflow.sklearn.save_model(
        model, str(tmp_path / "model"), skops_trusted_types=untrusted(model), signature=infer_signature(table),
        pip_requirements=["scikit-learn"],
    )  # fmt: skip
    artifact = read_artifact(REF, tmp_path / "model")  # the service's default trust, not the MLmodel's list
    served = load_model(artifact)
    fresh, _labels = make_fraud_table(60, seed=8)
    rows = request_rows(fresh)  # nulls, left-out optional keys, unseen categories
    frame = pd.DataFrame(rows, columns=[feature.name for feature in artifact.features])
    expected = mlflow.sklearn.load_model(str(tmp_path / "model")).predict_proba(frame)[:, 1]
    got = served.score(pd.io.json.ujson_dumps(rows).encode())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def crafted_partial_model(tmp_path: Path, func: object, *args: object) -> Path:
    """CRAFTED for this test: a real skops file, written by skops through mlflow.sklearn.save_model, of a pipeline
    whose FunctionTransformer calls `functools.partial(func, *args)`, the shape HistGradientBoosting's preprocessor
    has, with the MLmodel trusting every type it holds. Loaded or refused here, never fitted or run."""
    import functools

    from tests.real_models import untrusted

    features, _labels = make_transactions(50, seed=3)
    model = make_pipeline(FunctionTransformer(functools.partial(func, *args)), DecisionTreeClassifier())
    return save(model, tmp_path / "model", features, "skops", trusted=untrusted(model))


def test_a_partial_wrapping_an_untrusted_function_is_refused(tmp_path: Path) -> None:
    import os

    marker = tmp_path / "partial-ran"
    path = crafted_partial_model(tmp_path, os.system, f"touch {marker}")
    with pytest.raises(UnservableModelError, match=r"does not trust: posix\.system"):
        read_artifact(REF, path)
    assert not marker.exists()


def test_a_partial_wrapping_a_class_trusted_by_default_is_refused(tmp_path: Path) -> None:
    # numpy.memmap is a numpy class (trusted by default), but called through a partial with these positional
    # arguments it would open and truncate a path: trusting a partial by default covers only a wrapped function.
    path = crafted_partial_model(tmp_path, np.memmap, str(tmp_path / "truncated"), np.uint8, "w+")
    with pytest.raises(UnservableModelError, match=r"functools\.partial around numpy\.memmap"):
        read_artifact(REF, path)
    with pytest.raises(UnservableModelError, match=r"does not trust: numpy\.memmap \(.*called"):
        read_artifact(REF, path, trust=ModelTrust(extra_types=("functools.partial",)))  # the class is called too
    listed = read_artifact(REF, path, trust=ModelTrust(extra_types=("functools.partial", "numpy.memmap")))
    assert "functools.partial" in listed.model_file.skops_types


def crafted_writer_model(tmp_path: Path, features: pd.DataFrame, labels: np.ndarray, writer: object) -> Path:
    """CRAFTED for this test: a real skops file, written by skops through mlflow.sklearn.save_model, of a fitted
    pipeline whose FunctionTransformers turn the rows into a string (`numpy.str_`, a dtype skops trusts itself)
    and hand it to `writer` (a class, stored as an attribute) with `kw_args` that make it create that file in the
    working directory. The MLmodel trusts every type the file holds."""
    from tests.real_models import untrusted

    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(features, labels)
    model = make_pipeline(
        FunctionTransformer(np.str_), FunctionTransformer(writer, kw_args={"mode": "w+", "shape": 1}), tree
    )
    return save(model, tmp_path / "model", features, "skops", trusted=untrusted(model))


def test_a_class_trusted_as_data_that_the_model_would_call_on_the_rows_is_refused_and_writes_nothing(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraud_inference.models.scoring import load_model

    features, labels = small_data
    path = crafted_writer_model(tmp_path, features, labels, np.memmap)
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    with pytest.raises(
        UnservableModelError, match=r"does not trust: numpy\.memmap \(.*called.*\).*SKOPS_TRUSTED_TYPES"
    ):
        read_artifact(REF, path)
    assert list(working.iterdir()) == []
    # What the refusal prevents: trusted by name, the same version creates a file when it scores a row.
    listed = read_artifact(REF, path, trust=ModelTrust(extra_types=("numpy.memmap",)))
    with pytest.raises(ValueError, match="Expected 2D array"):  # the tree gets the one-byte memmap, made by then
        load_model(listed).score(features.head(1).to_json(orient="records").encode())
    assert len(list(working.iterdir())) == 1


@pytest.mark.parametrize(
    "model",
    [
        FunctionTransformer(np.log1p, inverse_func=np.memmap),
        make_column_transformer(("passthrough", np.memmap)),  # a callable column selector
        SelectKBest(score_func=np.memmap),
        make_pipeline(FunctionTransformer(np.log1p), DecisionTreeClassifier(class_weight=np.memmap)),
    ],
    ids=["inverse-func", "column-selector", "score-func", "any-attribute"],
)
def test_a_class_trusted_as_data_is_refused_wherever_an_estimator_stores_it_as_a_value(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray], model: object
) -> None:
    from tests.real_models import untrusted

    path = save(model, tmp_path / "model", small_data[0], "skops", trusted=untrusted(model))
    with pytest.raises(UnservableModelError, match=r"does not trust: numpy\.memmap \(.*called"):
        read_artifact(REF, path)


class _CalledWhileLoading:
    """Saved by skops as a ConstructorFromReduceNode: skops calls the class with these arguments to load it."""

    def __init__(self, *arguments: object) -> None:
        self.arguments = arguments

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), self.arguments)


def test_a_class_trusted_as_data_that_skops_would_call_while_loading_is_refused_and_writes_nothing(
    tmp_path: Path, small_data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    """CRAFTED: skops writes the file, then its schema.json renames the class to `numpy.memmap` (what an attacker
    edits by hand): loading it would call `numpy.memmap(target, "uint8", "w+", 0, 1)`, creating `target`."""
    import zipfile

    from fraud_inference.models.trust import load_serialized

    target = tmp_path / "truncated"
    model = make_pipeline(FunctionTransformer(kw_args={"x": _CalledWhileLoading(str(target), "uint8", "w+", 0, 1)}))
    path = save(model, tmp_path / "model", small_data[0], "skops", trusted=[f"{__name__}._CalledWhileLoading"])
    file = path / "model.skops"
    with zipfile.ZipFile(file) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["schema.json"] = (
        members["schema.json"].decode().replace(f'"{__name__}"', '"numpy"').replace('"_CalledWhileLoading"', '"memmap"')
    ).encode()
    with zipfile.ZipFile(file, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(UnservableModelError, match=r"does not trust: numpy\.memmap \(.*called"):
        read_artifact(REF, path)
    assert not target.exists()
    listed = read_artifact(REF, path, trust=ModelTrust(extra_types=("numpy.memmap",)))
    load_serialized(file, "skops", listed.model_file.skops_types)  # what the refusal prevents
    assert target.exists()


def test_a_function_transformer_with_a_numpy_ufunc_serves_by_default_exactly_as_mlflow_loads_it(
    tmp_path: Path,
) -> None:
    import mlflow.sklearn
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression

    from fraud_inference.models.scoring import load_model
    from tests.real_models import NUMERIC, make_fraud_table, request_rows, untrusted

    table, labels = make_fraud_table(400, seed=5)
    numeric = table[NUMERIC]
    model = make_pipeline(SimpleImputer(), FunctionTransformer(np.log1p), LogisticRegression(max_iter=500))
    model.fit(numeric, labels)
    mlflow.sklearn.save_model(
        model, str(tmp_path / "model"), skops_trusted_types=untrusted(model), signature=infer_signature(numeric),
        pip_requirements=["scikit-learn"],
    )  # fmt: skip
    artifact = read_artifact(REF, tmp_path / "model")  # the service's default trust
    fresh, _labels = make_fraud_table(60, seed=8)
    rows = [{name: value for name, value in row.items() if name in NUMERIC} for row in request_rows(fresh)]
    frame = pd.DataFrame(rows, columns=NUMERIC).astype(numeric.dtypes.to_dict())
    expected = mlflow.sklearn.load_model(str(tmp_path / "model")).predict_proba(frame)[:, 1]
    got = load_model(artifact).score(pd.io.json.ujson_dumps(rows).encode())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
