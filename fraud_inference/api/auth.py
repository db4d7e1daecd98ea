"""The admin guard: X-API-Key against API_KEYS, compared in constant time, never logged."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

__all__ = ["require_api_key"]

HEADER = "X-API-Key"


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """401 without a key, 403 with a wrong one, and 403 for everyone when no key is configured."""
    keys: tuple[str, ...] = connection.app.state.service.settings.api_keys
    sent = connection.headers.get(HEADER)
    if not keys:
        raise PermissionDeniedException(detail="the admin API is disabled: no API_KEYS are configured")
    if not sent:
        raise NotAuthorizedException(detail=f"send an admin key in the {HEADER} header")
    # NOTE: compare against every key (no early exit) so timing says nothing about which, or how much, matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sent.encode(), key.encode())
    if not matched:
        raise PermissionDeniedException(detail=f"the {HEADER} header does not hold a valid admin key")
