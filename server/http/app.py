"""The FastAPI application: the Guard middleware, the routes, the page, and errors as JSON.

FastAPI writes the OpenAPI document (/openapi.json) from the routes; its
interactive docs pages are off (they load scripts from a CDN).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response

from server.http.guard import Guard
from server.http.routes import health, jobs, models
from server.http.status import error_response
from server.service import StylizeService

STATIC = Path(__file__).parent / "static"
CODES_BY_STATUS = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}


@dataclass(frozen=True)
class HttpSettings:
    max_body_bytes: int  # STYLIZE_MAX_MESSAGE_BYTES: the gRPC port's message limit
    max_open_requests: int  # STYLIZE_MAX_RPCS
    token_digests: list[bytes]  # server/auth.py's digests; empty: no tokens
    keepalive_seconds: float = 15.0  # STYLIZE_HTTP_KEEPALIVE_SECONDS: SSE comment lines between quiet updates


class _NoContext:
    """The one part of a gRPC servicer context that the health servicer's Check uses: abort, for unknown names."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise LookupError(code)


def readiness(health_servicer: Any, service_name: str) -> Callable[[], Awaitable[bool]]:
    """Whether gRPC health says SERVING for the API, asked of the health servicer itself: one source of truth."""

    async def ready() -> bool:
        request = health_pb2.HealthCheckRequest(service=service_name)
        try:
            response = await health_servicer.Check(request, _NoContext())
        except LookupError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return ready


def build_app(service: StylizeService, settings: HttpSettings, ready: Callable[[], Awaitable[bool]]) -> FastAPI:
    app = FastAPI(
        title="Stylize",
        summary="Neural style transfer: the gRPC API's calls as HTTP and JSON",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.ready = ready
    app.state.keepalive_seconds = settings.keepalive_seconds
    app.include_router(models.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = CODES_BY_STATUS.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error_response(code, message, status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    app.add_middleware(
        Guard,
        max_open=settings.max_open_requests,
        max_body_bytes=settings.max_body_bytes,
        digests=settings.token_digests,
    )
    return app
