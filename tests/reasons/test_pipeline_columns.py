"""The column mapping of scikit-learn pipelines ending in XGBoost (`models/flavors/sklearn_explain.py`), on real
fitted pipelines: each booster column traced to the input column it came from, or the step that prevents it named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler

from fraud_inference.models.flavors.sklearn_explain import PipelineExplainer, column_sources, pipeline_explainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    generator = np.random.default_rng(4)
    rows = 300
    frame = pd.DataFrame({
        "amount": generator.lognormal(3, 1, rows),
        "empty": np.full(rows, np.nan),
        "count": generator.integers(0, 20, rows).astype(float),
        "country": generator.choice(["DE", "FR", "GB", "US", "NG", "ZZ"], rows, p=[.3, .3, .2, .15, .04, .01]),
        "merchant": generator.choice(["grocery", "travel", "fuel"], rows),
    })  # fmt: skip
    labels = ((frame["amount"] > 30) ^ (frame["country"] == "NG")).to_numpy(dtype=int)
    return frame, labels


def fitted(steps: list[tuple[str, Any]], table: tuple[pd.DataFrame, Any]) -> Pipeline:
    frame, labels = table
    return Pipeline([*steps, ("classifier", xgb.XGBClassifier(n_estimators=6, max_depth=3, n_jobs=1))]).fit(
        frame, labels
    )


def test_one_hot_columns_with_drop_and_infrequent_categories_trace_to_their_string_column(
    table: tuple[pd.DataFrame, Any],
) -> None:
    encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, drop="first")
    pipeline = fitted([("columns", ColumnTransformer([
        ("scaled", StandardScaler(), ["amount", "count"]),
        ("categories", encoder, ["country", "merchant"]),
    ]))], table)  # fmt: skip
    sources = column_sources(pipeline[0], 5, "columns")
    names = pipeline[0].get_feature_names_out()
    frame = table[0]
    assert len(sources) == len(names)
    for source, name in zip(sources, names, strict=True):  # "categories__country_infrequent_sklearn" -> country
        assert name.split("__", 1)[1].startswith(frame.columns[source])
    explainer = pipeline_explainer(pipeline, 5, 1)
    assert isinstance(explainer, PipelineExplainer)
    contributions = explainer.contributions(frame.head(50))
    booster = pipeline[-1].get_booster()
    transformed = xgb.DMatrix(pipeline[:-1].transform(frame.head(50)))
    own = booster.predict(transformed, pred_contribs=True).astype(np.float64)
    assert contributions.shape == (50, 6)
    assert contributions[:, 1].tolist() == [0.0] * 50  # "empty" is dropped by the ColumnTransformer: no part
    np.testing.assert_allclose(contributions.sum(axis=1), own.sum(axis=1), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(contributions[:, -1], own[:, -1])  # the bias, unchanged


def test_an_imputer_that_drops_an_empty_column_is_traced_by_its_own_output_names(
    table: tuple[pd.DataFrame, Any],
) -> None:
    pipeline = fitted([("columns", ColumnTransformer([("numbers", SimpleImputer(), ["amount", "empty", "count"])]))],
                      table)  # fmt: skip
    assert "gives 2 columns for 3 inputs" in str(pipeline_explainer(pipeline, 5, 1))


@pytest.mark.parametrize(
    ("step", "named"),
    [
        (make_pipeline(SimpleImputer(), PCA(n_components=2)), "columns/numbers/pca' (PCA)"),
        (make_pipeline(SimpleImputer(), PolynomialFeatures()), "(PolynomialFeatures)"),
        (SimpleImputer(add_indicator=True), "columns/numbers' (SimpleImputer with add_indicator=True)"),
    ],
)  # fmt: skip
def test_a_step_that_mixes_or_adds_columns_is_named_in_the_refusal(
    table: tuple[pd.DataFrame, Any], step: Any, named: str
) -> None:
    pipeline = fitted([("columns", ColumnTransformer([("numbers", step, ["amount", "count"])]))], table)
    refusal = pipeline_explainer(pipeline, 5, 1)
    assert isinstance(refusal, str)
    assert named in refusal


def test_a_fitted_remainder_is_refused_and_a_passthrough_one_is_traced(table: tuple[pd.DataFrame, Any]) -> None:
    categories = ("categories", OneHotEncoder(handle_unknown="ignore"), ["country", "merchant"])
    fitted_remainder = fitted([("columns", ColumnTransformer([categories], remainder=StandardScaler()))], table)
    assert "fitted remainder (StandardScaler)" in str(pipeline_explainer(fitted_remainder, 5, 1))
    passthrough = fitted([("columns", ColumnTransformer([categories], remainder="passthrough"))], table)
    sources = column_sources(passthrough[0], 5, "columns")
    assert sources[-3:] == [0, 1, 2]  # the remainder: amount, empty, count, after the one-hot columns


def test_a_last_step_other_than_xgboost_is_refused(table: tuple[pd.DataFrame, Any]) -> None:
    from sklearn.linear_model import LogisticRegression

    frame, labels = table
    pipeline = Pipeline([
        ("columns", ColumnTransformer([("numbers", SimpleImputer(), ["amount", "count"])])),
        ("classifier", LogisticRegression()),
    ]).fit(frame, labels)  # fmt: skip
    assert "(LogisticRegression) has no native contributions" in str(pipeline_explainer(pipeline, 5, 1))
