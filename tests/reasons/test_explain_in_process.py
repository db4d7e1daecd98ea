"""Explanations in one process, with the loading and scoring code the workers run: the gate's comparison with
MLflow's loaded model, refusals at load, the ranking, and the queue keeping explained requests apart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from fraud_inference.models.artifact import FeatureSpec, ModelArtifact
from fraud_inference.models.explain import explain_refusal, explainer_of, load_refusal
from fraud_inference.models.reading import fetch_artifact
from fraud_inference.models.scoring import load_model
from fraud_inference.models.trust import ModelTrust
from fraud_inference.parity import check_parity
from fraud_inference.pool import Scores
from fraud_inference.pool.messages import EXPLANATION
from fraud_inference.pool.queue import BatchPolicy, PendingRequest, RequestQueue
from fraud_inference.reasons.codes import reason_codes
from fraud_inference.reasons.parity import largest_contribution_difference
from fraud_inference.reasons.ranking import top_reasons
from fraud_inference.reasons.wire import Explained
from fraud_inference.registry import ModelRef, Registry
from tests.real_models import CATEGORICAL, NUMERIC, make_fraud_table, request_rows

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
XGBOOST_SHAPES = ["xgb-classifier", "xgb-numeric", "xgb-booster", "xgb-booster-categorical", "xgb-early-stopped"]
LIGHTGBM_SHAPES = ["lgb-classifier", "lgb-booster", "lgb-booster-categorical"]


@pytest.fixture(scope="module")
def registry(real_models: tuple[str, dict[str, str]]) -> Registry:
    return Registry(real_models[0], alias="champion", stages=(), timeout_s=10)


def artifact_of(registry: Registry, key: str, tmp_path: Path, **tags: str) -> ModelArtifact:
    ref = registry.resolve(key, f"real-{key}")
    ref = ModelRef(**{**{f: getattr(ref, f) for f in ref.__struct_fields__}, **tags})
    return fetch_artifact(registry, ref, tmp_path, dependency_policy="compatible", trust=ModelTrust(pyfunc="allow"))


@pytest.mark.parametrize("key", XGBOOST_SHAPES + LIGHTGBM_SHAPES)
def test_served_contributions_are_pred_contribs_of_mlflows_loaded_model(
    registry: Registry, tmp_path: Path, key: str
) -> None:
    artifact = artifact_of(registry, key, tmp_path)
    served = load_model(artifact, extra="ignore")
    table, _labels = make_fraud_table(40, seed=3)
    rows = request_rows(table)  # missing values both ways, unseen categories
    difference = largest_contribution_difference(artifact, served, rows)
    print(f"{key}: max |contribution diff| {difference} over {len(rows)} rows")
    assert difference is not None
    assert difference <= 1e-6
    report = check_parity(artifact)  # the gate compares them too, on its own rows
    assert report.ok, report.failures


def test_the_gate_refuses_contributions_that_are_not_the_librarys(registry: Registry, tmp_path: Path) -> None:
    """A deliberately wrong service model: the early-stopped classifier explained over every tree (the gate's
    probabilities are still right, since they come from the real scorer)."""
    artifact = artifact_of(registry, "xgb-early-stopped", tmp_path)

    def every_tree(artifact: ModelArtifact) -> object:
        served = load_model(artifact)
        native = explainer_of(served.scorer)
        assert native is not None
        native._iteration_range = (0, 0)  # type: ignore[attr-defined]  # the fault under test: all 40 rounds
        return served

    report = check_parity(artifact, load=every_tree)
    assert any("contributions differ from pred_contribs" in failure for failure in report.failures), report.failures


@pytest.mark.parametrize("key", ["sklearn-pipeline", "sklearn-pca-pipeline", "pyfunc-custom"])
def test_models_that_cannot_explain_say_why_and_what_can(registry: Registry, tmp_path: Path, key: str) -> None:
    artifact = artifact_of(registry, key, tmp_path)
    at_load = load_refusal(load_model(artifact, extra="ignore").scorer)  # a pipeline's steps: known once loaded
    refusal = explain_refusal(artifact, at_load=at_load)
    assert refusal is not None
    assert f"real-{key} v1" in refusal
    assert "XGBoost" in refusal
    assert "LightGBM" in refusal


def test_a_pipeline_ending_in_xgboost_explains_each_input_column_with_its_one_hot_columns_summed(
    registry: Registry, tmp_path: Path
) -> None:
    """Each signature column's contribution is the booster's own pred_contribs summed over the columns the
    pipeline's preprocessing made of it, on the pipeline `mlflow.sklearn.load_model` returns; the gate agrees."""
    import mlflow
    import pandas as pd
    import xgboost as xgb

    artifact = artifact_of(registry, "sklearn-xgb-pipeline", tmp_path)
    served = load_model(artifact, extra="ignore")
    assert load_refusal(served.scorer) is None
    assert explain_refusal(artifact, at_load=None) is None
    explainer = explainer_of(served.scorer)
    assert explainer is not None
    assert explainer.margin == "log_odds"
    table, _labels = make_fraud_table(40, seed=3)
    rows = request_rows(table)  # missing values both ways, unseen categories
    got = explainer.contributions(served.decoder.decode(json.dumps(rows).encode()))

    pipeline = mlflow.sklearn.load_model(artifact.path)
    frame = pd.DataFrame(rows, columns=NUMERIC + CATEGORICAL)
    frame[NUMERIC] = frame[NUMERIC].astype("float64")
    transformed = pipeline[:-1].transform(frame)
    booster = pipeline[-1].get_booster()
    own = booster.predict(xgb.DMatrix(transformed), pred_contribs=True).astype(np.float64)
    names = list(pipeline[:-1].get_feature_names_out())  # "categories__country_DE", "scaled__amount", ...
    columns = NUMERIC + CATEGORICAL
    expected = np.zeros((len(rows), len(columns) + 1))
    for index, name in enumerate(names):
        source = next(column for column in columns if name.split("__", 1)[1].startswith(column))
        expected[:, columns.index(source)] += own[:, index]
    expected[:, -1] = own[:, -1]
    assert sum(name.startswith("categories__country_") for name in names) >= 5  # one-hot columns, summed into one
    assert float(np.max(np.abs(got - expected))) <= 1e-6
    margin = booster.predict(xgb.DMatrix(transformed), output_margin=True).astype(np.float64)
    assert float(np.max(np.abs(got.sum(axis=1) - margin))) <= 1e-5  # XGBoost sums in float32
    difference = largest_contribution_difference(artifact, served, rows)
    assert difference is not None
    assert difference <= 1e-6
    report = check_parity(artifact)
    assert report.ok, report.failures


