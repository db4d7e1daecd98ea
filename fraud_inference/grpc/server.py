"""The gRPC server beside HTTP: started in the app's lifespan on the HTTP process's event loop (the one holding the
pool and the active generation), stopped before the pool, draining its calls."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from fraud_inference.grpc.health import ReadinessHealth
from fraud_inference.grpc.limits import add_inference_service, receive_ceiling
from fraud_inference.grpc.servicer import InferenceServicer
from fraud_inference.observability.logging import get_logger
from fraud_inference.service import FraudService

__all__ = ["GrpcServer", "grpc_address"]

log = get_logger("fraud_inference.grpc")


def grpc_address(host: str, port: int) -> str:
    """`host:port` as gRPC writes a target (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """OIP's `GRPCInferenceService` and the health service on HOST:GRPC_PORT, over `service`."""

    def __init__(self, service: FraudService) -> None:
        self._service = service
        self._health = ReadinessHealth(lambda: service.readiness().ready)
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        settings = self._service.settings
        return grpc_address(settings.host, settings.grpc_port)

    async def start(self) -> None:
        """Listen; raise `OSError` naming the address when it cannot be bound."""
        settings = self._service.settings
        server = grpc.aio.server(
            options=[
                # MAX_BODY_BYTES bounds a message as it bounds a REST body: past it, RESOURCE_EXHAUSTED. grpcio reads
                # a little more, for the service to refuse it in its words and count it (`limits`).
                ("grpc.max_receive_message_length", receive_ceiling(settings.max_body_bytes)),
                ("grpc.max_send_message_length", -1),
                # NOTE: gRPC sets SO_REUSEPORT by default, so a second server would share the port silently.
                ("grpc.so_reuseport", 0),
            ],
        )
        add_inference_service(server, InferenceServicer(self._service), settings.max_body_bytes)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise OSError(f"cannot listen for gRPC on {self.address} (GRPC_PORT): {error}") from None
        await server.start()
        self._server = server
        log.info("grpc.listening", address=self.address)

    async def stop(self) -> None:
        """Stop taking calls, let those in flight finish (within INFERENCE_TIMEOUT_S, the most any can wait for
        the pool), then close; health answers NOT_SERVING from the start."""
        if self._server is None:
            return
        self._health.drain()
        await self._server.stop(grace=self._service.settings.inference_timeout_s)
        self._server = None
        log.info("grpc.stopped")
