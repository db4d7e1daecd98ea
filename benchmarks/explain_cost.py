"""Reason codes: the in-process cost of an explained batch against a plain one (XGBoost, one thread).

    uv run python -m benchmarks.explain_cost [--calls 200]

Trains an XGBoost classifier of the demo model's size (200 trees, depth 6, 20 features) on synthetic rows, then
times 1-, 10- and 100-row batches: `inplace_predict` (plain scoring) against `xgboost_explain.tree_contributions`
(what a worker computes for an explained request: a DMatrix and `pred_contribs`), and prints each per-call time
and their ratio. Only ratios measured in one run mean something on a shared machine.
"""

from __future__ import annotations

import os

# NOTE: one thread, as in the workers, before XGBoost starts its OpenMP pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import functools
import time
from collections.abc import Callable

import numpy as np


def _per_call_us(call: Callable[[], object], calls: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    import xgboost

    from fraud_inference.models.flavors.xgboost_explain import tree_contributions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    calls = parser.parse_args().calls
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5000, 20))
    labels = (features[:, 0] + features[:, 1] * features[:, 2] + rng.normal(size=5000) > 1).astype(int)
    booster = xgboost.XGBClassifier(n_estimators=200, max_depth=6, n_jobs=1).fit(features, labels).get_booster()
    booster.set_param({"nthread": 1})
    for rows in (1, 10, 100):
        batch = rng.normal(size=(rows, 20))
        plain = _per_call_us(functools.partial(booster.inplace_predict, batch), calls)
        explain = functools.partial(tree_contributions, booster, batch, (0, 0))
        explained = _per_call_us(explain, max(1, calls // rows * 4))
        print(
            f"{rows:>4} rows: plain {plain:,.0f} us, explained {explained:,.0f} us "
            f"({explained / plain:.1f}x; {explained / rows:,.0f} us per explained row)"
        )


if __name__ == "__main__":
    main()
