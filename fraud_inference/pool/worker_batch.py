"""Score one batch in the worker: decode each request, score the rows chunk by chunk, answer each request its part."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
from structlog.typing import FilteringBoundLogger

from fraud_inference.models.signature import SignatureDecoder
from fraud_inference.models.signature_errors import InstancesError
from fraud_inference.pool.messages import (
    EXPLANATION,
    FEATURES,
    FRAUD_PROBABILITY,
    PYFUNC_ANSWER,
    Columns,
    Output,
    Refused,
    Score,
    Scored,
    ScoreFailed,
)
from fraud_inference.pool.worker_explain import LowPriority, explanation_output, wants_explanation

if TYPE_CHECKING:
    from fraud_inference.models.flavors import Scorer
    from fraud_inference.models.scoring import ServedModel

__all__ = ["BatchScorer", "DecodedBatch", "row_slice"]

Matrix = npt.NDArray[np.float64]
_EMPTY: Matrix = np.empty(0, dtype=np.float64)
# A large batch is scored in chunks of about this long, so a cancelled one stops soon after its requests gave
# up; the chunk's rows adapt to the model's speed (a fast model scores 10,000 rows in one or two calls, whose
# fixed cost, ~100 us for XGBoost, is then nothing beside the rows' own).
_CHUNK_NS = 50_000_000
_FIRST_CHUNK_ROWS = 256
_MAX_CHUNK_ROWS = 16_384


def row_slice(features: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of a batch: a float64 matrix, or a DataFrame on the frame path."""
    return features.iloc[start:stop] if hasattr(features, "iloc") else features[start:stop]


def _jsonable(value: Any) -> Any:
    """What MLflow's scoring server's encoder (`NumpyEncoder`) makes of a value JSON has no type for."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    isoformat = getattr(value, "isoformat", None)  # pandas Timestamp, datetime, date, time
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"predict returned a {type(value).__name__}, which MLflow's scoring server cannot encode")


# NOTE: a non-finite float becomes null (valid JSON), where MLflow's json.dump writes a bare NaN.
_encode_json = msgspec.json.Encoder(enc_hook=_jsonable).encode


def _score_rows(scorer: Scorer, rows: Any, outputs: list[Any] | None) -> Matrix:
    """The fraud probabilities of `rows`; with `outputs`, also MLflow's pyfunc answer per row, appended to it."""
    if outputs is None:
        return scorer.fraud_probability(rows)
    probabilities, answers = scorer.mlflow_predictions(rows)
    outputs.extend(answers)
    return probabilities


def _wants_pyfunc(request: Score) -> bool:
    return any(PYFUNC_ANSWER in wants for wants in request.wants)


def _outputs(
    request: Score,
    outcomes: list[int | Refused],
    probabilities: Matrix,
    answers: list[Any] | None,
    decoded: list[Any],
) -> dict[str, Output]:
    """The batch's named outputs, each request's part in batch order: the fraud probabilities (float64) of every
    scored request and, when some request wanted it, MLflow's pyfunc answer for its own rows (a JSON array) and
    the rows as the model received them (`FEATURES`; `decoded` is each request's decoded batch, or a `Refused`)."""
    rows = [0 if isinstance(outcome, Refused) else outcome for outcome in outcomes]
    outputs = {FRAUD_PROBABILITY: Output(probabilities.tobytes(), tuple(8 * count for count in rows))}
    if any(FEATURES in wants for wants in request.wants):
        # NOTE: the matrix's own bytes: ~nothing here, where decoding the JSON again in the server process cost a
        # 1-row request a fifth of its throughput (the decision log's A/B, issue #25).
        features = [
            batch.tobytes()
            if FEATURES in wants and isinstance(batch, np.ndarray) and not isinstance(outcome, Refused)
            else b""
            for wants, outcome, batch in zip(request.wants, outcomes, decoded, strict=True)
        ]
        outputs[FEATURES] = Output(b"".join(features), tuple(map(len, features)))
    if answers is not None:
        parts: list[bytes] = []
        offset = 0
        for wants, outcome, count in zip(request.wants, outcomes, rows, strict=True):
            wanted = PYFUNC_ANSWER in wants and not isinstance(outcome, Refused)
            parts.append(_encode_json(answers[offset : offset + count]) if wanted else b"")
            offset += count
        outputs[PYFUNC_ANSWER] = Output(b"".join(parts), tuple(map(len, parts)))
    return outputs


