"""A client of `mlflow models serve` switches to this service by changing the URL, and gets the same answers.

Real `fraud-inference serve` beside a real `mlflow models serve --env-manager local` of each served version,
driven with MLflow's own client (`ScoringServerClient`) and MLflow's own request encoder (`dump_input_data`):
scikit-learn-API classifiers (class labels), a raw XGBoost Booster (probabilities), a scikit-learn model
logged with `pyfunc_predict_fn="predict_proba"` (two columns), one whose labels are "fraud"/"legit" (string
labels) and a custom pyfunc model returning a DataFrame (its records).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from mlflow.utils.proto_json_utils import dump_input_data
from sklearn.ensemble import HistGradientBoostingClassifier

from fraud_inference.demo.dataset import make_transactions
from fraud_inference.demo.seeding import SKOPS_TRUSTED_TYPES, default_pip_requirements, log_fraud_model
from tests.conftest import RunningService, free_port, start_service, use_registry
from tests.real_models import largest_difference

pytestmark = [
    pytest.mark.slow,
    pytest.mark.soak,
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column:UserWarning"),
]

SERVED = {
    "xgboost": "fraud-xgboost",
    "lightgbm": "fraud-lightgbm",
    "sklearn": "fraud-sklearn",
    "booster": "fraud-xgboost-booster",
    "proba": "fraud-sklearn-proba",
    "labels": "fraud-sklearn-labels",
    "custom": "fraud-custom-frame",
}
_CUSTOM_MODEL = """
import numpy as np
import pandas as pd
import mlflow
from mlflow.pyfunc import PythonModel


class Rules(PythonModel):
    def predict(self, context, model_input, params=None):
        scale = (params or {}).get("scale", 1.0)
        z = scale * (0.002 * model_input["amount"].astype("float64") + 1.5 * model_input["is_foreign"] - 2.0)
        return pd.DataFrame({"fraud_probability": 1.0 / (1.0 + np.exp(-z)), "rule": "v1"})


