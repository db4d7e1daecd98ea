"""The Litestar app factory: routes, docs, CORS, request ids, and the service's lifespan."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from litestar import Litestar
from litestar.config.cors import CORSConfig
from setproctitle import setproctitle

from fraud_inference import __version__
from fraud_inference.api.admin import admin_routers
from fraud_inference.api.docs import DOCS_PATH, docs_static_router, openapi_config
from fraud_inference.api.errors import render_unhandled
from fraud_inference.api.mlflow_protocol import mlflow_router
from fraud_inference.api.oip import oip_router
from fraud_inference.api.ready import announce_ready
from fraud_inference.api.request_id import RequestEdge
from fraud_inference.api.routes import v1_router
from fraud_inference.decisions import open_decision_log
from fraud_inference.lifetime import die_with_parent
from fraud_inference.observability.logging import configure_logging, get_logger
from fraud_inference.observability.metrics import Metrics
from fraud_inference.service import FraudService
from fraud_inference.settings import Settings

if TYPE_CHECKING:
    from fraud_inference.grpc.server import GrpcServer

__all__ = ["create_app"]

log = get_logger("fraud_inference.server")


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the app; the inference pool starts in its lifespan, before the server accepts traffic."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, role="server")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        if multiprocessing.parent_process() is not None:
            # Under granian this is a worker process: if its supervisor is SIGKILLed, die too instead of serving
            # on as an orphan that holds the port and the pool. NOTE: SIGKILL, not SIGTERM: with the supervisor
            # gone, granian's SIGTERM handler can block forever (seen 1 run in 4), so no drain is possible anyway.
            # The inference workers follow through their own PR_SET_PDEATHSIG.
            die_with_parent(signal.SIGKILL)
            # What `ps` shows: this process apart from granian's supervisor and the inference workers.
            setproctitle("fraud-inference http")
        service = FraudService(settings, app.state.metrics)
        app.state.service = service
        log.info("server.starting", settings=settings.redacted())
        decisions = open_decision_log(settings, app.state.metrics)
        if decisions is not None:
            service.observers.add(decisions.observe, wants=decisions.wants)
        await service.start()
        grpc_server = await _start_grpc(service) if settings.grpc == "on" else None
        announcer = asyncio.get_running_loop().create_task(_announce_when_serving(service, settings))
        try:
            yield
        finally:
            announcer.cancel()
            try:
                if grpc_server is not None:
                    await grpc_server.stop()  # drains its calls while the pool still answers them
                await service.stop()
            finally:
                if decisions is not None:
                    # Every answered request's records are on disk before the process exits (SIGTERM).
                    await asyncio.to_thread(decisions.close)
            log.info("server.stopped")

    app = Litestar(
        route_handlers=[v1_router(), mlflow_router(), oip_router(), *admin_routers(), docs_static_router()],
        lifespan=[lifespan],
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None,
        openapi_config=openapi_config(__version__),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        exception_handlers={500: render_unhandled},
    )
    app.state.metrics = metrics = Metrics()
    # Outside Litestar's own layers (exception handlers, CORS), so 404s, 405s and errors get the id and a count.
    app.asgi_handler = RequestEdge(app.asgi_handler, metrics)
    return app


async def _start_grpc(service: FraudService) -> GrpcServer:
    """OIP over gRPC on this loop, over the same service. NOTE: imported here, in the HTTP process only: granian's
    supervisor forks this process, and gRPC's threads must not exist before a fork."""
    from fraud_inference.grpc.server import GrpcServer

    server = GrpcServer(service)
    try:
        await server.start()
    except BaseException:
        await service.stop()
        raise
    return server


async def _announce_when_serving(service: FraudService, settings: Settings) -> None:
    await service.serving.wait()
    if service.active is not None:
        announce_ready(settings, service.active, docs_path=DOCS_PATH)