class DecodedBatch(NamedTuple):
    """A batch as the champion scored it: each request's outcome, its valid rows stacked (None if none), and their
    fraud probabilities; kept so a challenger scores the same decoded rows (worker_shadow)."""

    outcomes: tuple[int | Refused, ...]
    features: Any
    probabilities: Matrix


class BatchScorer:
    """Turn a `Score` into its answer: `Scored` with each request's outcome and outputs, or `ScoreFailed`.

    `is_cancelled(seq)` says whether every request of batch `seq` has given up; it is asked before decoding
    and between chunks, and a cancelled batch is answered unscored. A batch of explained requests is decoded and
    scored on the calling thread (the worker calls it on its explanation lane, `worker_explain.ExplainLane`), and
    explained at `explain_nice` (`LowPriority`).
    """

    def __init__(
        self,
        *,
        max_rows: int,
        is_cancelled: Callable[[int], bool],
        log: FilteringBoundLogger,
        explain_nice: int = 0,
    ) -> None:
        self._max_rows = max_rows
        self._explain = LowPriority(explain_nice)
        self._is_cancelled = is_cancelled
        self._log = log
        self.last: DecodedBatch | None = None
        """The last batch scored in one pass (None after a cancelled or partly refused one)."""

    def score(self, request: Score, served: ServedModel) -> Scored | ScoreFailed:
        """Score the batch `request` with `served`, and answer it."""
        started = time.perf_counter()
        self.last = None
        outcomes: list[int | Refused] = []
        batches: list[Any] = []
        if self._is_cancelled(request.seq):
            return self._dropped(request)
        decoded, stacked = self._decode_batch(served.decoder, request.bodies)
        for outcome in decoded:
            if isinstance(outcome, Refused):
                outcomes.append(outcome)
            else:
                outcomes.append(len(outcome))
                batches.append(outcome)
        # Contributions only for the rows of the requests that want them, from the library's own trees.
        explained = (
            self._explain.run(explanation_output, request, outcomes, batches, served.scorer, self._log)
            if wants_explanation(request)
            else None
        )
        # MLflow's pyfunc answer comes from the same model call as the probabilities, for every row of the batch.
        outputs: list[Any] | None = [] if _wants_pyfunc(request) else None
        try:
            # One model call per chunk of the whole batch: its fixed cost (~100 us for XGBoost) is paid once
            # for a batch of small requests; a large one is scored chunk by chunk, and dropped between two
            # when every request of the batch has given up.
            features = stacked if stacked is not None else served.decoder.stack(batches) if batches else None
            total = 0 if features is None else len(features)
            chunks: list[Matrix] = []
            start, rows = 0, _FIRST_CHUNK_ROWS
            while start < total:
                if self._is_cancelled(request.seq):
                    return self._dropped(request, scored_rows=start)
                chunk_started = time.monotonic_ns()
                chunks.append(_score_rows(served.scorer, row_slice(features, start, start + rows), outputs))
                start += rows
                elapsed = max(time.monotonic_ns() - chunk_started, 1)
                rows = max(1, min(_MAX_CHUNK_ROWS, rows * _CHUNK_NS // elapsed))
            probabilities = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else _EMPTY
            self.last = DecodedBatch(tuple(outcomes), features, probabilities)
        except Exception as error:
            outcomes, probabilities, outputs = self._score_alone(request, served, outcomes, batches, error)
        seconds = time.perf_counter() - started
        self._log.debug(
            "batch.scored",
            request_ids=request.request_ids,
            model=request.model,
            generation=request.generation,
            rows=len(probabilities),
            ms=round(seconds * 1000, 3),
        )
        named = _outputs(request, outcomes, probabilities, outputs, decoded)
        if explained is not None:
            named[EXPLANATION] = explained
        return Scored(seq=request.seq, outcomes=tuple(outcomes), outputs=named, seconds=seconds)

    def _score_alone(
        self,
        request: Score,
        served: ServedModel,
        outcomes: list[int | Refused],
        batches: list[Any],
        error: Exception,
    ) -> tuple[list[int | Refused], Matrix, list[Any] | None]:
        """Answer a batch the model failed on with `error`: each request is scored on its own, and each one the
        model still fails on is a 422 (`invalid_rows`), so it never fails the requests batched with it.

        NOTE: rows the probes at load did not foresee (a custom model's own checks): this is the one place that
        turns the model's failure into a request's 422, for a batch of one request or of many.
        """
        self._log.error(
            "score.failed", request_ids=request.request_ids, model=request.model, generation=request.generation,
            requests=len(batches), error=repr(error)[:200],
        )  # fmt: skip
        scored: list[Matrix] = []
        pending = iter(batches)
        answered: list[int | Refused] = []
        outputs: list[Any] | None = [] if _wants_pyfunc(request) else None
        for request_id, outcome in zip(request.request_ids, outcomes, strict=True):
            if isinstance(outcome, Refused):
                answered.append(outcome)
                continue
            try:
                if len(batches) == 1:
                    raise error  # alone in its batch: the error is its own, no need to score it again
                own: list[Any] | None = None if outputs is None else []
                scored.append(_score_rows(served.scorer, next(pending), own))
                if outputs is not None and own is not None:
                    outputs.extend(own)
            except Exception as refusal:
                self._log.warning(
                    "score.refused_by_model", request_id=request_id, model=request.model,
                    generation=request.generation, error=repr(refusal)[:200],
                )  # fmt: skip
                answered.append(Refused(reason="invalid_rows", message=f"the model cannot score these rows: {refusal}"))
            else:
                answered.append(outcome)
        return answered, np.concatenate(scored) if scored else _EMPTY, outputs

    def _dropped(self, request: Score, *, scored_rows: int = 0) -> ScoreFailed:
        """Answer a cancelled batch without scoring the rest: nobody waits for it, but its slot is freed."""
        self._log.info("batch.cancelled", request_ids=request.request_ids, scored_rows=scored_rows)
        return ScoreFailed(seq=request.seq, error="cancelled: every request of the batch gave up")

    def _decode_batch(self, decoder: SignatureDecoder, bodies: Sequence[bytes | Columns]) -> tuple[list[Any], Any]:
        """Each request's decoded rows, or its `Refused`; and the rows of those not refused as one matrix, or None
        when the caller stacks them (`SignatureDecoder.stack`).

        NOTE: the fast path (a float64-matrix model, every body rows of JSON) decodes each body into row objects and
        makes all of them one matrix, checked once: per request, only msgspec's decode (the matrix and its checks
        cost a 1-row request ~15 us on their own). A body it refuses (does not decode, too many rows), and every
        body when the checks refuse a value, is decoded again alone by `_decode`, so each refusal is word for word
        the one-by-one path's.
        """
        texts = [body for body in bodies if isinstance(body, bytes)]
        if decoder.frame or len(texts) != len(bodies):
            return [self._decode(decoder, body) for body in bodies], None
        parsed: list[list[Any] | None] = []
        for text in texts:
            try:
                rows: list[Any] | None = decoder.rows(text)
            except Exception:  # refused below, in `_decode`'s words
                rows = None
            parsed.append(rows if rows is not None and len(rows) <= self._max_rows else None)
        valid = [rows for rows in parsed if rows is not None]
        refused = {i: self._decode(decoder, texts[i]) for i, rows in enumerate(parsed) if rows is None}
        stacked = None
        # (A body refused by `rows` that `_decode` takes after all: never seen; then the caller stacks them.)
        if valid and all(isinstance(outcome, Refused) for outcome in refused.values()):
            with contextlib.suppress(Exception):  # a value refused: which request holds it, in its own row numbers
                stacked = decoder.stacked(valid)
        if stacked is None:
            return [refused[i] if i in refused else self._decode(decoder, text) for i, text in enumerate(texts)], None
        decoded: list[Any] = []
        start = 0
        for i, rows in enumerate(parsed):
            if rows is None:
                decoded.append(refused[i])
            else:
                decoded.append(stacked[start : start + len(rows)])
                start += len(rows)
        return decoded, stacked

    def _decode(self, decoder: SignatureDecoder, body: bytes | Columns) -> Any:
        try:
            matrix = decoder.decode(body) if isinstance(body, bytes) else decoder.columns(body.names, body.values)
        except InstancesError as error:
            return Refused(reason="invalid_rows", message=error.problem, row=error.row, feature=error.feature)
        except Exception as error:  # whatever a hostile body does, it fails alone and the worker lives on
            self._log.error("decode.failed", error=repr(error)[:200])
            return Refused(reason="invalid_rows", message="cannot be decoded")
        if len(matrix) > self._max_rows:
            return Refused(
                reason="too_many_rows",
                message=f"{len(matrix)} rows exceed MAX_BATCH_ROWS={self._max_rows}",
                rows=len(matrix),
            )
        return matrix
