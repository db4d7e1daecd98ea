"""Reason codes: the in-process cost of an explained batch against a plain one (XGBoost and LightGBM, one thread).

    uv run python -m benchmarks.explain_cost [--calls 200]

Trains an XGBoost and a LightGBM classifier of the demo models' size (200 trees, depth 6, 20 features; LightGBM
31 leaves) on synthetic rows, then times 1-, 10- and 100-row batches: plain scoring (`inplace_predict`,
`Booster.predict`) against what a worker computes for an explained request (`xgboost_explain.tree_contributions`:
a DMatrix and `pred_contribs`; `lightgbm_explain.tree_contributions`: `pred_contrib`), back to back, and prints
each per-call time and their ratio. Only ratios measured in one run mean something on a shared machine.
"""

from __future__ import annotations

import os

# NOTE: one thread, as in the workers, before XGBoost starts its OpenMP pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _per_call_us(call: Callable[[], object], calls: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    import lightgbm
    import xgboost

    from fraud_inference.models.flavors import lightgbm_explain, xgboost_explain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    calls = parser.parse_args().calls
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5000, 20))
    labels = (features[:, 0] + features[:, 1] * features[:, 2] + rng.normal(size=5000) > 1).astype(int)
    xgb_booster = xgboost.XGBClassifier(n_estimators=200, max_depth=6, n_jobs=1).fit(features, labels).get_booster()
    xgb_booster.set_param({"nthread": 1})
    lgb_booster = lightgbm.LGBMClassifier(
        n_estimators=200, max_depth=6, num_leaves=31, n_jobs=1, verbose=-1
    ).fit(features, labels).booster_  # fmt: skip
    models: dict[str, tuple[Callable[[Any], object], Callable[[Any], object]]] = {
        "xgboost": (
            xgb_booster.inplace_predict,
            functools.partial(xgboost_explain.tree_contributions, xgb_booster, iteration_range=(0, 0)),
        ),
        "lightgbm": (
            functools.partial(lgb_booster.predict, num_threads=1),
            functools.partial(lightgbm_explain.tree_contributions, lgb_booster),
        ),
    }
    for name, (score, explain) in models.items():
        for rows in (1, 10, 100):
            batch = rng.normal(size=(rows, 20))
            plain = _per_call_us(functools.partial(score, batch), calls)
            explained = _per_call_us(functools.partial(explain, batch), max(1, calls // rows * 4))
            print(
                f"{name:>8} {rows:>4} rows: plain {plain:,.0f} us, explained {explained:,.0f} us "
                f"({explained / plain:.1f}x; {explained / rows:,.0f} us per explained row)",
                flush=True,
            )


if __name__ == "__main__":
    main()
