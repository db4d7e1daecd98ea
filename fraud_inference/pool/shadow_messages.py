"""What a worker tells the server about its challengers' turns: counts and score shifts, never a client's answer."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["CHALLENGER_LOAD_ERROR", "ShadowOutcome", "Shadowed", "challenger_load_error_key"]

ShadowOutcome = Literal["scored", "skipped_busy", "skipped_sampled", "failed"]
"""What became of a row the challenger could have scored: scored; skipped because other work waited (requests in
the server's queue or held by a worker when its batch was sent, or a message in the worker's pipe); not in the
SHADOW_SHARE sample; or the challenger failed on it."""

CHALLENGER_LOAD_ERROR = "challenger "
"""Prefix of a `GenerationLoaded.errors` key naming a challenger the worker could not load (`challenger fraud`)."""


def challenger_load_error_key(model: str) -> str:
    """The `GenerationLoaded.errors` key of model `model`'s challenger."""
    return f"{CHALLENGER_LOAD_ERROR}{model}"


class Shadowed(msgspec.Struct, tag="shadowed", frozen=True, array_like=True):
    """One worker's report on challenger `model`'s turns since its last report.

    `rows` counts rows per `ShadowOutcome`. For the scored rows: `decisions` counts them by (champion, challenger)
    decision, each at its own version's threshold, in the order (fraud, fraud), (fraud, legit), (legit, fraud),
    (legit, legit); `differences` is the float64 `challenger - champion` fraud probability of each; `seconds` the
    challenger's scoring time (None when it scored nothing).
    """

    model: str
    rows: dict[str, int]
    decisions: tuple[int, int, int, int] = (0, 0, 0, 0)
    differences: bytes = b""
    seconds: float | None = None
