"""The decision log's writer: a thread that turns scored requests into Parquet files, never in a request's way.

The event loop only stamps the time and appends the request to a list (`observe`); the thread takes the list every
DECISION_LOG_FLUSH_S (or at DECISION_LOG_MAX_ROWS rows), builds the records (the rows the workers handed the
model, or decoded again for a model scored from a DataFrame), and writes what came in as one file per model and date
(`model=KEY/date=YYYY-MM-DD/part-REPLICA-....parquet`), under a hidden temporary name then renamed, so a reader
never sees a partial file. `close` writes what is left and joins: the lifespan calls it at shutdown (SIGTERM).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from fraud_inference.decisions.records import DecisionRecords
from fraud_inference.observability.logging import get_logger
from fraud_inference.observability.metrics import Metrics
from fraud_inference.observers import ScoredRequest
from fraud_inference.pool.messages import FEATURES
from fraud_inference.settings import Settings

__all__ = ["DecisionLog", "open_decision_log"]

log = get_logger("fraud_inference.decisions")

_BACKLOG_FACTOR = 10
"""Requests waiting for the writer, in units of DECISION_LOG_MAX_ROWS, past which new ones are dropped."""
_FAILURE_LOG_EVERY_S = 60.0
"""A disk that keeps refusing is logged once a minute, not at every flush; the drop counter counts every row."""


class _Observed(NamedTuple):
    request: ScoredRequest
    time_us: int


class _Group(NamedTuple):
    """The requests written to one file: one model version's schema, one date."""

    model: str
    date: str
    artifact_path: str


def open_decision_log(settings: Settings, metrics: Metrics) -> DecisionLog | None:
    """The decision log DECISION_LOG asks for, started; None when it is unset."""
    if settings.decision_log is None:
        return None
    decisions = DecisionLog(
        settings.decision_log,
        metrics,
        with_features=settings.decision_log_features == "all",
        flush_s=settings.decision_log_flush_s,
        max_rows=settings.decision_log_max_rows,
    )
    decisions.start()
    return decisions


