"""The dataplane: the one scoring path of every protocol. Which model, ready or not, which generation, the pool's
answer in the domain's terms, the metrics, and the observers."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec
import numpy as np
import numpy.typing as npt

from fraud_inference.errors import (
    InferenceFailedError,
    InvalidRowsError,
    NotReadyError,
    OverloadedError,
    TimedOutError,
    TooManyRowsError,
    UnknownModelError,
)
from fraud_inference.lifecycle import Generation
from fraud_inference.models.artifact import ModelArtifact
from fraud_inference.observability.metrics import Metrics
from fraud_inference.observers import Observers, ProtocolName, ScoredRequest
from fraud_inference.pool import (
    Columns,
    InferencePool,
    InferenceTimeoutError,
    PoolError,
    PoolOverloadedError,
    RequestRefusedError,
    Scores,
)
from fraud_inference.pool.messages import PYFUNC_ANSWER
from fraud_inference.registry import ModelRef
from fraud_inference.settings import Settings

__all__ = ["DataPlane", "ScoredRows", "Selection"]


class Selection(msgspec.Struct, frozen=True):
    """The model a request is scored by: its key, and the generation pinned for the whole request."""

    key: str
    generation: Generation

    @property
    def artifact(self) -> ModelArtifact:
        return self.generation.models[self.key]


class ScoredRows(msgspec.Struct, frozen=True):
    """The fraud probability of each row, in request order, and exactly which version and threshold decided it."""

    selection: Selection
    probabilities: npt.NDArray[np.float64]
    outputs: Mapping[str, bytes] = msgspec.field(default_factory=dict)
    """Every named output the request wanted, by name (`pool.messages`), as the worker encoded it."""

    @property
    def pyfunc_output(self) -> bytes | None:
        """When asked for: the JSON array of what MLflow's pyfunc wrapper of the version returns for the rows."""
        return self.outputs.get(PYFUNC_ANSWER)

    @property
    def ref(self) -> ModelRef:
        return self.selection.artifact.ref

    @property
    def flagged(self) -> npt.NDArray[np.bool_]:
        """`fraud_probability >= threshold` (the version's tag `threshold`, else 0.5), per row."""
        flagged: npt.NDArray[np.bool_] = self.probabilities >= self.ref.threshold
        return flagged


class DataPlane:
    """Select a model of the active generation and score rows with it, for every protocol alike.

    `active` gives the generation active now (None before the first) and `not_ready_reason` why there is none.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        pool: InferencePool,
        *,
        active: Callable[[], Generation | None],
        not_ready_reason: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pool = pool
        self._active = active
        self._not_ready_reason = not_ready_reason
        self.observers = Observers()
        """Handed every scored request (`observers.ScoredRequest`), after its answer is decided."""

    def check_capacity(self) -> None:
        """Raise `OverloadedError` when QUEUE_LIMIT requests already wait: call it before reading a body, since
        under a burst, reading megabytes only to refuse them is what hurts."""
        if self.pool.overloaded:
            raise OverloadedError(f"overloaded: {self.pool.overload_reason}")

    def select(self, model: str | None) -> Selection:
        """The active generation's `model` (DEFAULT_MODEL when None), pinned for the whole request.

        Raises `NotReadyError` before the first generation is active, `UnknownModelError` for a key not served.
        """
        generation = self._active()
        if generation is None:
            raise NotReadyError(self._not_ready_reason())
        key = model or self.settings.default_model
        if key not in generation.models:
            served = () if self.settings.error_detail == "generic" else tuple(generation.models)
            raise UnknownModelError(key, served)
        return Selection(key=key, generation=generation)

    async def predict(
        self,
        model: str | Selection | None,
        rows: bytes | Columns,
        request_id: str,
        *,
        protocol: ProtocolName = "v1",
        wants: tuple[str, ...] = (),
    ) -> ScoredRows:
        """Score `rows` (raw JSON: an array of row objects; or `Columns`: `dataframe_split`, OIP tensors) with
        `model`, a key or a `Selection` made earlier; with the named outputs in `wants` too
        (`pool.messages.PYFUNC_ANSWER`: what MLflow's pyfunc wrapper of the version returns for them, scored in
        the worker by the same model call). `protocol` names the router, for the observers (the decision log).

        The one scoring path of every protocol: which model, ready or not, which generation, counted in the
        metrics, handed to the observers. Raises the `PredictionError`s: `NotReadyError`, `UnknownModelError`,
        `InvalidRowsError`, `TooManyRowsError`, `OverloadedError`, `TimedOutError`, `InferenceFailedError`.
        """
        selection = model if isinstance(model, Selection) else self.select(model)
        if self.observers.wants:
            wants = (*wants, *(name for name in self.observers.wants if name not in wants))
        try:
            # The worker decodes the rows against this generation's signature: the server process stays free for HTTP.
            scores = await self.score(selection.generation, selection.key, rows, request_id, wants=wants)
        except RequestRefusedError as error:
            refusal = error.refusal
            if refusal.reason == "too_many_rows":
                raise TooManyRowsError(refusal.rows, self.settings.max_batch_rows) from None
            raise InvalidRowsError(refusal.message, row=refusal.row, feature=refusal.feature) from None
        except PoolOverloadedError as error:
            raise OverloadedError(f"overloaded: {error}") from None
        except InferenceTimeoutError as error:
            raise TimedOutError(str(error)) from None
        except PoolError as error:
            raise InferenceFailedError(f"inference failed: {error}") from None
        scored = ScoredRows(selection=selection, probabilities=scores.probabilities, outputs=scores.outputs)
        if self.observers:  # NOTE: a truth test, not a call, when nobody observes: the hot path stays as it was
            self.observers.notify(ScoredRequest(request_id=request_id, rows=rows, scored=scored, protocol=protocol))
        return scored

    async def score(
        self,
        generation: Generation,
        model: str,
        instances: bytes | Columns,
        request_id: str,
        *,
        wants: tuple[str, ...] = (),
    ) -> Scores:
        """Fraud probabilities of `generation`'s `model` for each row of `instances` (raw JSON, or `Columns`),
        counted in the metrics. The worker checks the rows against the model's signature (`RequestRefusedError` if
        they fail)."""
        scores: Scores = await self.pool.score(generation.number, model, instances, request_id, wants=wants)
        ref = generation.models[model].ref
        self.metrics.record_scores(model, ref.version, scores.probabilities, ref.threshold, scores.seconds)
        return scores
