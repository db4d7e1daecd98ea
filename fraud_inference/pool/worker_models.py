"""The models one worker holds, per generation: loaded beside the served ones, found by name, dropped."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from fraud_inference.models.explain import load_refusal
from fraud_inference.models.signature import ExtraFeatures
from fraud_inference.models.signature_errors import ErrorDetail
from fraud_inference.pool.messages import GenerationLoaded, LoadGeneration
from fraud_inference.pool.shadow_messages import challenger_load_error_key
from fraud_inference.pool.worker_shadow import HeldChallenger

if TYPE_CHECKING:
    from fraud_inference.models.scoring import ServedModel

__all__ = ["HeldGenerations"]


class HeldGenerations:
    """Load, find and drop the generations of models this worker serves.

    `load` runs on a thread of its own while the scoring thread finds models in the generations held so far.
    """

    def __init__(self, *, error_detail: ErrorDetail, extra_features: ExtraFeatures, log: FilteringBoundLogger) -> None:
        self._error_detail = error_detail
        self._extra_features = extra_features
        self._log = log
        self._generations: dict[int, dict[str, ServedModel]] = {}
        self._challengers: dict[int, dict[str, HeldChallenger]] = {}
        # The same files (same version, same download) load once and are shared between generations.
        self._models_by_path: dict[int, dict[str, ServedModel]] = {}
        self._frozen = False

    def model(self, generation: int, model: str) -> ServedModel | None:
        """Model `model` of `generation`; None when this worker does not hold it."""
        return self._generations.get(generation, {}).get(model)

    def challenger(self, generation: int, model: str) -> HeldChallenger | None:
        """The challenger of `generation`'s `model`; None when it has none."""
        return self._challengers.get(generation, {}).get(model)

    def drop(self, generation: int) -> None:
        """Release `generation`: its models are freed unless another generation shares them."""
        self._generations.pop(generation, None)
        self._challengers.pop(generation, None)
        self._models_by_path.pop(generation, None)

    def load(self, request: LoadGeneration) -> GenerationLoaded:
        """Load every model of `request`, and hold them as its generation when all of them loaded."""
        from fraud_inference.models.scoring import load_model

        loaded: dict[str, ServedModel] = {}
        errors: dict[str, str] = {}
        seconds: dict[str, float] = {}
        held = {path: model for by_path in list(self._models_by_path.values()) for path, model in by_path.items()}
        by_path: dict[str, ServedModel] = {}
        for artifact in request.models:
            started = time.perf_counter()
            key = artifact.ref.key
            try:
                # Loaded, warmed up and probed: it scores before the generation can become active.
                served = held.get(artifact.path) or load_model(
                    artifact, detail=self._error_detail, extra=self._extra_features
                )
                by_path[artifact.path] = served
                loaded[key] = served
            except Exception as error:
                errors[key] = f"{type(error).__name__}: {error}"
            seconds[key] = time.perf_counter() - started
            if key in loaded:
                self._log.info(
                    "model.loaded", model=key, name=artifact.ref.name, version=artifact.ref.version,
                    generation=request.generation, seconds=round(seconds[key], 3),
                )  # fmt: skip
            else:
                self._log.error(
                    "model.load_failed", model=key, name=artifact.ref.name, version=artifact.ref.version,
                    generation=request.generation, seconds=round(seconds[key], 3), error=errors[key],
                )  # fmt: skip
        champions = {artifact.ref.key: artifact.ref for artifact in request.models}
        challengers: dict[str, HeldChallenger] = {}
        for artifact in request.challengers if not errors else ():
            # A challenger that fails to load is named apart, so the server retries the generation without it.
            key, started = artifact.ref.key, time.perf_counter()
            try:
                served = (
                    held.get(artifact.path)
                    or by_path.get(artifact.path)
                    or load_model(artifact, detail=self._error_detail, extra=self._extra_features)
                )
            except Exception as error:
                errors[challenger_load_error_key(key)] = f"{type(error).__name__}: {error}"
                self._log.error(
                    "challenger.load_failed", model=key, version=artifact.ref.version, error=errors[
                        challenger_load_error_key(key)]
                )  # fmt: skip
                continue
            by_path[artifact.path] = served
            challengers[key] = HeldChallenger(served=served, champion=champions[key], challenger=artifact.ref)
            self._log.info(
                "challenger.loaded", model=key, version=artifact.ref.version, generation=request.generation,
                seconds=round(time.perf_counter() - started, 3),
            )  # fmt: skip
        if not errors:
            self._challengers[request.generation] = challengers
            self._models_by_path[request.generation] = by_path
            self._generations[request.generation] = loaded
            if not self._frozen:
                # The libraries stay: keep full collections from rescanning them (see service). Once, after a
                # collection: a frozen cycle is never freed, and every later generation's models are dropped.
                gc.collect()
                gc.freeze()
                self._frozen = True
        classes = {key: served.scorer.positive_class for key, served in loaded.items()}
        refusals = {key: why for key, served in loaded.items() if (why := load_refusal(served.scorer)) is not None}
        return GenerationLoaded(
            generation=request.generation, errors=errors, load_seconds=seconds, positive_classes=classes,
            explain_refusals=refusals,
        )  # fmt: skip
