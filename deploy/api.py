"""The FastAPI object of the Serve application, with what holds for every route: error answers in one documented
shape (:class:`~protpeft.deploy.schemas.ErrorResponse`), and per-request metrics.

The routes themselves are methods of :class:`protpeft.deploy.app.ModelServer`. ``/openapi.json`` and ``/docs`` are
served by the replica too (not FastAPI's defaults), because what the schema says about authentication depends on how
the server was started.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .metrics import ServeMetrics
from .schemas import ErrorResponse, RequestError

__all__ = ["BODY_ERRORS", "ERRORS", "INVALID", "api", "use_metrics"]

api = FastAPI(
    title="protpeft",
    summary="Protein-pair interaction and symmetry predictions from registered protpeft models.",
    description='`POST /v1/models/{name}/predict` with `{"pairs": [[seq_a, seq_b], ...]}` (PPI models) or '
    '`{"sequences": [...]}` (symmetry models). Limits of this server are listed by `GET /v1/models`. '
    "`/admin/*` needs the server's admin token (`Authorization: Bearer …`).",
    openapi_url=None,  # served by the replica: see the module docstring
    docs_url=None,
    redoc_url=None,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No model of that name is served."},
    409: {
        "model": ErrorResponse,
        "description": "The model's task takes the other input (PPI: pairs, symmetry: sequences).",
    },  # fmt: skip
    413: {"model": ErrorResponse, "description": "More items or longer sequences than this server accepts."},
    422: {"model": ErrorResponse, "description": "Malformed request, or letters this server does not accept."},
}
INVALID: dict[int | str, dict[str, Any]] = {422: {"model": ErrorResponse, "description": "Malformed request."}}
"""In place of FastAPI's default 422 schema, which this API's error handler does not answer with."""
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body could not be read (e.g. it is not UTF-8)."},
    422: ERRORS[422],
}
"""Answers of every route that reads a JSON body."""

_metrics: ServeMetrics | None = None


def use_metrics(metrics: ServeMetrics) -> None:
    """Record requests of this process (one replica) in ``metrics``."""
    global _metrics
    _metrics = metrics


@api.middleware("http")
async def _measure(request: Request, call_next):
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        if _metrics is not None:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # no label per fuzzed URL
            _metrics.observe_request(request.method, template, status, time.perf_counter() - started)


@api.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return JSONResponse(status_code=err.status, content={"detail": err.message}, headers=err.headers)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, err: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own errors (unknown route, wrong method, unreadable body) in the same shape."""
    return JSONResponse(status_code=err.status_code, content={"detail": str(err.detail)}, headers=err.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    errors = err.errors()
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") == "missing" for e in errors):
        detail = 'empty request body: send JSON {"pairs": [[seq_a, seq_b], ...]} or {"sequences": [seq, ...]}'
    elif any(e.get("type") == "json_invalid" for e in errors):
        detail = "the body is not valid JSON"
    else:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in errors
        )
    problems = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
                for e in errors]  # fmt: skip
    return JSONResponse(status_code=422, content={"detail": f"invalid request: {detail}", "errors": problems})
