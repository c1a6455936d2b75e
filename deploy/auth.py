"""Bearer tokens of a served API: ``/admin/*`` always needs the admin token; prediction endpoints need the API
token only when one is configured (``protpeft serve --api-token``).

Both schemes are FastAPI ``HTTPBearer`` dependencies, so ``/openapi.json`` lists them and the operations that need
them. Tokens are compared with :func:`hmac.compare_digest` (constant time). A missing token answers 401 (with
``WWW-Authenticate: Bearer``), a wrong one 403.
"""

from __future__ import annotations

import copy
import hmac
import secrets
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .schemas import ErrorResponse, RequestError

__all__ = [
    "ADMIN_SCHEME",
    "AdminCredentials",
    "ApiCredentials",
    "API_SCHEME",
    "AUTH_ERRORS",
    "admin_bearer",
    "api_bearer",
    "check_token",
    "new_token",
    "without_scheme",
]

ADMIN_SCHEME = "AdminToken"
API_SCHEME = "ApiToken"

admin_bearer = HTTPBearer(scheme_name=ADMIN_SCHEME, auto_error=False,
                          description="`protpeft serve --admin-token` (or `$PROTPEFT_ADMIN_TOKEN`).")  # fmt: skip
api_bearer = HTTPBearer(scheme_name=API_SCHEME, auto_error=False,
                        description="`protpeft serve --api-token` (or `$PROTPEFT_API_TOKEN`).")  # fmt: skip

AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]
"""An endpoint parameter: the bearer token sent to an ``/admin`` endpoint (None: none sent)."""
ApiCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(api_bearer)]
"""An endpoint parameter: the bearer token sent to a prediction endpoint."""

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer token was sent."},
    403: {"model": ErrorResponse, "description": "The bearer token is not this server's."},
}


def new_token() -> str:
    """A random token for a server started without one (printed once)."""
    return secrets.token_urlsafe(32)


def check_token(credentials: HTTPAuthorizationCredentials | None, expected: str | None, what: str) -> None:
    """Nothing when ``expected`` is None (no token configured) or matches.

    Raises:
        RequestError: 401 when no bearer token was sent, 403 when it is not ``expected``.
    """
    if expected is None:
        return
    if credentials is None or not credentials.credentials:
        raise RequestError(401, f"{what} need a bearer token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise RequestError(403, f"the bearer token is not valid for {what}")


def without_scheme(schema: dict[str, Any], scheme: str) -> dict[str, Any]:
    """``schema`` as published when ``scheme`` is not configured: its operations need no token and answer no
    401/403, and the scheme itself is not listed."""
    schema = copy.deepcopy(schema)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            requirements = operation.get("security")
            if not requirements or not any(scheme in r for r in requirements):
                continue
            kept = [r for r in requirements if scheme not in r]
            if kept:
                operation["security"] = kept
            else:
                del operation["security"]
                for status in ("401", "403"):
                    operation.get("responses", {}).pop(status, None)
    schema.get("components", {}).get("securitySchemes", {}).pop(scheme, None)
    return schema
