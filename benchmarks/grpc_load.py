"""Load through OIP over gRPC with the real `tritonclient.grpc` client: what a Triton/KServe client sends from numpy
(one FP64 [rows, features] tensor in `raw_input_contents`), measured as `loadgen` measures HTTP.

A scenario's requests address `grpc://host:port/model?rows=R&features=F` and its bodies are the raw FP64
matrices; `loadgen.run_load` hands such a URL here. Client processes (spawned, as the Python HTTP generator's)
each run one thread per connection, each thread with its own channel (a connection, as a keep-alive one).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.queues import SimpleQueue
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np

__all__ = ["GRPC_SCHEME", "grpc_url", "run_grpc_load"]

GRPC_SCHEME = "grpc://"
_TIMEOUT_S = 10.0


def grpc_url(target: str, model: str, *, rows: int, features: int) -> str:
    """The address of a gRPC scenario: where, which model, and the shape of its bodies."""
    return f"{GRPC_SCHEME}{target}/{model}?rows={rows}&features={features}"


class GrpcCounts(msgspec.Struct):
    latencies_s: list[float]
    elapsed_s: float
    failed: int = 0
    """Calls answered with a status other than OK."""
    unreachable: int = 0
    """Calls that found no server (UNAVAILABLE before any answer)."""
    timeouts: int = 0
    bad_body: int = 0
    """OK answers without one fraud probability per row."""


def run_grpc_load(url: str, bodies: Sequence[bytes], *, connections: int, seconds: float) -> list[GrpcCounts]:
    """Send `bodies` in turn through `connections` channels for `seconds`; the counts of each client process."""
    processes = min(connections, os.cpu_count() or 1, 4)
    threads_each = [connections // processes + (1 if n < connections % processes else 0) for n in range(processes)]
    context = multiprocessing.get_context("spawn")  # NOTE: spawn: gRPC's threads and OpenMP do not survive fork
    queue = context.SimpleQueue()
    workers = [
        context.Process(target=_client_process, args=(url, list(bodies), threads, seconds, queue), daemon=True)
        for threads in threads_each
    ]
    for worker in workers:
        worker.start()
    parts = [msgspec.json.decode(queue.get(), type=GrpcCounts) for _ in workers]
    for worker in workers:
        worker.join(timeout=_TIMEOUT_S + 5)
    return parts


def _client_process(url: str, bodies: list[bytes], threads: int, seconds: float, queue: SimpleQueue[bytes]) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    parts = urlsplit(url)
    model = parts.path.strip("/")
    shape = parse_qs(parts.query)
    rows, features = int(shape["rows"][0]), int(shape["features"][0])
    matrices = [np.frombuffer(body, dtype=np.float64).reshape(rows, features) for body in bodies]
    counts = GrpcCounts(latencies_s=[], elapsed_s=0.0)
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + seconds

    def connection_loop(offset: int) -> None:
        client = triton.InferenceServerClient(parts.netloc)
        inputs = []
        for matrix in matrices:
            tensor = triton.InferInput("transactions", [rows, features], "FP64")
            tensor.set_data_from_numpy(matrix)
            inputs.append(tensor)
        position = offset
        while time.perf_counter() < deadline:
            tensor = inputs[position % len(inputs)]
            position += 1
            sent = time.perf_counter()
            failure = ""
            try:
                result = client.infer(model, [tensor], client_timeout=_TIMEOUT_S)
                probabilities = result.as_numpy("fraud_probability")
                if probabilities is None or len(probabilities) != rows:
                    failure = "bad_body"
            except InferenceServerException as error:
                status = str(error.status())
                failure = ("timeouts" if "DEADLINE_EXCEEDED" in status
                           else "unreachable" if "UNAVAILABLE" in status else "failed")  # fmt: skip
            received = time.perf_counter()
            with lock:
                counts.latencies_s.append(received - sent)
                if failure:
                    setattr(counts, failure, getattr(counts, failure) + 1)
        client.close()

    pool = [threading.Thread(target=connection_loop, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    counts.elapsed_s = time.perf_counter() - started
    queue.put(msgspec.json.encode(counts))
