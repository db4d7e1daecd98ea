"""Bounded background HTTP traffic for tests: a few client threads on loopback, stopped by the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec


class Answer(msgspec.Struct):
    request_id: str
    sent_at: float
    received_at: float
    status: int | None
    body: dict[str, Any] | None
    error: str | None
    sent_ns: int = 0
    """`sent_at` as integer monotonic nanoseconds, to compare with other times taken by a test."""
    received_ns: int = 0
    """`received_at` as integer monotonic nanoseconds."""

    @property
    def latency_s(self) -> float:
        return self.received_at - self.sent_at


class Load:
    """`clients` threads POSTing `payload()` to `path` until `stop()` or `max_seconds` (whichever first)."""

    def __init__(
        self,
        base_url: str,
        payload: Callable[[], dict[str, Any]],
        *,
        path: str = "/v1/predict",
        clients: int = 4,
        max_seconds: float = 60.0,
        max_requests: int = 50_000,
        keep_alive: bool = True,
    ) -> None:
        self._base_url = base_url
        self._payload = payload
        self._path = path
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        # Without keep-alive no request can race the server closing an idle connection at shutdown.
        self._headers = {} if keep_alive else {"Connection": "close"}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.answers

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def _run(self, client_number: int) -> None:
        with httpx.Client(base_url=self._base_url, timeout=30.0) as client:
            sequence = 0
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                sequence += 1
                request_id = f"load-{client_number}-{sequence}"
                headers = {**self._headers, "X-Request-ID": request_id}
                sent_ns = time.monotonic_ns()
                sent_at = sent_ns / 1e9
                try:
                    response = client.post(self._path, json=self._payload(), headers=headers)
                    received_ns = time.monotonic_ns()
                    answer = Answer(request_id, sent_at, received_ns / 1e9, response.status_code, response.json(),
                                    None, sent_ns, received_ns)  # fmt: skip
                except (httpx.HTTPError, ValueError) as error:
                    failure = f"{type(error).__name__}: {error}"
                    received_ns = time.monotonic_ns()
                    answer = Answer(request_id, sent_at, received_ns / 1e9, None, None, failure, sent_ns, received_ns)
                with self._lock:
                    self.answers.append(answer)
                    if len(self.answers) >= self._max_requests:
                        self._stop.set()