def test_a_pipeline_step_that_mixes_columns_is_named_in_the_refusal(registry: Registry, tmp_path: Path) -> None:
    artifact = artifact_of(registry, "sklearn-pca-pipeline", tmp_path)
    refusal = load_refusal(load_model(artifact, extra="ignore").scorer)
    assert refusal is not None
    assert "columns/numbers/pca" in refusal
    assert "PCA" in refusal


@pytest.mark.parametrize("key", LIGHTGBM_SHAPES)
def test_lightgbm_explains_only_files_whose_trees_were_checked(registry: Registry, tmp_path: Path, key: str) -> None:
    """The real versions (native text, skops) are explained; the same version as a pickle is refused, since LightGBM
    parses a pickle's trees while unpickling, unchecked (faked: the artifact's file format, not a real pickle)."""
    artifact = artifact_of(registry, key, tmp_path)
    assert artifact.model_file.format in {"native", "skops"}
    assert explain_refusal(artifact) is None
    pickled = msgspec.structs.replace(artifact.model_file, format="cloudpickle", objective=None)
    refusal = explain_refusal(msgspec.structs.replace(artifact, model_file=pickled))
    assert refusal is not None
    assert f"real-{key} v1" in refusal
    assert "LightGBM#7357" in refusal
    assert "skops" in refusal


@pytest.mark.parametrize(
    ("objective", "margin"),
    [("binary sigmoid:1", "log_odds"), ("cross_entropy", "log_odds"), ("xentropy", "log_odds"),
     ("binary sigmoid:2", None), ("multiclass num_class:2", None), (None, None)],
)  # fmt: skip
def test_lightgbm_contributions_are_explained_only_in_a_space_that_can_be_stated(
    objective: str | None, margin: str | None
) -> None:
    """`binary` with sigmoid s scores 1 / (1 + exp(-s * raw)): its raw score is the log-odds only when s is 1."""
    from fraud_inference.models.artifact import ModelFile
    from fraud_inference.models.flavors.lightgbm_explain import explained_margin, refusal

    model_file = ModelFile(file="model.lgb", format="native", objective=objective)
    assert explained_margin(model_file) == margin
    assert (refusal(model_file) is None) == (margin is not None)


def test_a_mapping_naming_a_feature_the_signature_lacks_refuses_the_version_at_load(
    registry: Registry, tmp_path: Path
) -> None:
    codes = json.dumps({"amount": {"code": "R01", "text": "High amount"}, "ip_risk": {"code": "R9", "text": "x"}})
    artifact = artifact_of(registry, "xgb-numeric", tmp_path, reason_codes=codes)
    with pytest.raises(ValueError, match=r"real-xgb-numeric v1: version tag reason_codes names features the "
                       r"signature does not have: \['ip_risk'\]"):  # fmt: skip
        load_model(artifact)
    report = check_parity(artifact)
    assert not report.ok
    assert "ip_risk" in report.failures[0]
    with pytest.raises(ValueError, match=r"must be JSON"):
        load_model(artifact_of(registry, "xgb-numeric", tmp_path, reason_codes='{"amount": "R01"}'))


