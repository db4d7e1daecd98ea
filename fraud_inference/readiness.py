"""One view of whether the service can score, read by `/readyz`, `/metrics` and the routes alike."""

from __future__ import annotations

import msgspec

from fraud_inference.pool import PoolStatus

__all__ = ["Readiness", "readiness_of"]


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """Ready when a generation is active and a live worker holds it; else `reason` says why not."""

    ready: bool
    generation: int | None
    """The active generation's number; None before the first is loaded."""
    reason: str | None
    """Why not ready (with the last worker failure when no worker holds the active models); None when ready."""
    pool: PoolStatus


def readiness_of(
    active: int | None, not_ready_reason: str, pool: PoolStatus, last_worker_failure: str | None
) -> Readiness:
    """The service's readiness from its active generation (`active`), why it has none, and its pool's status."""
    if active is not None and pool.ready_workers > 0:
        return Readiness(ready=True, generation=active, reason=None, pool=pool)
    reason = not_ready_reason if active is None else "no live worker holds the active models"
    if last_worker_failure and pool.ready_workers == 0:
        reason = f"{reason}; last worker failure: {last_worker_failure}"
    return Readiness(ready=False, generation=active, reason=reason, pool=pool)
