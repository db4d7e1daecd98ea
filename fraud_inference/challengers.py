"""Challengers: per served model, the version under CHALLENGER_ALIAS, fetched and gated like a champion but never
in its way: a challenger that fails a gate is refused, with its reason, and the champion is served without it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from fraud_inference.models.artifact import ModelArtifact, UnservableModelError
from fraud_inference.observability.logging import get_logger
from fraud_inference.registry import ModelRef, RegistryUnavailableError, ResolutionError

__all__ = ["Challengers", "RefusedChallenger", "prepare_challengers", "still_unreachable"]

log = get_logger("fraud_inference.service")


class RefusedChallenger(msgspec.Struct, frozen=True):
    """A challenger left out of its generation, and why. `final`: refused by a gate (a property of the version,
    not tried again until the alias moves); else the registry could not be reached, tried again at each refresh."""

    ref: ModelRef
    reason: str
    final: bool = True


class Challengers(msgspec.Struct, frozen=True):
    """The challengers of one generation: those loaded beside their champions, and those refused."""

    active: dict[str, ModelArtifact] = msgspec.field(default_factory=dict)
    refused: dict[str, RefusedChallenger] = msgspec.field(default_factory=dict)

    def refs(self) -> dict[str, ModelRef]:
        """Per model key, the challenger version this generation settled (loaded, or refused for good)."""
        settled = {key: refused.ref for key, refused in self.refused.items() if refused.final}
        return {**settled, **{key: artifact.ref for key, artifact in self.active.items()}}

    def unreachable(self, wanted: Mapping[str, ModelRef]) -> dict[str, ModelRef]:
        """Those of `wanted` (by model key) this generation refused for now, at the same version, because the
        registry could not be reached."""
        return {
            key: ref
            for key, ref in wanted.items()
            if key in self.refused and self.refused[key].ref == ref and not self.refused[key].final
        }

    def refuse(self, reasons: Mapping[str, str]) -> Challengers:
        """These challengers, with those named in `reasons` (by model key) refused for that reason."""
        refused = {key: RefusedChallenger(self.active[key].ref, reason) for key, reason in reasons.items()}
        for key, refusal in refused.items():
            log.warning("challenger.refused", model=key, version=refusal.ref.version, reason=refusal.reason)
        return Challengers(
            active={key: artifact for key, artifact in self.active.items() if key not in reasons},
            refused={**self.refused, **refused},
        )


async def still_unreachable(refs: Mapping[str, ModelRef], *, fetch: Callable[[ModelRef], ModelArtifact]) -> bool:
    """Whether fetching any of `refs` (challengers refused because the registry could not be reached) still fails
    for that reason. A fetch that succeeds is kept by `fetch`'s download cache for the generation that loads it."""
    fetched = await asyncio.gather(*(asyncio.to_thread(fetch, ref) for ref in refs.values()), return_exceptions=True)
    return any(isinstance(outcome, RegistryUnavailableError) for outcome in fetched)


async def prepare_challengers(
    wanted: Mapping[str, ModelRef],
    previous: Challengers,
    *,
    fetch: Callable[[ModelRef], ModelArtifact],
    gate: Callable[[list[ModelArtifact]], Awaitable[dict[str, str]]],
) -> Challengers:
    """Fetch and gate each challenger in `wanted` (by model key), reusing what `previous` settled for the same
    version: loaded ones are not gated again, and ones refused by a gate stay refused.

    `fetch` downloads a version and runs its dependency and trust checks (raising `UnservableModelError`,
    `ResolutionError` or `RegistryUnavailableError`); `gate` returns the parity gate's refusals by model key.
    """
    active: dict[str, ModelArtifact] = {}
    refused: dict[str, RefusedChallenger] = {}
    to_fetch: dict[str, ModelRef] = {}
    for key, ref in wanted.items():
        if key in previous.active and previous.active[key].ref == ref:
            active[key] = previous.active[key]
        elif key in previous.refused and previous.refused[key].ref == ref and previous.refused[key].final:
            refused[key] = previous.refused[key]
        else:
            to_fetch[key] = ref
    fetched = await asyncio.gather(
        *(asyncio.to_thread(fetch, ref) for ref in to_fetch.values()), return_exceptions=True
    )
    new: list[ModelArtifact] = []
    for (key, ref), outcome in zip(to_fetch.items(), fetched, strict=True):
        if isinstance(outcome, UnservableModelError | ResolutionError):
            refused[key] = RefusedChallenger(ref, str(outcome))
        elif isinstance(outcome, RegistryUnavailableError):
            refused[key] = RefusedChallenger(ref, str(outcome), final=False)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            new.append(outcome)
    failures = await gate(new) if new else {}
    for artifact in new:
        key = artifact.ref.key
        if key in failures:
            refused[key] = RefusedChallenger(artifact.ref, f"parity check: {failures[key]}")
        else:
            active[key] = artifact
    for key, refusal in refused.items():
        if key not in previous.refused or previous.refused[key] != refusal:
            log.warning("challenger.refused", model=key, version=refusal.ref.version, reason=refusal.reason)
    return Challengers(active=active, refused=refused)
