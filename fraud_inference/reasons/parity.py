"""The parity gate's check of explanations: served contributions equal the library's own on MLflow's loaded model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.models.explain import explain_refusal, explainer_of, library_contributions
from fraud_inference.models.tolerance import TOLERANCE

__all__ = ["contribution_failures", "largest_contribution_difference"]


def largest_contribution_difference(artifact: ModelArtifact, served: Any, rows: list[dict[str, Any]]) -> float | None:
    """The largest |served - library| contribution (base value included) over `rows`, each scored alone as the gate
    scores them; None when the version is not explained or no row could be compared.

    Served: what the workers compute (`explainer_of(scorer).contributions` on the request decoder's batch).
    Library: `pred_contribs` / `pred_contrib` of the model `mlflow.<flavour>.load_model` returns, on the row as a
    client's DataFrame (`library_contributions`).
    """
    from fraud_inference.parity import mlflow_frame

    explainer = explainer_of(served.scorer)
    if explain_refusal(artifact) is not None or explainer is None:
        return None
    largest: float | None = None
    for row in rows:
        try:
            got = explainer.contributions(served.decoder.decode(json.dumps([row]).encode()))
        except Exception:  # a row the service refuses is the probabilities' failure, reported there
            continue
        frame = mlflow_frame(artifact, served, row)
        expected = library_contributions(artifact, frame, served.scorer.positive_class)
        difference = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        largest = difference if largest is None else max(largest, difference)
    return largest


def contribution_failures(artifact: ModelArtifact, served: Any, rows: list[dict[str, Any]], where: str) -> list[str]:
    """The gate's failures for the version's explanations: none when they equal the library's within 1e-6."""
    try:
        difference = largest_contribution_difference(artifact, served, rows)
    except Exception as error:
        return [f"{where}: its contributions cannot be compared with MLflow's loaded model: {error!r}"]
    if difference is None or difference <= TOLERANCE:
        return []
    return [
        f"{where}: served feature contributions differ from pred_contribs of MLflow's loaded model by {difference:.3g} "
        f"(> {TOLERANCE:g}); explanations would not be the library's own"
    ]
