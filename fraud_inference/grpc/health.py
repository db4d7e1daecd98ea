"""The standard gRPC health service (`grpc.health.v1.Health`) answering as `/readyz` does, so Kubernetes' gRPC
probes, grpc_health_probe and load balancers see the same readiness as HTTP's.

SERVING when a generation is active and a live worker holds it, NOT_SERVING otherwise and from the start of a
drain on; for the whole server (`""`) and for `inference.GRPCInferenceService`, NOT_FOUND for any other service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

__all__ = ["SERVICES", "ReadinessHealth"]

SERVICES = frozenset({"", "inference.GRPCInferenceService"})
"""The names a health check may ask about: the whole server, and OIP's service."""
_WATCH_INTERVAL_S = 0.5


class ReadinessHealth:
    """Health read from the service's readiness at every call (nothing to keep in step); registered with
    `health_pb2_grpc.add_HealthServicer_to_server`."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._draining = False

    def drain(self) -> None:
        """From now on NOT_SERVING: the server is stopping, probes and balancers should look elsewhere."""
        self._draining = True

    def status(self) -> Any:
        serving = not self._draining and self._ready()
        return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:64]!r}")
        return health_pb2.HealthCheckResponse(status=self.status())

    async def List(self, _request: health_pb2.HealthListRequest, _context: Any) -> health_pb2.HealthListResponse:
        status = self.status()
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name in SERVICES}
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, _context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        if request.service not in SERVICES:
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        last = None
        while True:
            status = self.status()
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._draining:
                # NOTE: ended once NOT_SERVING is sent: an open stream would hold the server's graceful stop for its
                # whole grace period (INFERENCE_TIMEOUT_S), after every call had been answered.
                return
            await asyncio.sleep(_WATCH_INTERVAL_S)