mlflow.models.set_model(Rules())
"""
JSON = {"content-type": "application/json"}


def _register_extra_models(registry: str, workdir: Path) -> None:
    """A raw XGBoost Booster, a scikit-learn classifier whose pyfunc answers predict_proba, one labelled
    "fraud"/"legit", and a custom model answering a DataFrame, as champions."""
    features, labels = make_transactions(3_000, seed=7)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgboost.DMatrix(features, label=labels),
        num_boost_round=20,
    )
    log_fraud_model(registry, flavor="xgboost", model=booster, X_example=features, registered_name=SERVED["booster"])
    classifier = HistGradientBoostingClassifier(max_iter=20, max_depth=3, early_stopping=False, random_state=7)
    classifier.fit(features, labels)
    use_registry(registry)
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    # NOTE: an explicit experiment: another test may have left MLflow's process-wide active experiment set to
    # an id of another registry.
    experiment = client.get_experiment_by_name("fraud-demo")
    assert experiment is not None, "log_fraud_model creates the demo experiment"
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        mlflow.sklearn.log_model(
            classifier,
            name="model",
            registered_model_name=SERVED["proba"],
            signature=infer_signature(features),
            pyfunc_predict_fn="predict_proba",
            serialization_format="skops",
            skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
            pip_requirements=default_pip_requirements("sklearn"),
        )
        labelled = HistGradientBoostingClassifier(max_iter=20, max_depth=3, early_stopping=False, random_state=7)
        labelled.fit(features, np.where(np.asarray(labels) == 1, "fraud", "legit"))
        mlflow.sklearn.log_model(
            labelled, name="labels", registered_model_name=SERVED["labels"], signature=infer_signature(features),
            serialization_format="skops", skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
            pip_requirements=default_pip_requirements("sklearn"),
        )  # fmt: skip
        client.set_model_version_tag(SERVED["labels"], "1", "positive_class", "fraud")
        code = workdir / "rules.py"
        code.write_text(_CUSTOM_MODEL)
        mlflow.pyfunc.log_model(
            name="custom", python_model=str(code), registered_model_name=SERVED["custom"],
            signature=infer_signature(features, params={"scale": 1.0}), pip_requirements=["numpy", "pandas"],
        )  # fmt: skip
    for key in ("booster", "proba", "labels", "custom"):
        client.set_registered_model_alias(SERVED[key], "champion", "1")


class MlflowModelServer:
    """`mlflow models serve --env-manager local` of one version, in its own process group."""

    def __init__(self, registry: str, model_uri: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # NOTE: it starts `uvicorn` from PATH, so the virtual environment's bin goes first.
        env.update(
            MLFLOW_TRACKING_URI=registry,
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            OMP_NUM_THREADS="1",
        )
        command = [
            str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(self.port), "-w", "1",
        ]  # fmt: skip
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, deadline: float) -> None:
        client = ScoringServerClient("127.0.0.1", self.port)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(Exception):
                client.ping()
                return
            time.sleep(0.5)
        raise AssertionError(f"mlflow models serve did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def servers(
    demo_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningService, dict[str, str]]]:
    """This service serving all seven models, and one `mlflow models serve` per model (key -> its URL)."""
    root = tmp_path_factory.mktemp("mlflow-parity")
    shutil.copy2(demo_home / "mlflow.db", root / "mlflow.db")
    registry = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            patch.delenv(variable, raising=False)
        _register_extra_models(registry, root)
    models = ",".join(f"{key}={name}" for key, name in SERVED.items())
    env = {
        "MLFLOW_TRACKING_URI": registry, "MODELS": models, "WORKERS": "1", "LOG_LEVEL": "WARNING", "PYFUNC": "allow",
    }  # fmt: skip
    ours = start_service(["serve"], env, root)
    theirs = {
        key: MlflowModelServer(registry, f"models:/{name}@champion", root / f"mlflow-{key}.log")
        for key, name in SERVED.items()
    }
    try:
        deadline = time.monotonic() + 240
        ours.wait_ready(timeout_s=240)
        for server in theirs.values():
            server.wait_ready(deadline)
        yield ours, {key: server.url for key, server in theirs.items()}
    finally:
        for server in theirs.values():
            server.stop()
        ours.stop()


def request_bodies(frame: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    """One request per input form MLflow's server reads; the JSON ones made by MLflow's own encoder."""
    records = json.loads(frame.to_json(orient="records"))
    columns = {name: json.loads(frame[name].to_json(orient="values")) for name in frame.columns}
    return {
        "dataframe_split": ("application/json", dump_input_data(frame).encode()),
        "dataframe_split+params": ("application/json", dump_input_data(frame, params={"unused": 1}).encode()),
        "dataframe_records": ("application/json", json.dumps({"dataframe_records": records}).encode()),
        "instances": ("application/json", json.dumps({"instances": records}).encode()),
        "inputs_columns": ("application/json", json.dumps({"inputs": columns}).encode()),
        "csv": ("text/csv", frame.to_csv(index=False).encode()),
    }


def test_mlflow_client_gets_the_same_answers_from_both(
    servers: tuple[RunningService, dict[str, str]], transactions: pd.DataFrame
) -> None:
    ours, theirs = servers
    port = int(ours.base_url.rsplit(":", 1)[1])
    client = ScoringServerClient("127.0.0.1", port)
    client.wait_server_ready(timeout=30)
    assert (
        client.get_version() == ScoringServerClient("127.0.0.1", int(theirs["xgboost"].rsplit(":", 1)[1])).get_version()
    )
    frame = transactions.head(60)
    reference = ScoringServerClient("127.0.0.1", int(theirs["xgboost"].rsplit(":", 1)[1]))
    assert client.invoke(frame).get_predictions().equals(reference.invoke(frame).get_predictions())
    summary = {}
    for key, url in theirs.items():
        for form, (content_type, body) in request_bodies(frame).items():
            mine = httpx.post(
                f"{ours.base_url}/invocations/{key}", content=body, headers={"content-type": content_type}
            )
            their = httpx.post(f"{url}/invocations", content=body, headers={"content-type": content_type}, timeout=60)
            assert (mine.status_code, their.status_code) == (200, 200), (key, form, mine.text, their.text[:500])
            largest_difference(mine.json()["predictions"], their.json()["predictions"], f"{key} {form}")
            summary[(key, form)] = type(their.json()["predictions"][0]).__name__
    assert summary[("xgboost", "csv")] == "int"  # class labels
    assert summary[("booster", "csv")] == "float"  # probabilities
    assert summary[("proba", "csv")] == "list"  # [p(0), p(1)]
    assert summary[("labels", "csv")] == "str"  # "fraud" / "legit"
    assert summary[("custom", "csv")] == "dict"  # the DataFrame's records


def test_params_a_custom_model_declares_are_refused_not_ignored(
    servers: tuple[RunningService, dict[str, str]], transactions: pd.DataFrame
) -> None:
    ours, theirs = servers
    body = dump_input_data(transactions.head(5), params={"scale": 2.0}).encode()
    their = httpx.post(f"{theirs['custom']}/invocations", content=body, headers=JSON, timeout=60)
    plain = httpx.post(f"{theirs['custom']}/invocations", content=dump_input_data(transactions.head(5)), headers=JSON)
    assert their.json() != plain.json(), "MLflow passes the declared param on: the answer changes"
    mine = httpx.post(f"{ours.base_url}/invocations/custom", content=body, headers=JSON)
    assert (mine.status_code, mine.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), mine.text
    assert "params scale" in mine.json()["message"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"dataframe_records": [{"amount": 1.0}]}', "application/json"),
        (b"amount,hour_of_day\n1.0,3\n", "text/csv"),
        (b'{"dataframe_records": [], "instances": []}', "application/json"),
        (b'{"records": [{"amount": 1.0}]}', "application/json"),
        (b'[{"amount": 1.0}]', "application/json"),
        (b"{not json", "application/json"),
    ],
    ids=["missing-columns", "csv-missing-columns", "two-forms", "no-form", "a-list", "not-json"],
)
def test_refusals_have_mlflows_status_and_shape(
    servers: tuple[RunningService, dict[str, str]], body: bytes, content_type: str
) -> None:
    ours, theirs = servers
    mine = httpx.post(f"{ours.base_url}/invocations", content=body, headers={"content-type": content_type})
    their = httpx.post(f"{theirs['xgboost']}/invocations", content=body, headers={"content-type": content_type})
    assert mine.status_code == their.status_code, (mine.text, their.text[:500])
    assert set(mine.json()) == {"error_code", "message"}
    assert mine.json()["error_code"] == their.json()["error_code"], (mine.text, their.text[:500])
