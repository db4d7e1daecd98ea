"""Helpers of the decision-log tests: reading the dataset back as a fraud team would."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd


def read_log(directory: Path) -> pd.DataFrame:
    """The whole decision log as one table (pandas over pyarrow's dataset, hive partitions `model` and `date`)."""
    if not any(directory.rglob("*.parquet")):
        return pd.DataFrame({"request_id": pd.Series([], dtype=object)})
    return pd.read_parquet(directory)


def wait_for_rows(
    directory: Path, rows: int, timeout_s: float = 60.0, *, request_id: str | None = None
) -> pd.DataFrame:
    """The log once it holds at least `rows` rows (of `request_id`, when given); a bound, not a timing (the
    writer flushes every interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logged = read_log(directory)
        held = len(logged) if request_id is None else int((logged.request_id == request_id).sum())
        if held >= rows or time.monotonic() > deadline:
            return logged
        time.sleep(0.1)
