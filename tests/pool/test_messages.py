"""The worker-to-pool contract: named outputs, each request's part of each, through msgspec as the pipe carries them."""

from __future__ import annotations

import numpy as np

from fraud_inference.pool.messages import (
    FRAUD_PROBABILITY,
    PYFUNC_ANSWER,
    Output,
    Refused,
    Scored,
    decode_to_server,
    encode,
)


def test_each_request_gets_its_own_part_of_each_named_output_after_the_pipe() -> None:
    probabilities = np.array([0.1, 0.2, 0.3, 0.9])  # request 0: 1 row, request 1 refused, request 2: 3 rows
    scored = Scored(
        seq=7,
        outcomes=(1, Refused(reason="invalid_rows", message="no"), 3),
        outputs={
            FRAUD_PROBABILITY: Output(probabilities.tobytes(), (8, 0, 24)),
            PYFUNC_ANSWER: Output(b"[0,0,1]", (0, 0, 7)),  # only request 2 wanted MLflow's answer
        },
        seconds=0.001,
    )
    received = decode_to_server(encode(scored))
    assert isinstance(received, Scored)
    fraud = [np.frombuffer(part, dtype=np.float64).tolist() for part in received.outputs[FRAUD_PROBABILITY].parts()]
    assert fraud == [[0.1], [], [0.2, 0.3, 0.9]]
    assert [bytes(part) for part in received.outputs[PYFUNC_ANSWER].parts()] == [b"", b"", b"[0,0,1]"]
