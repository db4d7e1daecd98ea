"""A version the service cannot serve is refused with the fix that applies to it: the flavour first, then the
signature's kind, then each column's type (`read_artifact`, which `serve`, `check` and every refresh run)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model, infer_signature
from sklearn.linear_model import LogisticRegression

from fraud_inference.models.artifact import UnservableModelError
from fraud_inference.models.reading import read_artifact
from fraud_inference.models.trust import ModelTrust
from fraud_inference.registry import ModelRef
from tests.real_models import NUMERIC, make_fraud_table

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REF = ModelRef(key="m", name="fraud-m", version="1", selected_by="test", run_id=None, threshold=0.5)


def write_mlmodel_as_mlflow_does(path: Path, flavour: str, conf: dict[str, object], frame: object) -> Path:
    """An MLmodel written with MLflow's own `Model` API and the keys `mlflow.<flavour>.save_model` writes.

    NOTE: onnx and catboost are not in uv.lock (heavy, and never served here): the MLmodel is all the service
    reads before refusing, so it is written as mlflow/onnx/__init__.py and mlflow/catboost/__init__.py write it
    (`pyfunc.add_to_model(loader_module="mlflow.<flavour>")`, then `add_flavor`), without the library.
    """
    path.mkdir()
    model = Model(signature=infer_signature(frame))
    mlflow.pyfunc.add_to_model(model, loader_module=f"mlflow.{flavour}", python_env="python_env.yaml")
    model.add_flavor(flavour, **conf)
    model.save(str(path / "MLmodel"))
    return path


def refusal(path: Path, trust: ModelTrust = ModelTrust()) -> str:  # noqa: B008 - frozen
    with pytest.raises(UnservableModelError) as refused:
        read_artifact(REF, path, trust=trust)
    return str(refused.value)


def test_an_onnx_model_is_told_first_that_its_flavour_is_not_served_and_what_is(tmp_path: Path) -> None:
    # An ONNX model's signature is a tensor: the flavour is what to fix, not the signature.
    tensor = np.zeros((3, len(NUMERIC)), dtype=np.float32)
    path = write_mlmodel_as_mlflow_does(
        tmp_path / "onnx", "onnx", {"onnx_version": "1.17.0", "data": "model.onnx", "providers": []}, tensor
    )
    message = refusal(path)
    assert message.startswith("fraud-m v1 (model 'm'): its flavour onnx is not served"), message
    assert "this service serves xgboost, lightgbm, sklearn, and python_function for a custom" in message
    assert "signature" not in message


def test_a_catboost_model_is_told_its_catboost_flavour_is_not_served(tmp_path: Path) -> None:
    table, _labels = make_fraud_table(50, seed=1)
    conf = {"catboost_version": "1.2.8", "data": "model.cb", "model_type": "CatBoostClassifier", "save_format": "cbm"}
    path = write_mlmodel_as_mlflow_does(tmp_path / "catboost", "catboost", conf, table[NUMERIC])
    message = refusal(path, ModelTrust(pyfunc="allow"))
    assert "its flavour catboost is not served (MLmodel lists ['catboost', 'python_function'])" in message, message
    assert "only flavour is python_function" not in message


def test_a_tensor_signature_asks_for_a_dataframe_with_named_columns(tmp_path: Path) -> None:
    table, labels = make_fraud_table(200, seed=2)
    features = table[["amount", "txn_count_24h", "account_age_days"]].to_numpy(dtype=np.float64)
    model = LogisticRegression(max_iter=200).fit(features, labels)
    mlflow.sklearn.save_model(
        model, str(tmp_path / "model"), signature=infer_signature(features), pip_requirements=["scikit-learn"],
    )  # fmt: skip
    message = refusal(tmp_path / "model")
    assert "its input signature is a tensor" in message, message
    assert "infer_signature(pd.DataFrame(X_train, columns=feature_names))" in message


def test_a_datetime_column_is_refused_saying_how_to_send_it(tmp_path: Path) -> None:
    table, labels = make_fraud_table(200, seed=4)
    frame = table[["amount"]].assign(seen_at=pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(200), "min"))
    model = LogisticRegression(max_iter=200).fit(table[["amount"]], labels)
    mlflow.sklearn.save_model(
        model, str(tmp_path / "model"), signature=infer_signature(frame), pip_requirements=["scikit-learn"],
    )  # fmt: skip
    message = refusal(tmp_path / "model")
    assert "feature 'seen_at' has type 'datetime'" in message, message
    assert "epoch seconds" in message
    assert "ISO-8601 string" in message
