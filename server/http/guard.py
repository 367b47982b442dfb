"""The checks an HTTP request passes before any route runs, as one ASGI middleware.

In order: at most `max_open` requests open at once (like gRPC's max_rpcs; more
get 429 RESOURCE_EXHAUSTED), a bearer token when tokens are configured (401
UNAUTHENTICATED; the page, its files, health and the OpenAPI document stay open,
as gRPC health does), and a body no larger than `max_body_bytes` (413): refused
from its Content-Length before it is read, or by MessageTooLarge as soon as a
streamed body passes the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.auth import bearer_token, token_matches
from server.errors import MessageTooLarge
from server.http.status import PAYLOAD_TOO_LARGE, error_response

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/healthz", "/readyz", "/openapi.json", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


def too_large_message(limit: int) -> str:
    return f"the request body is over this server's limit of {limit} bytes (STYLIZE_MAX_MESSAGE_BYTES)"


class Guard:
    def __init__(self, app: ASGIApp, *, max_open: int, max_body_bytes: int, digests: list[bytes]) -> None:
        self.app = app
        self.max_open = max_open
        self.max_body_bytes = max_body_bytes
        self.digests = digests
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in scope["headers"]]
        refusal = self.refusal(scope["path"], headers)
        if refusal is not None:
            _, code, message, status = refusal
            logger.info("refused HTTP %s %s: %s", scope["method"], scope["path"], message)
            await error_response(code, message, status=status)(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, self.limited(receive), send)
        finally:
            self.open -= 1

    def refusal(self, path: str, headers: list[tuple[str, str]]) -> tuple[str, grpc.StatusCode, str, int | None] | None:
        """Why the request is refused before it runs, counted: (metric reason, code, message, HTTP status), or None."""
        if self.open >= self.max_open:
            metrics.REJECTED.labels("too_many_requests").inc()
            return (
                "too_many_requests",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.open} HTTP requests are open, this server's limit (STYLIZE_MAX_RPCS); retry with backoff",
                None,
            )
        if self.digests and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            token = bearer_token(headers)
            if token is None:
                message = "this server needs a token: send the header `Authorization: Bearer <token>`"
                metrics.REJECTED.labels("auth_missing").inc()
                return "auth_missing", grpc.StatusCode.UNAUTHENTICATED, message, None
            if not token_matches(token, self.digests):
                metrics.REJECTED.labels("auth_invalid").inc()
                return "auth_invalid", grpc.StatusCode.UNAUTHENTICATED, "the token is not valid for this server", None
        length = dict(headers).get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            message = too_large_message(self.max_body_bytes)
            metrics.REJECTED.labels("too_large").inc()
            return "too_large", grpc.StatusCode.RESOURCE_EXHAUSTED, message, PAYLOAD_TOO_LARGE
        return None

    def limited(self, receive: Receive) -> Callable[[], Any]:
        """`receive`, raising MessageTooLarge once the body passes the limit (a chunked body has no length)."""
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                metrics.REJECTED.labels("too_large").inc()
                raise MessageTooLarge(too_large_message(self.max_body_bytes))
            return message

        return receive_limited
