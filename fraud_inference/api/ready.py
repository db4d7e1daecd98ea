"""The line that tells a person the service is ready: where it listens, what it serves, where the docs are."""

from __future__ import annotations

import ipaddress
import sys

from fraud_inference.lifecycle import Generation
from fraud_inference.observability.logging import get_logger
from fraud_inference.settings import Settings

__all__ = ["announce_ready", "base_url", "grpc_target"]

log = get_logger("fraud_inference.server")


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches the server at (a wildcard address becomes loopback)."""
    if host in {"", "0.0.0.0"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}"


def grpc_target(host: str, port: int) -> str:
    """The `host:port` a gRPC client on this machine reaches the gRPC server at."""
    return base_url(host, port).removeprefix("http://")


def announce_ready(settings: Settings, generation: Generation, *, docs_path: str) -> None:
    """Log `service.ready` (url, docs, generation, models); on a terminal, print it also as one plain line."""
    url = base_url(settings.host, settings.port)
    models = {
        key: {"name": served.ref.name, "version": served.ref.version, "selected_by": served.ref.selected_by}
        for key, served in generation.models.items()
    }
    grpc = grpc_target(settings.host, settings.grpc_port) if settings.grpc == "on" else None
    log.info("service.ready", url=url, grpc=grpc, docs=f"{url}{docs_path}", generation=generation.number,
             models=models)  # fmt: skip
    if sys.stdout.isatty():
        served = ", ".join(f"{key} ({m['name']} v{m['version']})" for key, m in models.items())
        grpc_part = f", gRPC at {grpc}" if grpc else ""
        print(f"fraud-inference ready at {url}{grpc_part}: serving {served}; docs at {url}{docs_path}", flush=True)