def test_the_top_reasons_are_the_largest_contributions_in_order_with_their_codes() -> None:
    features = [FeatureSpec("amount", "double"), FeatureSpec("txn_count", "long"), FeatureSpec("is_foreign", "boolean")]
    contributions = np.array([[0.2, 0.9, -0.4, -1.5], [0.3, 0.3, 0.3, -1.0]])
    explained = Explained("log_odds", 3, contributions.tobytes(), [[912.4, 6.0, 1.0], [None, 2.0, 0.0]])
    codes = reason_codes('{"txn_count": {"code": "V02", "text": "Many transactions"}}', ("amount", "txn_count",
                         "is_foreign"), "m v1")  # fmt: skip
    first, second = top_reasons(explained, features, 2, codes)
    assert first.base_value == -1.5
    assert [(r.feature, r.value, r.contribution, r.code) for r in first.reasons] == [
        ("txn_count", 6, 0.9, "V02"),
        ("amount", 912.4, 0.2, None),
    ]
    assert first.reasons[0].text == "Many transactions"
    assert [r.feature for r in second.reasons] == ["amount", "txn_count"]  # ties keep signature order
    assert second.reasons[0].value is None  # missing: as the model received it


def test_explained_requests_are_never_batched_with_plain_ones() -> None:
    loop = asyncio.new_event_loop()
    try:

        def pending(seq: int, wants: tuple[str, ...] = ()) -> PendingRequest:
            future: asyncio.Future[Scores] = loop.create_future()
            return PendingRequest(seq, 1, "xgboost", b"[{}]", "id", future, wants=wants)

        queue = RequestQueue(BatchPolicy(max_requests=10), limit=100)
        plain, explained, plain_again, explained_again = (
            pending(1), pending(2, (EXPLANATION,)), pending(3), pending(4, (EXPLANATION,))
        )  # fmt: skip
        for request in (plain, explained, plain_again, explained_again):
            queue.put(request)
        now = queue.clock()
        assert queue.take({1}, now) == [plain, plain_again]
        assert queue.take({1}, now) == [explained, explained_again]
        assert len(queue) == 0
    finally:
        loop.close()


def test_a_batch_explains_only_the_rows_of_the_requests_that_want_it(registry: Registry, tmp_path: Path) -> None:
    """The worker's own batch code, on a real model: a plain request and a refused one beside an explained one."""
    import structlog

    from fraud_inference.pool.messages import Score, Scored
    from fraud_inference.pool.worker_batch import BatchScorer
    from fraud_inference.reasons.wire import decode_explained

    served = load_model(artifact_of(registry, "xgb-numeric", tmp_path), extra="ignore")
    table, _labels = make_fraud_table(4, seed=2)
    body = json.dumps(request_rows(table)).encode()
    batch = Score(
        seq=1, generation=1, model="xgb-numeric", bodies=(body, body, b'[{"amount": "x"}]'),
        request_ids=("a", "b", "c"), wants=((EXPLANATION,), (), (EXPLANATION,)),
    )  # fmt: skip
    scorer = BatchScorer(max_rows=100, is_cancelled=lambda _seq: False, log=structlog.get_logger())
    answer = scorer.score(batch, served)
    assert isinstance(answer, Scored)
    explained_part, plain_part, refused_part = answer.outputs[EXPLANATION].parts()
    assert (len(plain_part), len(refused_part)) == (0, 0)
    explained = decode_explained(bytes(explained_part))
    assert explained.matrix().shape == (4, 8)  # 7 features and the base value, for its own 4 rows
    probabilities = np.frombuffer(answer.outputs["fraud_probability"].parts()[0], dtype=np.float64)
    margins = explained.matrix().sum(axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-margins)), probabilities, rtol=0, atol=1e-6)


def test_lightgbm_with_linear_trees_is_refused_for_lightgbm_computes_no_contributions() -> None:
    """LightGBM raises "Predicting SHAP feature contributions is not implemented for linear trees": refused at the
    HTTP process from the checked text, not failed in a worker."""
    import lightgbm as lgb

    from fraud_inference.models.artifact import ModelFile
    from fraud_inference.models.flavors.lightgbm_explain import explained_margin, refusal
    from fraud_inference.models.flavors.lightgbm_text import has_linear_trees

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 3))
    labels = (features[:, 0] > 0).astype(int)
    texts = {
        linear: lgb.train(
            {"objective": "binary", "linear_tree": linear, "verbose": -1, "num_threads": 1},
            lgb.Dataset(features, label=labels), num_boost_round=2,
        ).model_to_string().encode()
        for linear in (True, False)
    }  # fmt: skip
    assert has_linear_trees(texts[True], "native")
    assert not has_linear_trees(texts[False], "native")
    model_file = ModelFile(file="model.lgb", format="native", objective="binary sigmoid:1", linear_trees=True)
    assert explained_margin(model_file) is None
    assert "linear leaves" in (refusal(model_file) or "")
