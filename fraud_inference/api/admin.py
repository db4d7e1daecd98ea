"""Admin routes, behind the X-API-Key guard: refreshing the served models."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.exceptions import HTTPException

from fraud_inference.api.auth import require_api_key
from fraud_inference.api.errors import ADMIN_SECURITY, error_responses
from fraud_inference.api.protocol import service_of
from fraud_inference.api.routes import model_infos
from fraud_inference.api.schemas import RefreshResponse, VersionChangeInfo
from fraud_inference.lifecycle import GenerationLoadError, RefreshInProgressError
from fraud_inference.registry import RegistryUnavailableError

__all__ = ["admin_routers"]


@post(
    "/refresh-models",
    status_code=200,
    summary="Refresh the served models",
    tags=["admin"],
    security=[{ADMIN_SECURITY: []}],
    responses=error_responses(
        401, 403, 409, 422, 502, _422="A new version cannot be resolved, loaded or validated (detail per model)."
    ),
)
async def refresh_models(request: Request[Any, Any, Any]) -> RefreshResponse:
    """Resolve every model again; swap all workers to the new versions at once, or change nothing.

    409 while another refresh runs, 502 when the registry cannot be asked, 422 when a new version
    cannot be resolved, loaded or validated (the detail names each model); the served generation
    keeps serving in every failure.
    """
    try:
        outcome = await service_of(request).refresh()
    except RefreshInProgressError as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    except RegistryUnavailableError as error:
        raise HTTPException(status_code=502, detail=f"registry unavailable, still serving: {error}") from None
    except GenerationLoadError as error:
        raise HTTPException(
            status_code=422, detail=f"refresh refused, still serving: {error}", extra={"errors": error.errors}
        ) from None
    return RefreshResponse(
        generation=outcome.generation.number,
        changed={
            key: VersionChangeInfo(previous=change.previous, current=change.current)
            for key, change in outcome.changed.items()
        },
        models=model_infos(outcome.generation, shadow_share=service_of(request).settings.shadow_share),
    )


def admin_routers() -> list[Router]:
    """The admin API at /admin and, for clients that keep everything under the version prefix, /v1/admin."""
    return [
        Router(path=prefix, route_handlers=[refresh_models], guards=[require_api_key], include_in_schema=index == 0)
        for index, prefix in enumerate(("/admin", "/v1/admin"))
    ]
