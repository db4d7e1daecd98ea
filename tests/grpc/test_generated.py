"""The committed protobuf modules are what grpcio-tools makes of the committed proto (no drift)."""

from __future__ import annotations

from pathlib import Path

from fraud_inference.grpc._generated.compile import PROTO, compile_proto


def test_the_generated_modules_match_the_proto(tmp_path: Path) -> None:
    compile_proto(tmp_path)
    relative = PROTO.parent.relative_to(PROTO.parents[3])
    generated = sorted(path.name for path in (tmp_path / relative).iterdir())
    assert generated == ["open_inference_pb2.py", "open_inference_pb2.pyi", "open_inference_pb2_grpc.py"]
    for name in generated:
        assert (tmp_path / relative / name).read_text() == (PROTO.parent / name).read_text(), (
            f"{name} is stale: run `uv run python -m fraud_inference.grpc._generated.compile` and commit it"
        )
