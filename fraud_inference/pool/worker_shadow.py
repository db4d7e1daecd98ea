"""A challenger's turn in the worker: after the champion's answer is sent, score the same decoded rows with the
challenger, and report what it decided (`Shadowed`); skip the turn when the server sent the batch while other
requests waited for the pool or were held by a worker (`Score.shadow`), or when other work waits in the pipe."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from structlog.typing import FilteringBoundLogger

from fraud_inference.pool.messages import Columns, Refused, Score
from fraud_inference.pool.shadow_messages import Shadowed
from fraud_inference.pool.worker_batch import DecodedBatch, row_slice

if TYPE_CHECKING:
    from fraud_inference.models.scoring import ServedModel
    from fraud_inference.registry import ModelRef

__all__ = ["HeldChallenger", "ShadowScorer", "is_shadowed"]

Matrix = npt.NDArray[np.float64]
# The challenger scores in chunks of about this long and checks the pipe between two: a batch that arrives
# meanwhile waits at most one chunk.
_CHUNK_NS = 5_000_000
_FIRST_CHUNK_ROWS = 256
# Rows not scored are reported at most this often, by the next turn or the heartbeat thread: a report per batch
# would cost the HTTP process a message per batch exactly when it is busiest (one round at 64 connections: 657 us
# of its CPU a request against 493 us without a challenger).
_REPORT_EVERY_S = 1.0
# At most this many `shadow.disagreement` lines a second per worker; the next line counts the ones left out.
_DISAGREEMENTS_PER_S = 20


def is_shadowed(request_id: str, share: float) -> bool:
    """Whether request `request_id` is in the SHADOW_SHARE sample: the same id always gets the same answer.

    The id's BLAKE2b hash, read as a number in [0, 1), is below `share`: a share of the ids, evenly, whatever
    they look like (UUIDs, counters); 0 takes none and 1 takes all.
    """
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


@dataclass(frozen=True, slots=True)
class HeldChallenger:
    """A challenger as a worker holds it: its loaded model, and both versions' refs (versions and thresholds)."""

    served: ServedModel
    champion: ModelRef
    challenger: ModelRef


class _Limiter:
    """Allow `per_s` events a second (a token bucket as large); count the ones refused until the next allowed."""

    def __init__(self, per_s: int) -> None:
        self._per_s = per_s
        self._tokens = float(per_s)
        self._at = time.monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._per_s, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False


