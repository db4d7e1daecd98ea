"""Models of every shape a fraud team registers, trained on a small realistic table and logged through MLflow.

The table has amounts, counts, flags, two string categoricals, and ~30% of rows with a missing value (no device
history, no geolocation, unknown country). Each model is logged with its flavour's `log_model`, `infer_signature`
and explicit `pip_requirements` (MLflow would otherwise spend ~8 s inferring them).
"""

from __future__ import annotations

import importlib.metadata
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CATEGORICAL",
    "NUMERIC",
    "OPTIONAL",
    "REASON_CODES",
    "SHAPES",
    "categorized",
    "largest_difference",
    "make_fraud_table",
    "register_real_models",
    "request_rows",
]

NUMERIC = ["amount", "txn_count_24h", "account_age_days", "device_age_days", "distance_km", "is_foreign", "is_online"]
CATEGORICAL = ["merchant_category", "country"]
OPTIONAL = ["device_age_days", "distance_km", "country"]
"""The columns with missing values in training: `infer_signature` marks them `required: false`."""
MERCHANTS = ["grocery", "electronics", "travel", "gaming", "fuel"]
COUNTRIES = ["DE", "FR", "GB", "US", "NG"]

REASON_CODES = {
    "amount": {"code": "A01", "text": "Transaction amount unusual for the card"},
    "txn_count_24h": {"code": "V02", "text": "Many transactions in the last 24 hours"},
}
"""The `reason_codes` version tag of xgb-numeric: a team's codes for two of its features (the others have none)."""

SHAPES: dict[str, str] = {
    "xgb-classifier": "XGBClassifier(enable_categorical=True) on pandas category columns",
    "xgb-numeric": "XGBClassifier on numeric columns with NaN (the fast path), tag reason_codes=REASON_CODES",
    "xgb-booster": "raw xgb.train Booster, early-stopped, numeric columns with NaN",
    "xgb-booster-categorical": "raw xgb.train Booster on a DMatrix with category columns",
    "xgb-early-stopped": "XGBClassifier early-stopped (predict_proba stops at best_iteration)",
    "lgb-classifier": "LGBMClassifier on category columns, labels 'fraud'/'legit', tag positive_class=fraud",
    "lgb-booster": "raw lgb.train Booster trained on a numpy array (names Column_N), NaN present",
    "lgb-booster-categorical": "raw lgb.train Booster on a DataFrame with category columns",
    "sklearn-pipeline": "Pipeline(ColumnTransformer(impute+scale by name, OneHotEncoder), LogisticRegression)",
    "sklearn-xgb-pipeline": "Pipeline(ColumnTransformer(StandardScaler, passthrough, OneHotEncoder), XGBClassifier)",
    "sklearn-pca-pipeline": "Pipeline(ColumnTransformer(impute+PCA on numbers, OneHotEncoder), XGBClassifier)",
    "sklearn-forest": "Pipeline(SimpleImputer, RandomForestClassifier), labels False/True",
    "sklearn-logistic": "bare LogisticRegression on complete numeric columns (cannot take NaN)",
    "pyfunc-custom": "mlflow.pyfunc PythonModel (models from code) returning a DataFrame with fraud_probability",
}


def serve_env(tracking_uri: str, models: dict[str, str]) -> dict[str, str]:
    """The environment of a `serve` of these shapes (`models`: key -> registered name): PYFUNC=allow for the custom
    model, EXTRA_FEATURES=ignore so that every model takes every row of `request_rows`, two workers."""
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MODELS": ",".join(f"{key}={name}" for key, name in models.items()),
        "PYFUNC": "allow",
        "EXTRA_FEATURES": "ignore",
        "WORKERS": "2",
    }


