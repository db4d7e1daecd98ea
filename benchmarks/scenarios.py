"""What each load scenario sends: which models, how many rows per request, how many connections.

Every scenario and every baseline scores the same deterministic rows for a given batch size
(`workload`), so our service, MLflow's scoring server and the in-process ceiling are compared on
identical input.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

import msgspec
import numpy as np
import pandas as pd

from benchmarks.grpc_load import grpc_url
from fraud_inference.demo.dataset import make_transactions

__all__ = [
    "MODEL_KEYS",
    "PROTOCOLS",
    "Protocol",
    "Requests",
    "Scenario",
    "Target",
    "mlflow_bodies",
    "mlflow_scenarios",
    "mlserver_bodies",
    "mlserver_scenarios",
    "our_requests",
    "our_scenarios",
    "pyfunc_scenarios",
    "with_protocols",
    "workload",
]

Target = Literal["fraud-inference", "mlflow", "mlserver"]
Protocol = Literal["v1", "mlflow", "oip", "grpc"]
PROTOCOLS: tuple[Protocol, ...] = ("v1", "mlflow", "oip", "grpc")
"""The protocols fraud-inference speaks: /v1/predict, MLflow's /invocations/{model}, OIP's /v2/.../infer, and OIP's
ModelInfer over gRPC (tritonclient.grpc, one raw FP64 [rows, features] tensor)."""

MODEL_KEYS: tuple[str, ...] = ("xgboost", "lightgbm", "sklearn")
"""The model keys the demo registry serves (`fraud_inference.demo.seeding.DEMO_MODELS`)."""

_CURVE_FULL = (1, 4, 16, 32, 64, 128)
_MLFLOW_CURVE_FULL = (1, 4, 16, 64)
_MLSERVER_CURVE_FULL = (16, 64)
_DISTINCT_ROWS = 4_000
"""About how many different rows a scenario cycles through (at least 2 and at most 64 bodies)."""


class Scenario(msgspec.Struct, frozen=True):
    """One bounded load run: `connections` keep-alive connections sending `rows`-row requests."""

    name: str
    models: tuple[str, ...]
    """One model key, or several for a mixed run whose requests cycle through them."""
    rows: int
    connections: int
    curve: bool = False
    """Part of the latency-versus-throughput curve (1-row XGBoost at several concurrencies)."""
    protocol: Protocol = "v1"
    """Which of fraud-inference's protocols the requests use (MLflow's server speaks only its own)."""


class Requests(msgspec.Struct, frozen=True):
    """What a scenario sends: the URL, the bodies it cycles through, and what every 2xx answer must contain."""

    url: str
    bodies: list[bytes]
    expect: str = '"predictions"'


def with_protocols(scenarios: list[Scenario], protocols: tuple[Protocol, ...]) -> list[Scenario]:
    """Each scenario once per protocol, the protocols alternating; names get `[protocol]` when there are several.

    Only /v1/predict takes the model in the body: a mixed scenario runs with it alone.
    """
    if protocols == ("v1",):
        return scenarios
    return [
        msgspec.structs.replace(scenario, name=f"{scenario.name} [{protocol}]", protocol=protocol)
        for scenario in scenarios
        for protocol in protocols
        if protocol == "v1" or len(scenario.models) == 1
    ]


def our_scenarios(*, quick: bool) -> list[Scenario]:
    """The scenarios run against fraud-inference, the curve first."""
    if quick:
        return [
            Scenario("xgboost 1 row c16", ("xgboost",), 1, 16, curve=True),
            Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8),
            Scenario("mixed 1 row c16", MODEL_KEYS, 1, 16),
        ]
    return [
        *(Scenario(f"xgboost 1 row c{c}", ("xgboost",), 1, c, curve=True) for c in _CURVE_FULL),
        Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8),
        Scenario("xgboost 100 rows c64", ("xgboost",), 100, 64),
        Scenario("xgboost 1000 rows c8", ("xgboost",), 1000, 8),
        Scenario("lightgbm 1 row c16", ("lightgbm",), 1, 16),
        Scenario("sklearn 1 row c16", ("sklearn",), 1, 16),
        Scenario("mixed 1 row c16", MODEL_KEYS, 1, 16),
    ]


def mlflow_scenarios(*, quick: bool) -> list[Scenario]:
    """The scenarios run against `mlflow models serve` of the XGBoost champion (same names as ours)."""
    if quick:
        return [Scenario("xgboost 1 row c16", ("xgboost",), 1, 16, curve=True)]
    return [
        *(Scenario(f"xgboost 1 row c{c}", ("xgboost",), 1, c, curve=True) for c in _MLFLOW_CURVE_FULL),
        Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8),
        Scenario("xgboost 100 rows c64", ("xgboost",), 100, 64),
        Scenario("xgboost 1000 rows c8", ("xgboost",), 1000, 8),
    ]


def pyfunc_scenarios(key: str, *, quick: bool, mlflow: bool = False) -> list[Scenario]:
    """The scenarios of the custom pyfunc model served as `key`, by ours or (`mlflow`) by MLflow's server.

    Full runs: 1 row at 16 and 64 connections, 100 rows at 8 (as for XGBoost). Quick runs leave out 1 row at 64,
    and MLflow's server runs 1 row at 16 alone, as for XGBoost. The names never meet the demo models' names.
    """
    one_row = [Scenario(f"pyfunc 1 row c{connections}", (key,), 1, connections) for connections in (16, 64)]
    hundred = Scenario("pyfunc 100 rows c8", (key,), 100, 8)
    if quick:
        return [one_row[0]] if mlflow else [one_row[0], hundred]
    return [*one_row, hundred]


def mlserver_scenarios(*, quick: bool) -> list[Scenario]:
    """The scenarios run against MLServer serving the XGBoost champion (same names as ours)."""
    if quick:
        return [
            Scenario("xgboost 1 row c16", ("xgboost",), 1, 16, curve=True),
            Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8),
        ]
    return [
        *(Scenario(f"xgboost 1 row c{c}", ("xgboost",), 1, c, curve=True) for c in _MLSERVER_CURVE_FULL),
        Scenario("xgboost 100 rows c8", ("xgboost",), 100, 8),
        Scenario("xgboost 100 rows c64", ("xgboost",), 100, 64),
    ]


def workload(rows: int) -> list[pd.DataFrame]:
    """The batches of `rows` rows that every scenario and baseline of that batch size uses."""
    batches = max(2, min(64, _DISTINCT_ROWS // rows))
    # NOTE: a seed per batch size keeps the rows fixed across runs, and apart from the training seed (7).
    features, _labels = make_transactions(batches * rows, seed=1_000 + rows)
    return [features.iloc[start : start + rows] for start in range(0, batches * rows, rows)]


def our_requests(scenario: Scenario, base_url: str, grpc_target: str = "") -> Requests:
    """The requests of `scenario` in its protocol; for /v1/predict, models interleaved in a mixed scenario;
    over gRPC (`grpc_target`, host:port), the raw FP64 matrices tritonclient.grpc sends."""
    batches = workload(scenario.rows)
    model = scenario.models[0]
    if scenario.protocol == "grpc":
        target = grpc_target or f"{urlsplit(base_url).hostname}:8001"
        url = grpc_url(target, model, rows=scenario.rows, features=batches[0].shape[1])
        return Requests(url, [batch.to_numpy(dtype=np.float64).tobytes() for batch in batches], expect="")
    if scenario.protocol == "mlflow":
        bodies = [json.dumps({"dataframe_records": _records(batch)}).encode() for batch in batches]
        return Requests(f"{base_url}/invocations/{model}", bodies)
    if scenario.protocol == "oip":
        bodies = [json.dumps({"inputs": [_tensor(batch)]}).encode() for batch in batches]
        return Requests(f"{base_url}/v2/models/{model}/infer", bodies, expect='"outputs"')
    bodies = [
        json.dumps({"model": key, "instances": _records(batch)}).encode()
        for batch in batches
        for key in scenario.models
    ]
    return Requests(f"{base_url}/v1/predict", bodies)


def _tensor(batch: pd.DataFrame) -> dict[str, object]:
    """One OIP [rows, features] FP64 tensor in the signature's (the frame's) column order."""
    return {"name": "transactions", "datatype": "FP64", "shape": list(batch.shape), "data": batch.to_numpy().tolist()}


def mlflow_bodies(scenario: Scenario) -> list[bytes]:
    """Request bodies for MLflow's `POST /invocations` (one model per server)."""
    return [json.dumps({"dataframe_records": _records(batch)}).encode() for batch in workload(scenario.rows)]


def mlserver_bodies(scenario: Scenario) -> list[bytes]:
    """OIP V2 bodies for MLServer's XGBoost runtime: one FP64 tensor, asking for `predict_proba` (its default
    output is the class label)."""
    return [
        json.dumps({"inputs": [_tensor(batch)], "outputs": [{"name": "predict_proba"}]}).encode()
        for batch in workload(scenario.rows)
    ]


def _records(batch: pd.DataFrame) -> list[dict[str, float | int]]:
    # to_json keeps int64 columns as JSON integers, which the service's `long` features require.
    records: list[dict[str, float | int]] = json.loads(batch.to_json(orient="records"))
    return records
