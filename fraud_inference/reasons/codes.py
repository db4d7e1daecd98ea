"""Reason codes: the version tag `reason_codes` mapping features to the codes and texts an analyst reads."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import msgspec

__all__ = ["REASON_CODES_TAG", "ReasonCode", "reason_codes"]

REASON_CODES_TAG = "reason_codes"
"""The version tag holding the mapping, as JSON: `{"amount": {"code": "R01", "text": "Amount unusually high"}}`."""


class ReasonCode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a feature's reason reads as: a short code (adverse-action notices) and its text."""

    code: str
    text: str


_decode = msgspec.json.Decoder(dict[str, ReasonCode]).decode


@functools.lru_cache(maxsize=64)
def reason_codes(raw: str | None, features: Sequence[str], where: str) -> dict[str, ReasonCode]:
    """The mapping of the tag's JSON `raw` (empty without the tag), checked against the signature's `features`.

    Raises `ValueError` naming the version (`where`) when the JSON is not `{feature: {"code", "text"}}` or names a
    feature the signature lacks: a code for a feature the model never sees would never be given. Cached: the
    HTTP process reads it per explained request. `features` must be hashable (a tuple).
    """
    if raw is None:
        return {}
    try:
        mapping = _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ValueError(
            f"{where}: version tag {REASON_CODES_TAG} must be JSON "
            '{"<feature>": {"code": "...", "text": "..."}}: ' + str(error)
        ) from None
    unknown = sorted(set(mapping) - set(features))
    if unknown:
        raise ValueError(
            f"{where}: version tag {REASON_CODES_TAG} names features the signature does not have: {unknown}; "
            f"the signature's features are {list(features)}"
        )
    return mapping