class ShadowScorer:
    """Score challengers after the champion's answer, and report their turns to the server through `send`.

    `busy()` says whether other work waits in the worker's pipe (then the turn is skipped, as it is for a batch the
    server sent with `shadow` False); `share` is SHADOW_SHARE.
    """

    def __init__(
        self,
        *,
        share: float,
        busy: Callable[[], bool],
        send: Callable[[Shadowed], None],
        log: FilteringBoundLogger,
    ) -> None:
        self._share = share
        self._busy = busy
        self._send = send
        self._log = log
        self._pending: dict[str, Counter[str]] = {}  # skipped rows per model, not reported yet
        self._reported_at = time.monotonic()
        self._pending_lock = threading.Lock()  # the heartbeat thread reports what is due too (`report_due`)
        self._disagreements = _Limiter(_DISAGREEMENTS_PER_S)

    def take_turn(
        self, request: Score, batch: DecodedBatch | None, champion: ServedModel, held: HeldChallenger
    ) -> None:
        """Score the sampled requests of `batch` (the champion's `request`, answered already) with `held`'s model.

        A batch the champion did not score in one pass (`batch` None: cancelled, or some request refused by the
        model itself) is not shadowed. Never raises: whatever goes wrong here, the worker goes on serving.
        """
        try:
            self._turn(request, batch, champion, held)
        except Exception as error:
            self._log.error("shadow.error", model=request.model, error=repr(error)[:200])

    def _turn(self, request: Score, batch: DecodedBatch | None, champion: ServedModel, held: HeldChallenger) -> None:
        if batch is None:
            return
        counts: Counter[str] = Counter()
        sampled: list[int] = []  # indexes of the requests the challenger is to score
        for index, (request_id, outcome) in enumerate(zip(request.request_ids, batch.outcomes, strict=True)):
            if isinstance(outcome, Refused):
                continue
            if is_shadowed(request_id, self._share):
                sampled.append(index)
            else:
                counts["skipped_sampled"] += outcome
        if sampled and (not request.shadow or self._busy()):
            counts["skipped_busy"] += sum(_rows(batch.outcomes[index]) for index in sampled)
            sampled = []
        if not sampled:
            self._defer(request.model, counts)
            return
        self._score(request, batch, champion, held, sampled, counts)

    def _score(
        self,
        request: Score,
        batch: DecodedBatch,
        champion: ServedModel,
        held: HeldChallenger,
        sampled: list[int],
        counts: Counter[str],
    ) -> None:
        started = time.perf_counter()
        offsets = np.cumsum([0, *(_rows(outcome) for outcome in batch.outcomes)])
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in sampled])
        try:
            features = self._features(request, batch, champion, held.served, sampled, rows)
            scored = self._score_chunks(held.served, features)
        except Exception as error:
            counts["failed"] += len(rows)
            if self._disagreements.allow():
                self._log.error(
                    "shadow.failed", model=request.model, version=held.challenger.version, rows=len(rows),
                    error=repr(error)[:200],
                )  # fmt: skip
            self._defer(request.model, counts, force=True)
            return
        seconds = time.perf_counter() - started
        # Rows left unscored because a batch came meanwhile: skipped as busy, the scored ones still count.
        counts["scored"] += len(scored)
        counts["skipped_busy"] += len(rows) - len(scored)
        champion_scores = batch.probabilities[rows[: len(scored)]]
        champion_fraud = champion_scores >= held.champion.threshold
        challenger_fraud = scored >= held.challenger.threshold
        decisions = (
            int(np.count_nonzero(champion_fraud & challenger_fraud)),
            int(np.count_nonzero(champion_fraud & ~challenger_fraud)),
            int(np.count_nonzero(~champion_fraud & challenger_fraud)),
            int(np.count_nonzero(~champion_fraud & ~challenger_fraud)),
        )
        if decisions[1] or decisions[2]:
            disagreeing = np.flatnonzero(champion_fraud != challenger_fraud)
            self._log_disagreements(request, held, sampled, batch, disagreeing, champion_scores, scored)
        with self._pending_lock:
            self._send(
                Shadowed(
                    model=request.model, rows=self._take_pending(request.model, counts), decisions=decisions,
                    differences=(scored - champion_scores).tobytes(), seconds=seconds,
                )
            )  # fmt: skip

    def _features(
        self,
        request: Score,
        batch: DecodedBatch,
        champion: ServedModel,
        challenger: ServedModel,
        sampled: list[int],
        rows: npt.NDArray[np.int64],
    ) -> Any:
        """The sampled rows as the challenger's batch: the champion's decoded rows when both read the same columns
        the same way (the usual case: a retrained version), else the sampled bodies decoded again."""
        same = (
            challenger.decoder.features == champion.decoder.features
            and not challenger.decoder.frame
            and not champion.decoder.frame
        )
        if same:
            return batch.features if len(rows) == len(batch.probabilities) else batch.features[rows]
        bodies = [request.bodies[index] for index in sampled]
        return challenger.decoder.stack([_decode(challenger, body) for body in bodies])

    def _score_chunks(self, challenger: ServedModel, features: Any) -> Matrix:
        """The challenger's fraud probabilities, chunk by chunk, stopping early when other work arrives: fewer
        rows than `features` when it did."""
        total = len(features)
        chunks: list[Matrix] = []
        start, rows = 0, _FIRST_CHUNK_ROWS
        while start < total:
            if start and self._busy():
                break
            chunk_started = time.monotonic_ns()
            chunks.append(challenger.scorer.fraud_probability(row_slice(features, start, start + rows)))
            start += rows
            rows = max(1, rows * _CHUNK_NS // max(time.monotonic_ns() - chunk_started, 1))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _log_disagreements(
        self,
        request: Score,
        held: HeldChallenger,
        sampled: list[int],
        batch: DecodedBatch,
        disagreeing: npt.NDArray[np.intp],
        champion_scores: Matrix,
        challenger_scores: Matrix,
    ) -> None:
        """One `shadow.disagreement` line per row decided differently (`disagreeing`: positions among the scored
        sampled rows), as many as the rate limit allows."""
        # Each scored position's request (an index of `sampled`) and its row in that request.
        counts = [_rows(batch.outcomes[index]) for index in sampled]
        starts = np.cumsum([0, *counts])
        owners = np.searchsorted(starts, disagreeing, side="right") - 1
        for position, owner in zip(disagreeing.tolist(), owners.tolist(), strict=True):
            if not self._disagreements.allow():
                continue
            suppressed, self._disagreements.suppressed = self._disagreements.suppressed, 0
            self._log.info(
                "shadow.disagreement", request_id=request.request_ids[sampled[owner]],
                row=position - int(starts[owner]), model=request.model, champion_version=held.champion.version,
                champion_score=float(champion_scores[position]), challenger_version=held.challenger.version,
                challenger_score=float(challenger_scores[position]), suppressed=suppressed,
            )  # fmt: skip

    def report_due(self) -> None:
        """Send the skipped rows waiting longer than a report's period (called from the heartbeat thread, so that
        they reach the metrics even when no batch follows)."""
        with self._pending_lock:
            if self._pending and time.monotonic() - self._reported_at >= _REPORT_EVERY_S:
                self._report_all()

    def _defer(self, model: str, counts: Counter[str], *, force: bool = False) -> None:
        """Add skipped rows to the next report; send it now when it is due."""
        with self._pending_lock:
            self._pending.setdefault(model, Counter()).update(counts)
            if force or time.monotonic() - self._reported_at >= _REPORT_EVERY_S:
                self._report_all()

    def _report_all(self) -> None:
        for key in list(self._pending):
            rows = self._take_pending(key, Counter())
            if rows:
                self._send(Shadowed(model=key, rows=rows))

    def _take_pending(self, model: str, counts: Counter[str]) -> dict[str, int]:
        """`counts` plus what waited to be reported for `model`, which no longer waits (hold `_pending_lock`)."""
        self._reported_at = time.monotonic()
        pending = self._pending.pop(model, Counter())
        pending.update(counts)
        return {outcome: rows for outcome, rows in pending.items() if rows}


def _rows(outcome: int | Refused) -> int:
    return 0 if isinstance(outcome, Refused) else outcome


def _decode(challenger: ServedModel, body: bytes | Columns) -> Any:
    decoder = challenger.decoder
    return decoder.decode(body) if isinstance(body, bytes) else decoder.columns(body.names, body.values)
