"""Load through OIP over gRPC with the real `tritonclient.grpc` client: what a Triton/KServe client sends from numpy
(one FP64 [rows, features] tensor in `raw_input_contents`), measured as `loadgen` measures HTTP.

A scenario's requests address `grpc://host:port/model?rows=R&features=F` and its bodies are the raw FP64
matrices; `loadgen.run_load` hands such a URL here. Client processes (spawned, as the Python HTTP generator's)
each run one thread per connection, each thread with its own channel (a connection, as a keep-alive one).
"""

from __future__ import annotations

import threading
import time
from multiprocessing.queues import SimpleQueue
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np

__all__ = ["GRPC_SCHEME", "grpc_client_process", "grpc_url"]

GRPC_SCHEME = "grpc://"
_TIMEOUT_S = 10.0


def grpc_url(target: str, model: str, *, rows: int, features: int) -> str:
    """The address of a gRPC scenario: where, which model, and the shape of its bodies."""
    return f"{GRPC_SCHEME}{target}/{model}?rows={rows}&features={features}"


def grpc_client_process(url: str, bodies: list[bytes], threads: int, seconds: float, queue: SimpleQueue[bytes]) -> None:
    """One client process (`loadgen` spawns them): `threads` channels calling ModelInfer until `seconds` have passed;
    its `loadgen.ClientCounts` (a status other than OK counts as non_2xx, UNAVAILABLE as a connect error) on
    `queue`."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from benchmarks.loadgen import ClientCounts  # NOTE: here, in the client process: loadgen imports this module

    parts = urlsplit(url)
    model = parts.path.strip("/")
    shape = parse_qs(parts.query)
    rows, features = int(shape["rows"][0]), int(shape["features"][0])
    matrices = [np.frombuffer(body, dtype=np.float64).reshape(rows, features) for body in bodies]
    counts = ClientCounts(latencies_s=[], elapsed_s=0.0)
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
                           else "connect_errors" if "UNAVAILABLE" in status else "non_2xx")  # fmt: skip
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
