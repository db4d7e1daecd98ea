"""SHADOW_SHARE's sample: decided by the request id alone, the same for a retry, and close to the share asked."""

from __future__ import annotations

import uuid

from fraud_inference.pool.worker_shadow import is_shadowed


def test_a_request_id_is_shadowed_the_same_way_every_time() -> None:
    ids = [str(uuid.uuid4()) for _ in range(1_000)]
    first = [is_shadowed(request_id, 0.3) for request_id in ids]
    assert [is_shadowed(request_id, 0.3) for request_id in ids] == first


def test_the_sample_is_about_the_share_asked_and_grows_with_it() -> None:
    ids = [f"req-{n}" for n in range(20_000)]  # counters, not random ids: the hash spreads them too
    for share in (0.01, 0.1, 0.5, 0.9):
        taken = sum(is_shadowed(request_id, share) for request_id in ids) / len(ids)
        assert abs(taken - share) < 0.02, (share, taken)
    small = {request_id for request_id in ids if is_shadowed(request_id, 0.2)}
    large = {request_id for request_id in ids if is_shadowed(request_id, 0.6)}
    assert small <= large  # raising the share only adds requests: what was compared stays compared


def test_share_zero_takes_none_and_one_takes_all() -> None:
    assert not any(is_shadowed(f"r{n}", 0.0) for n in range(100))
    assert all(is_shadowed(f"r{n}", 1.0) for n in range(100))
