"""OIP's `inference.GRPCInferenceService` over the same core as REST's /v2 (api/oip.py), as thin as its routes:
each method reads its message (`converters`), asks the `DataPlane`, and renders the answer; the core decides the
model, readiness, generation and threshold, and its errors become status codes in `calls.handled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fraud_inference import __version__
from fraud_inference.dataplane import Selection
from fraud_inference.errors import NotReadyError, TimedOutError, UnknownModelError
from fraud_inference.grpc._generated import open_inference_pb2 as pb
from fraud_inference.grpc.calls import Call, handled
from fraud_inference.grpc.converters import infer_request_of, infer_response_of, model_metadata_of
from fraud_inference.oip import OipRequestError, columns_of, metadata_of
from fraud_inference.oip.explain import explain_of, plain_outputs
from fraud_inference.reasons.explain import explain_rows
from fraud_inference.service import FraudService

__all__ = ["InferenceServicer", "VersionNotServedError"]

T = TypeVar("T")


class VersionNotServedError(UnknownModelError):
    """A model named with a version other than the one served now (NOT_FOUND, as REST's 404)."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__(model, ())
        self.args = (f"model {model[:64]!r} version {version[:64]!r} is not served",)


class InferenceServicer:
    """The six methods of OIP's gRPC service over one `FraudService` (registered with the generated
    `add_GRPCInferenceServiceServicer_to_server`, which needs no base class)."""

    def __init__(self, service: FraudService) -> None:
        self.service = service
        self.metrics = service.metrics
        self.series: dict[tuple[str, str], Any] = {}

    def _select(self, model: str, version: str, *, field: str = "name") -> Selection:
        """The served `model`, and when a version is named, only if it is the one served now. An empty name
        (`field`, as the message calls it) is refused: OIP names the model in every call, as REST's
        /v2/models/{model} path does (where an empty name matches no route), so no default model answers it."""
        if not model:
            raise OipRequestError(f"{field} is empty: name the model to call, as in REST's /v2/models/{{model}}")
        selection = self.service.dataplane.select(model)
        if version and version != selection.artifact.ref.version:
            raise VersionNotServedError(model, version)
        return selection

    @handled("ServerLive", probe=True)
    async def ServerLive(self, _request: pb.ServerLiveRequest, _context: Any, _call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @handled("ServerReady", probe=True)
    async def ServerReady(self, _request: pb.ServerReadyRequest, _context: Any, _call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.active is not None)

    @handled("ModelReady", probe=True)
    async def ModelReady(self, request: pb.ModelReadyRequest, _context: Any, _call: Call) -> pb.ModelReadyResponse:
        # NOTE: not ready, never an error, for a model or version not served: Triton's answer, and what
        # tritonclient's `is_model_ready` returns over HTTP too (False).
        try:
            self._select(request.name, request.version)
        except (NotReadyError, UnknownModelError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @handled("ServerMetadata")
    async def ServerMetadata(
        self, _request: pb.ServerMetadataRequest, _context: Any, _call: Call
    ) -> pb.ServerMetadataResponse:
        # No extension: REST's binary_tensor_data is raw_input_contents / raw_output_contents here, in the protocol.
        return pb.ServerMetadataResponse(name="fraud-inference", version=__version__, extensions=[])

    @handled("ModelMetadata")
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, _context: Any, _call: Call
    ) -> pb.ModelMetadataResponse:
        return model_metadata_of(metadata_of(self._select(request.name, request.version)))

    @handled("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any, call: Call) -> pb.ModelInferResponse:
        dataplane = self.service.dataplane
        dataplane.check_capacity()
        selection = self._select(request.model_name, request.model_version, field="model_name")
        infer = infer_request_of(request)
        settings = self.service.settings
        rows = columns_of(infer, selection.artifact.features, detail=settings.error_detail,
                          extra=settings.extra_features)  # fmt: skip
        explained, explain = None, explain_of(infer)
        if explain is None:
            scored = await self._within_deadline(
                dataplane.predict(selection, rows, call.request_id, protocol="grpc"), context.time_remaining()
            )
        else:  # REST /v2's explanation, from the same core and tensors
            explained = await self._within_deadline(
                explain_rows(dataplane, selection, rows, call.request_id, explain, protocol="grpc"),
                context.time_remaining(),
            )
            scored, infer = explained.scored, plain_outputs(infer)
        call.fields.update(model=selection.key, version=scored.ref.version,
                           generation=selection.generation.number, rows=len(scored.probabilities))  # fmt: skip
        return infer_response_of(infer, scored, call.request_id, raw=bool(request.raw_input_contents),
                                 explained=explained)  # fmt: skip

    async def _within_deadline(self, answer: Awaitable[T], remaining: float | None) -> T:
        """Await `answer` within the client's deadline when it is shorter than INFERENCE_TIMEOUT_S: past it, the
        request leaves the pool's queue (or its batch's rest is dropped), as when REST's timeout passes."""
        if remaining is None or remaining >= self.service.settings.inference_timeout_s:
            return await answer
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await answer
        except TimeoutError:
            raise TimedOutError(
                f"no answer from the inference pool within the call's deadline ({remaining:.3f} s)"
            ) from None
