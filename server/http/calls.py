"""One HTTP call inside `StylizeService.accounted`: request id, deadline, a client that goes away, errors as JSON."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from server.errors import ClientGone, InvalidRequest, MessageTooLarge
from server.http.status import PAYLOAD_TOO_LARGE, error_response
from server.service import Call, CallFailed, StylizeService, new_request_id

T = TypeVar("T")
TIMEOUT_HEADER = "x-timeout-seconds"  # HTTP's stand-in for a gRPC deadline


def service_of(request: Request) -> StylizeService:
    service: StylizeService = request.app.state.service
    return service


def request_id_of(request: Request) -> str:
    return new_request_id(request.headers.get("x-request-id"))


def failure_response(failed: CallFailed) -> Response:
    status = PAYLOAD_TOO_LARGE if isinstance(failed.__cause__, MessageTooLarge) else None
    return error_response(failed.code, failed.message, failed.request_id, status)


async def run_call(request: Request, method: str, handle: Callable[[Call], Awaitable[Response]]) -> Response:
    """`handle` accounted as `method` over HTTP; a failure becomes the JSON error with its HTTP status."""
    try:
        async with service_of(request).accounted(method, "http", request_id_of(request)) as call:
            response = await handle(call)
    except CallFailed as failed:
        return failure_response(failed)
    response.headers["x-request-id"] = call.request_id
    return response


def deadline_of(request: Request) -> float | None:
    """The X-Timeout-Seconds header as a time.monotonic() deadline (None: no deadline)."""
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(f"the {TIMEOUT_HEADER} header must be a positive number of seconds, got {text!r}")
    return time.monotonic() + seconds


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled with ClientGone when the client closes the connection first (after the body was read)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("the client closed the connection before the answer")
    return task.result()