def make_fraud_table(rows: int, *, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """A transaction table with holes, and its is_fraud labels (0/1)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "amount": np.round(rng.gamma(2.0, 60.0, rows), 2),
            "txn_count_24h": rng.poisson(3, rows).astype(np.int64),
            "account_age_days": rng.integers(1, 3000, rows).astype(np.int64),
            "device_age_days": rng.exponential(200.0, rows).round(1),
            "distance_km": rng.exponential(30.0, rows).round(2),
            "is_foreign": rng.random(rows) < 0.15,
            "is_online": rng.random(rows) < 0.5,
            "merchant_category": rng.choice(MERCHANTS, rows),
            "country": rng.choice(COUNTRIES, rows, p=[0.3, 0.2, 0.2, 0.2, 0.1]),
        }
    )
    no_device = rng.random(rows) < 0.15
    no_geo = rng.random(rows) < 0.12
    no_country = rng.random(rows) < 0.08
    table.loc[no_device, "device_age_days"] = np.nan
    table.loc[no_geo, "distance_km"] = np.nan
    table["country"] = table["country"].astype(object)
    table.loc[no_country, "country"] = None
    score = (
        0.012 * table["amount"]
        + 0.4 * table["txn_count_24h"]
        - 0.001 * table["account_age_days"]
        + 1.5 * table["is_foreign"]
        + 1.2 * no_device
        + 0.9 * table["merchant_category"].isin(["electronics", "gaming"])
        + 1.1 * (table["country"] == "NG")
        + rng.normal(0, 1.0, rows)
    )
    labels = pd.Series((score > np.quantile(score, 0.8)).astype(np.int64), name="is_fraud")
    return table, labels


def categorized(table: pd.DataFrame, categories: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """The table with its string columns as pandas `category` columns on the given (training) categories.

    A value outside them becomes missing, as the service builds a request's categorical columns.
    """
    frame = table.copy()
    for column in CATEGORICAL:
        known = pd.Index(categories[column] if categories else sorted(frame[column].dropna().unique()))
        codes = known.get_indexer(pd.Index(frame[column], dtype=object))
        frame[column] = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(known))
    return frame


def request_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON rows for `table`, with every way of sending a missing value and unseen categories.

    Even rows send a missing value as `null`, odd rows leave the optional key out; every fifth row has a
    merchant category and a country never seen in training.
    """
    rows: list[dict[str, Any]] = json.loads(table.to_json(orient="records"))
    for index, row in enumerate(rows):
        if index % 5 == 4:
            row["merchant_category"], row["country"] = "crypto-atm", "ZZ"
        if index % 2:
            for column in OPTIONAL:
                if row.get(column) is None:
                    row.pop(column, None)
    return rows


def largest_difference(served: Any, expected: Any, where: str) -> float:
    """Equal values of equal JSON types (a label `true` is not `1`), numbers within 1e-6; the largest |diff|."""
    if isinstance(expected, float) and isinstance(served, float):
        assert abs(served - expected) <= 1e-6, (where, served, expected)
        return abs(served - expected)
    assert type(served) is type(expected), (where, served, expected)
    if isinstance(expected, list):
        assert len(served) == len(expected), where
        return max((largest_difference(s, e, where) for s, e in zip(served, expected, strict=True)), default=0.0)
    if isinstance(expected, dict):
        assert served.keys() == expected.keys(), (where, served, expected)
        return max((largest_difference(served[k], expected[k], where) for k in expected), default=0.0)
    assert served == expected, (where, served, expected)
    return 0.0


def untrusted(model: Any) -> list[str]:
    """What MLflow asks the data scientist to list in `skops_trusted_types` before it logs the model."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def pins(*distributions: str) -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


_CUSTOM_MODEL = '''
import numpy as np
import pandas as pd
import mlflow
from mlflow.pyfunc import PythonModel


class FraudRules(PythonModel):
    """A team's own scoring code: rules on the raw columns, missing device history counted as risk."""

    def predict(self, context, model_input, params=None):
        x = model_input
        if (x["amount"] < 0).any():  # the team's own input check, which no probe at load can foresee
            raise ValueError("a negative amount is not a transaction")
        z = (
            0.01 * x["amount"].astype("float64")
            + 0.3 * x["txn_count_24h"].astype("float64")
            + 1.5 * x["is_foreign"].astype("float64")
            + 1.2 * x["device_age_days"].isna()
            + 0.8 * x["country"].isin(["NG"])
            - 3.0
        )
        return pd.DataFrame({"fraud_probability": 1.0 / (1.0 + np.exp(-z)), "rule": "v1"})


mlflow.models.set_model(FraudRules())
'''


def register_real_models(tracking_uri: str, workdir: Path) -> dict[str, str]:
    """Train and register one model of every shape in `SHAPES` (alias champion); return key -> registered name."""
    import lightgbm as lgb
    import mlflow
    import xgboost as xgb
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    table, labels = make_fraud_table(400, seed=11)
    example = table.head(5)
    numeric = table[NUMERIC]
    with_categories = categorized(table)
    names = {key: f"real-{key}" for key in SHAPES}
    sklearn_pins = pins("scikit-learn", "numpy", "scipy", "skops")

    def register(key: str, info: Any, tags: dict[str, str] | None = None) -> None:
        version = mlflow.register_model(info.model_uri, names[key])
        for tag, value in (tags or {}).items():
            client.set_model_version_tag(names[key], version.version, tag, value)
        client.set_registered_model_alias(names[key], "champion", version.version)

    # A sqlite:/// registry reads only artifacts it can reach itself: keep them in `workdir`, as file:// URIs.
    experiment = mlflow.create_experiment("real-models", artifact_location=(workdir / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    with mlflow.start_run():
        model = xgb.XGBClassifier(n_estimators=8, max_depth=3, enable_categorical=True, tree_method="hist", n_jobs=1)
        model.fit(with_categories, labels)
        register("xgb-classifier", mlflow.xgboost.log_model(
            model, name="xgb-classifier", signature=infer_signature(with_categories),
            input_example=with_categories.head(5), pip_requirements=pins("xgboost-cpu", "numpy"),
        ))  # fmt: skip

        model = xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(numeric, labels)
        register("xgb-numeric", mlflow.xgboost.log_model(
            model, name="xgb-numeric", signature=infer_signature(numeric), input_example=numeric.head(5),
            pip_requirements=pins("xgboost-cpu", "numpy"),
        ), tags={"reason_codes": json.dumps(REASON_CODES)})  # fmt: skip

        train, valid = numeric.iloc[:300], numeric.iloc[300:]
        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1},
            xgb.DMatrix(train, label=labels.iloc[:300]), num_boost_round=40,
            evals=[(xgb.DMatrix(valid, label=labels.iloc[300:]), "valid")], early_stopping_rounds=3, verbose_eval=False,
        )  # fmt: skip
        register("xgb-booster", mlflow.xgboost.log_model(
            booster, name="xgb-booster", signature=infer_signature(numeric), input_example=numeric.head(5),
            pip_requirements=pins("xgboost-cpu", "numpy"),
        ))  # fmt: skip

        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
            xgb.DMatrix(with_categories, label=labels, enable_categorical=True), num_boost_round=8,
        )  # fmt: skip
        register("xgb-booster-categorical", mlflow.xgboost.log_model(
            booster, name="xgb-booster-categorical", signature=infer_signature(with_categories),
            input_example=with_categories.head(5), pip_requirements=pins("xgboost-cpu", "numpy"),
        ))  # fmt: skip

        model = xgb.XGBClassifier(n_estimators=40, max_depth=3, early_stopping_rounds=3, n_jobs=1)
        model.fit(train, labels.iloc[:300], eval_set=[(valid, labels.iloc[300:])], verbose=False)
        register("xgb-early-stopped", mlflow.xgboost.log_model(
            model, name="xgb-early-stopped", signature=infer_signature(numeric), input_example=numeric.head(5),
            pip_requirements=pins("xgboost-cpu", "numpy"),
        ))  # fmt: skip

        text_labels = labels.map({1: "fraud", 0: "legit"})
        model = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1, n_jobs=1)
        model.fit(with_categories, text_labels)
        register("lgb-classifier", mlflow.lightgbm.log_model(
            model, name="lgb-classifier", signature=infer_signature(with_categories),
            input_example=with_categories.head(5), pip_requirements=pins("lightgbm", "numpy", "scikit-learn", "skops"),
            skops_trusted_types=untrusted(model),
        ), tags={"positive_class": "fraud"})  # fmt: skip

        booster = lgb.train(
            {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1},
            lgb.Dataset(numeric.to_numpy(dtype=np.float64), label=labels), num_boost_round=8,
        )  # fmt: skip
        register("lgb-booster", mlflow.lightgbm.log_model(
            booster, name="lgb-booster", signature=infer_signature(numeric), input_example=numeric.head(5),
            pip_requirements=pins("lightgbm", "numpy"),
        ))  # fmt: skip

        booster = lgb.train(
            {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1},
            lgb.Dataset(with_categories, label=labels), num_boost_round=8,
        )  # fmt: skip
        register("lgb-booster-categorical", mlflow.lightgbm.log_model(
            booster, name="lgb-booster-categorical", signature=infer_signature(with_categories),
            input_example=with_categories.head(5), pip_requirements=pins("lightgbm", "numpy"),
        ))  # fmt: skip

        numbers = ["amount", "txn_count_24h", "account_age_days", "device_age_days", "distance_km"]
        pipeline = Pipeline([
            ("columns", ColumnTransformer([
                ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
                ("flags", "passthrough", ["is_foreign", "is_online"]),
                ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
            ])),
            ("classifier", LogisticRegression(max_iter=500)),
        ]).fit(table, labels)  # fmt: skip
        register("sklearn-pipeline", mlflow.sklearn.log_model(
            pipeline, name="sklearn-pipeline", skops_trusted_types=untrusted(pipeline),
            signature=infer_signature(table), input_example=example,
            pip_requirements=sklearn_pins,
        ))  # fmt: skip

        # Explained: the booster's columns map back to the signature's (one-hot columns to their string column).
        pipeline = Pipeline([
            ("columns", ColumnTransformer([
                ("scaled", StandardScaler(), ["amount", "distance_km", "device_age_days"]),
                ("counts", "passthrough", ["txn_count_24h", "account_age_days", "is_foreign", "is_online"]),
                ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
            ])),
            ("classifier", xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1)),
        ]).fit(table, labels)  # fmt: skip
        xgb_pins = pins("scikit-learn", "numpy", "scipy", "skops", "xgboost-cpu")
        register("sklearn-xgb-pipeline", mlflow.sklearn.log_model(
            pipeline, name="sklearn-xgb-pipeline", skops_trusted_types=untrusted(pipeline),
            signature=infer_signature(table), input_example=example, pip_requirements=xgb_pins,
        ))  # fmt: skip

        # Not explained: PCA mixes the numbers, so no contribution belongs to one of them.
        pipeline = Pipeline([
            ("columns", ColumnTransformer([
                ("numbers", make_pipeline(SimpleImputer(strategy="median"), PCA(n_components=3)), numbers),
                ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
            ])),
            ("classifier", xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1)),
        ]).fit(table, labels)  # fmt: skip
        register("sklearn-pca-pipeline", mlflow.sklearn.log_model(
            pipeline, name="sklearn-pca-pipeline", skops_trusted_types=untrusted(pipeline),
            signature=infer_signature(table), input_example=example, pip_requirements=xgb_pins,
        ))  # fmt: skip

        forest = make_pipeline(SimpleImputer(), RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0))
        forest.fit(numeric, labels.astype(bool))
        register("sklearn-forest", mlflow.sklearn.log_model(
            forest, name="sklearn-forest", skops_trusted_types=untrusted(forest),
            signature=infer_signature(numeric), input_example=numeric.head(5),
            pip_requirements=sklearn_pins,
        ))  # fmt: skip

        complete = table[["amount", "txn_count_24h", "account_age_days", "is_foreign"]]
        logistic = LogisticRegression(max_iter=500).fit(complete, labels)
        register("sklearn-logistic", mlflow.sklearn.log_model(
            logistic, name="sklearn-logistic", skops_trusted_types=untrusted(logistic),
            signature=infer_signature(complete), input_example=complete.head(5),
            pip_requirements=sklearn_pins,
        ))  # fmt: skip

        code = workdir / "fraud_rules.py"
        code.write_text(textwrap.dedent(_CUSTOM_MODEL))
        register("pyfunc-custom", mlflow.pyfunc.log_model(
            name="pyfunc-custom", python_model=str(code), signature=infer_signature(table), input_example=example,
            pip_requirements=pins("numpy", "pandas"),
        ))  # fmt: skip
    return names
