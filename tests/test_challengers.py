"""A challenger refused because the registry could not be reached: tried again at each refresh, but a refresh whose
only change would be that retry loads no new generation while the registry still cannot be reached."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from fraud_inference.challengers import Challengers, prepare_challengers, still_unreachable
from fraud_inference.models.artifact import ModelArtifact, UnservableModelError
from fraud_inference.registry import ModelRef, RegistryUnavailableError

CHALLENGER = ModelRef(
    key="xgboost", name="fraud-xgboost", version="2", selected_by="alias:challenger", run_id=None, threshold=0.5
)


def unreachable(ref: ModelRef) -> ModelArtifact:
    """A fault, faked: the registry's artifact store does not answer (Registry.download raises this)."""
    raise RegistryUnavailableError(f"cannot download {ref.uri} for model {ref.key!r}: connection refused")


async def no_parity_refusals(_artifacts: list[ModelArtifact]) -> dict[str, str]:
    return {}


def test_a_challenger_the_registry_cannot_serve_is_refused_for_now_and_found_again_at_the_same_version() -> None:
    settled = asyncio.run(
        prepare_challengers({"xgboost": CHALLENGER}, Challengers(), fetch=unreachable, gate=no_parity_refusals)
    )
    assert settled.active == {}
    refusal = settled.refused["xgboost"]
    assert not refusal.final
    assert refusal.reason.startswith(f"cannot download {CHALLENGER.uri}")
    assert settled.refs() == {}  # not settled: the next refresh tries it again
    assert settled.unreachable({"xgboost": CHALLENGER}) == {"xgboost": CHALLENGER}
    moved = msgspec.structs.replace(CHALLENGER, version="3")
    assert settled.unreachable({"xgboost": moved}) == {}  # the alias moved: a new version, fetched anew


@pytest.mark.parametrize(("fails", "expected"), [(True, True), (False, False)])
def test_still_unreachable_says_whether_a_retry_would_fail_the_same_way(fails: bool, expected: bool) -> None:
    def fetch(ref: ModelRef) -> ModelArtifact:
        if fails:
            return unreachable(ref)
        # Reached, but the version itself cannot be served: a final refusal, for a new generation to record.
        raise UnservableModelError(f"model {ref.key!r}: not servable")

    assert asyncio.run(still_unreachable({"xgboost": CHALLENGER}, fetch=fetch)) is expected
