"""Compile `open_inference.proto` into the modules beside it (grpcio-tools, a development dependency):
`open_inference_pb2.py` (messages), `open_inference_pb2.pyi` (their types) and `open_inference_pb2_grpc.py`
(the service's stubs and servicer base). Run `uv run python -m fraud_inference.grpc._generated.compile` after
editing the proto, and commit what it writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["PROTO", "compile_proto"]

PROTO = Path(__file__).with_name("open_inference.proto")
_ROOT = PROTO.parents[3]  # the repository: module paths in the generated imports start at `fraud_inference`


def compile_proto(out: Path = _ROOT) -> None:
    """Write the generated modules under `out` (the repository, or a scratch directory to compare with)."""
    from grpc_tools import protoc

    relative = PROTO.relative_to(_ROOT)
    status = protoc.main(["grpc_tools.protoc", f"-I{_ROOT}", f"--python_out={out}", f"--pyi_out={out}",
                          f"--grpc_python_out={out}", str(relative)])  # fmt: skip
    if status != 0:
        raise RuntimeError(f"protoc failed on {relative} (exit {status})")


if __name__ == "__main__":
    compile_proto()
    sys.exit(0)
