"""Scoring observers: what the core hands over after each scored request, for the capabilities that watch
traffic (a decision log, a challenger's agreement figures) without sitting on the request's path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import msgspec

from fraud_inference.observability.logging import get_logger

if TYPE_CHECKING:
    from fraud_inference.dataplane import ScoredRows
    from fraud_inference.pool.messages import Columns

__all__ = ["Observers", "ProtocolName", "ScoredRequest", "ScoringObserver"]

log = get_logger("fraud_inference.observers")

ProtocolName = Literal["v1", "mlflow", "oip", "grpc"]
"""Which protocol a request came through: `/v1/predict`, MLflow's `/invocations`, or the Open Inference Protocol."""


class ScoredRequest(msgspec.Struct, frozen=True):
    """One scored request, as the core served it: the model, generation and threshold that decided it (`scored`),
    its request id, and its rows exactly as the protocol handed them to the core (raw JSON row objects, or
    `Columns`), and the protocol it came through."""

    request_id: str
    rows: bytes | Columns
    scored: ScoredRows
    protocol: ProtocolName = "v1"


ScoringObserver = Callable[[ScoredRequest], None]
"""Called on the event loop after the request's answer is decided; must not block (hand work to a thread)."""


class Observers:
    """The observers registered with the core; each scored request is handed to every one of them.

    NOTE: handed over with `call_soon`, after the request's own code has run: an observer never delays the answer
    it observes, and one that raises is logged and skipped, never failing the request or the other observers.
    """

    def __init__(self) -> None:
        self._observers: list[ScoringObserver] = []
        self._wants: dict[ScoringObserver, tuple[str, ...]] = {}
        self.wants: tuple[str, ...] = ()
        """The named outputs (`pool.messages`) some observer needs from the worker beside the probabilities."""

    def add(self, observer: ScoringObserver, *, wants: tuple[str, ...] = ()) -> None:
        """Hand every scored request to `observer`, with the worker's named outputs `wants` in its `scored`."""
        self._observers.append(observer)
        self._wants[observer] = wants
        self._update_wants()

    def remove(self, observer: ScoringObserver) -> None:
        self._observers.remove(observer)
        self._wants.pop(observer, None)
        self._update_wants()

    def _update_wants(self) -> None:
        self.wants = tuple(dict.fromkeys(name for wants in self._wants.values() for name in wants))

    def __bool__(self) -> bool:
        return bool(self._observers)

    def notify(self, request: ScoredRequest) -> None:
        """Hand `request` to every observer, after the current turn of the event loop."""
        if self._observers:
            asyncio.get_running_loop().call_soon(self._hand_over, request, tuple(self._observers))

    @staticmethod
    def _hand_over(request: ScoredRequest, observers: tuple[ScoringObserver, ...]) -> None:
        for observer in observers:
            try:
                observer(request)
            except Exception as error:
                log.error(
                    "observer.failed", observer=getattr(observer, "__qualname__", repr(observer)),
                    request_id=request.request_id, error=repr(error)[:300],
                )  # fmt: skip
