"""GET /healthz (the process answers) and GET /readyz (gRPC health says SERVING)."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from server.http.status import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", summary="200 only while gRPC health says SERVING (models warmed; not draining)")
async def readyz(request: Request) -> Response:
    if await request.app.state.ready():
        return JSONResponse({"status": "SERVING"})
    return error_response(grpc.StatusCode.UNAVAILABLE, "not ready: gRPC health is not SERVING (starting or draining)")