class DecisionLog:
    """Write every observed scored row to `directory`; `observe` is the service's observer."""

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        *,
        with_features: bool = True,
        flush_s: float = 1.0,
        max_rows: int = 100_000,
        replica: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._metrics = metrics
        self._with_features = with_features
        self._flush_s = flush_s
        self._max_rows = max_rows
        # NOTE: a list the event loop appends to and the thread swaps out once per flush, not a queue.Queue: a
        # queue woke the thread at every request, and each wake took the GIL from the event loop (the log cost a
        # 1-row request ~15% more CPU that way).
        self._pending: list[_Observed] = []
        self._pending_rows = 0
        self._backlog_rows = _BACKLOG_FACTOR * max_rows
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # NOTE: the host name (a Kubernetes pod's name, a Swarm task's container id), the process and its start:
        # every writer has files of its own, and a restarted container never reuses a name.
        started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        self._prefix = f"part-{_safe(replica or socket.gethostname())}-{os.getpid()}-{started}"
        self._files = 0
        self._records: dict[str, DecisionRecords] = {}
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._closed = False
        self._last_failure_logged = -_FAILURE_LOG_EVERY_S

    @property
    def wants(self) -> tuple[str, ...]:
        """What the log needs from the workers beside the probabilities: the rows as the model received them."""
        return (FEATURES,) if self._with_features else ()

    def start(self) -> None:
        self._thread.start()
        log.info("decision_log.started", directory=str(self.directory), features=self._with_features)

    def observe(self, request: ScoredRequest) -> None:
        """Keep `request`'s rows for the next file; on the event loop, so it only stamps the time and appends."""
        rows = len(request.scored.probabilities)
        refused: str | None = None
        due = False
        with self._lock:  # with `close` and the thread's swap: each record is written or counted, exactly once
            if self._closed:
                refused = "closed"
            elif self._pending_rows + rows > self._backlog_rows:
                refused = "backlog"
            else:
                self._pending.append(_Observed(request, time.time_ns() // 1000))
                self._pending_rows += rows
                due = self._pending_rows >= self._max_rows
        if refused is not None:
            self._drop(rows, refused)
        elif due:
            self._wake.set()  # a file of DECISION_LOG_MAX_ROWS now, not at the end of the interval

    def close(self, timeout_s: float = 60.0) -> None:
        """Write every kept record, then stop the thread (blocking: call it from a thread, or at exit)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("decision_log.close_timed_out", timeout_s=timeout_s)
        else:
            log.info("decision_log.closed", files=self._files)

    def _run(self) -> None:
        deadline = time.monotonic() + self._flush_s
        while True:
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()
            with self._lock:
                stop = self._closed  # nothing is appended after this last swap
                pending, self._pending = self._pending, []
                self._pending_rows = 0
            if pending:
                self._flush(pending)
            if stop:
                return
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self._flush_s

    def _flush(self, pending: Sequence[_Observed]) -> None:
        """Write `pending` as one file per model version and date (more when one passes DECISION_LOG_MAX_ROWS)."""
        groups: dict[_Group, list[tuple[ScoredRequest, int]]] = {}
        for observed in pending:
            selection = observed.request.scored.selection
            date = datetime.datetime.fromtimestamp(observed.time_us / 1e6, datetime.UTC).date().isoformat()
            group = _Group(selection.key, date, selection.artifact.path)
            groups.setdefault(group, []).append((observed.request, observed.time_us))
        for group, requests in groups.items():
            try:
                table, failed = self._records_of(requests[0][0]).table(requests)
            except Exception as error:  # a bug, not the client's rows: the workers decoded them already
                table, failed = None, [request for request, _time in requests]
                log.error("decision_log.records_failed", model=group.model, error=repr(error)[:300])
            for request in failed:
                self._drop(len(request.scored.probabilities), "unreadable_rows")
                log.error("decision_log.unreadable_rows", request_id=request.request_id, model=group.model)
            if table is None:
                continue
            for start in range(0, table.num_rows, self._max_rows):
                self._write(group, table.slice(start, self._max_rows))

    def _records_of(self, request: ScoredRequest) -> DecisionRecords:
        artifact = request.scored.selection.artifact
        records = self._records.get(artifact.path)
        if records is None:
            records = DecisionRecords(artifact.ref.key, artifact.features, with_features=self._with_features)
            self._records[artifact.path] = records
        return records

    def _write(self, group: _Group, table: pa.Table) -> None:
        partition = self.directory / f"model={group.model}" / f"date={group.date}"
        self._files += 1
        name = f"{self._prefix}-{self._files:06d}.parquet"
        # NOTE: a hidden temporary name: pyarrow, pandas, DuckDB's globs and Spark all skip names starting with '.'.
        temporary = partition / f".{name}.tmp"
        try:
            partition.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as file:
                pq.write_table(table, file, compression="zstd")
                file.flush()
                os.fsync(file.fileno())
                size = file.tell()
            os.rename(temporary, partition / name)
            _sync_directory(partition)  # the rename itself survives a power cut, not only the file's bytes
        except OSError as error:
            self._drop(table.num_rows, "write_failed")
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            now = time.monotonic()
            if now - self._last_failure_logged >= _FAILURE_LOG_EVERY_S:
                self._last_failure_logged = now
                log.error(
                    "decision_log.write_failed", directory=str(self.directory), model=group.model,
                    rows=table.num_rows, error=str(error), detail="records are dropped (counted) and serving goes on",
                )  # fmt: skip
            return
        self._metrics.decision_records_written.labels(group.model).inc(table.num_rows)
        self._metrics.decision_bytes_written.inc(size)
        self._metrics.decision_files_written.inc()

    def _drop(self, rows: int, reason: str) -> None:
        self._metrics.decision_records_dropped.labels(reason).inc(rows)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _safe(text: str) -> str:
    """`text` as a piece of a file name: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "replica"
