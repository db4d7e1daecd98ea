"""OpenAPI docs at /docs (Swagger UI) and /redoc, served from vendored assets so they work offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.openapi.spec import Components, SecurityScheme
from litestar.router import Router
from litestar.routes import BaseRoute
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from fraud_inference.api.auth import HEADER
from fraud_inference.api.errors import ADMIN_SECURITY
from fraud_inference.api.examples import with_predict_example

__all__ = ["DOCS_PATH", "STATIC_PREFIX", "docs_static_router", "openapi_config"]

DOCS_PATH = "/docs"
STATIC_PREFIX = "/docs-static"
_STATIC_DIR = Path(__file__).parent / "static"
_FAVICON = f"<link rel='icon' type='image/png' href='{STATIC_PREFIX}/favicon-32x32.png'>"


class _DocsRouter(Router):
    """The docs' router, without Litestar's catch-all `/{path:str}` that answers every unknown one-segment path
    (`/foo`, `/ping` before it existed) with an HTML page: unknown paths get the app's JSON 404 instead."""

    def register(self, value: ControllerRouterHandler) -> list[BaseRoute]:
        if isinstance(value, HTTPRouteHandler) and "/{path:str}" in value.paths:
            return []
        return super().register(value)


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="fraud-inference",
        version=version,
        description="Fraud-detection scores from models served straight out of an MLflow Model Registry.",
        path="/",
        openapi_router=_DocsRouter(path="/", route_handlers=[], include_in_schema=False),
        components=Components(
            security_schemes={
                ADMIN_SECURITY: SecurityScheme(
                    type="apiKey", name=HEADER, security_scheme_in="header", description="One of API_KEYS."
                )
            }
        ),
        render_plugins=[
            _Swagger(
                path=DOCS_PATH,
                js_url=f"{STATIC_PREFIX}/swagger-ui-bundle.js",
                css_url=f"{STATIC_PREFIX}/swagger-ui.css",
                standalone_preset_js_url=f"{STATIC_PREFIX}/swagger-ui-standalone-preset.js",
                favicon=_FAVICON,
            ),
            _Redoc(
                path="/redoc",
                js_url=f"{STATIC_PREFIX}/redoc.standalone.js",
                google_fonts=False,
                favicon=_FAVICON,
            ),
            _Json(path="/openapi.json"),
            _Yaml(path="/openapi.yaml"),
        ],
    )


def _live(request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> dict[str, Any]:
    # NOTE: Litestar builds the schema once; the example depends on the models served now, so it is set per render.
    return with_predict_example(openapi_schema, getattr(request.app.state, "service", None))


class _Swagger(SwaggerRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, _live(request, openapi_schema))


class _Redoc(RedocRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, _live(request, openapi_schema))


class _Json(JsonRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, _live(request, openapi_schema))


class _Yaml(YamlRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, _live(request, openapi_schema))


def docs_static_router() -> Router:
    return create_static_files_router(
        path=STATIC_PREFIX, directories=[_STATIC_DIR], include_in_schema=False, opt={"skip_access_log": True}
    )
