"""The batching queue's rules, decided without processes: what leaves together, in what order, and when."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from fraud_inference.pool import PoolOverloadedError, Scores
from fraud_inference.pool.queue import BatchPolicy, PendingRequest, RequestQueue

_seq = itertools.count(1)
_loop = asyncio.new_event_loop()  # futures need a loop; nothing here runs on it


@pytest.fixture(scope="module", autouse=True)
def _close_loop() -> Iterator[None]:
    yield
    _loop.close()


class FixedClock:
    """A monotonic clock standing still at `now_ns` until a test moves it: the queue's timing is decided
    by this value alone, whatever the machine's uptime."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def request(generation: int, model: str, body: bytes = b"[{}]") -> PendingRequest:
    future: asyncio.Future[Scores] = _loop.create_future()
    return PendingRequest(next(_seq), generation, model, body, "id", future)


def test_a_batch_never_mixes_models_or_generations_and_the_oldest_key_goes_first() -> None:
    queue = RequestQueue(BatchPolicy(max_requests=10), limit=100)
    first, other_model, other_generation, second = (
        request(1, "xgboost"),
        request(1, "lightgbm"),
        request(2, "xgboost"),
        request(1, "xgboost"),
    )
    for pending in (first, other_model, other_generation, second):
        queue.put(pending)
    now = queue.clock()
    assert queue.take({1, 2}, now) == [first, second]
    assert queue.take({1, 2}, now) == [other_model]
    assert queue.take({1}, now) == []  # a worker that does not hold generation 2 gets nothing
    assert queue.take({2}, now) == [other_generation]
    assert len(queue) == 0


def test_a_share_takes_its_part_of_what_waits_rounded_up() -> None:
    queue = RequestQueue(BatchPolicy(max_requests=10), limit=100)
    waiting = [request(1, "m") for _ in range(5)]
    for pending in waiting:
        queue.put(pending)
    now = queue.clock()
    assert queue.take({1}, now, share=2) == waiting[:3]  # two workers with room: 3 of 5 for the first
    assert queue.take({1}, now, share=1) == waiting[3:]  # the last takes the rest
    assert len(queue) == 0


def test_batches_are_bounded_by_request_count_and_body_bytes_but_the_first_always_goes() -> None:
    queue = RequestQueue(BatchPolicy(max_requests=3, max_bytes=100), limit=100)
    small = [request(1, "m", b"x" * 30) for _ in range(5)]
    huge = request(1, "m", b"x" * 1000)
    for pending in (*small, huge):
        queue.put(pending)
    now = queue.clock()
    assert queue.take({1}, now) == small[:3]  # three requests
    assert queue.take({1}, now) == small[3:5]  # 60 bytes, and the 1,000-byte body would pass 100
    assert queue.take({1}, now) == [huge]  # alone, however large


# Uptimes at which a float-seconds clock loses the 2 ms boundary (1,500 s; 100,000 s), and a fresh boot.
@pytest.mark.parametrize("uptime_ns", [1_500 * 10**9, 100_000 * 10**9, 3 * 10**9, 2**62])
def test_a_lone_request_waits_exactly_the_batch_wait_and_a_full_batch_not_at_all(uptime_ns: int) -> None:
    clock = FixedClock(uptime_ns)
    wait_ns = 2_000_000
    queue = RequestQueue(BatchPolicy(max_requests=3, wait_ns=wait_ns), limit=100, clock=clock)
    lone = request(1, "m")
    queue.put(lone)
    assert queue.take({1}, uptime_ns) == []
    assert queue.take({1}, uptime_ns + wait_ns - 1) == []  # one nanosecond early: still held
    assert queue.next_due() == uptime_ns + wait_ns
    assert queue.take({1}, uptime_ns + wait_ns) == [lone]  # due exactly at the boundary

    clock.now_ns = uptime_ns + 10 * wait_ns
    full = [request(1, "m") for _ in range(3)]
    for pending in full:
        queue.put(pending)
    assert queue.take({1}, clock.now_ns) == full  # a full batch goes at once


def test_without_a_batch_wait_nothing_is_ever_held() -> None:
    queue = RequestQueue(BatchPolicy(max_requests=3), limit=100, clock=FixedClock(10**12))
    lone = request(1, "m")
    queue.put(lone)
    assert queue.take({1}, 10**12) == [lone]
    assert queue.next_due() is None


def test_past_the_limit_a_request_is_refused_at_once_and_a_retry_goes_first() -> None:
    queue = RequestQueue(BatchPolicy(), limit=2)
    waiting = [request(1, "m"), request(1, "m")]
    for pending in waiting:
        queue.put(pending)
    with pytest.raises(PoolOverloadedError, match="QUEUE_LIMIT"):
        queue.put(request(1, "m"))
    retried = waiting[0]
    assert queue.take({1}, queue.clock()) == waiting
    queue.put_back(retried)  # its worker died: it goes again ahead of anything newer
    queue.put(request(1, "m"))
    assert queue.take({1}, queue.clock())[0] is retried


def test_a_request_that_gave_up_leaves_the_queue() -> None:
    queue = RequestQueue(BatchPolicy(), limit=10)
    stays, leaves = request(1, "m"), request(1, "m")
    queue.put(stays)
    queue.put(leaves)
    assert queue.discard(leaves)
    assert not queue.discard(leaves)
    assert queue.take({1}, queue.clock()) == [stays]


def test_explained_requests_wait_while_explanations_have_no_room_and_set_no_timer() -> None:
    """With no room for another batch of explanations, `take` leaves them waiting and serves plain requests, and
    `next_due` does not wake the dispatcher for them (it would find nothing to send, again and again)."""
    clock = FixedClock(10_000_000_000)
    queue = RequestQueue(BatchPolicy(max_requests=10, wait_ns=1_000_000), limit=100, clock=clock)
    explained = request(1, "m")
    explained.wants = ("explanation",)
    plain = request(1, "m")
    queue.put(explained)
    clock.now_ns += 500_000
    queue.put(plain)
    assert queue.explained == 1
    assert queue.next_due(explained=False) == plain.due_ns
    clock.now_ns += 1_000_000
    assert queue.take({1}, clock.now_ns, explained=False) == [plain]
    assert queue.take({1}, clock.now_ns, explained=False) == []
    assert queue.next_due(explained=False) is None
    assert queue.take({1}, clock.now_ns) == [explained]
    assert (len(queue), queue.explained) == (0, 0)


def test_a_worker_with_its_plain_room_full_is_given_only_explanations() -> None:
    """A worker whose explanation lane is free but whose plain batches are at their most: `take(plain=False)`
    serves the explanation even when a plain request has waited longer, and leaves the plain one waiting."""
    clock = FixedClock(10_000_000_000)
    queue = RequestQueue(BatchPolicy(max_requests=10), limit=100, clock=clock)
    plain = request(1, "m")
    explained = request(1, "m")
    explained.wants = ("explanation",)
    queue.put(plain)
    queue.put(explained)
    assert queue.take({1}, clock.now_ns, plain=False) == [explained]
    assert queue.take({1}, clock.now_ns, plain=False) == []
    assert queue.take({1}, clock.now_ns) == [plain]
