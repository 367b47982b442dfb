"""Access control: TLS (optionally mutual) for the gRPC port and bearer tokens in call metadata.

Tokens come from a file (one per line, `#` comments) or the environment; the
server keeps only their SHA-256 digests and compares a caller's digest with
every one of them in constant time, so neither the comparison nor the loop
leaks which token, or how much of it, matched. Health checks stay open: load
balancers and `docker compose` probe without credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger(__name__)

OPEN_METHODS_PREFIX = "/grpc.health.v1.Health/"
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "[::1]"}


class InsecureBinding(RuntimeError):
    """A non-loopback address without TLS or tokens, and no explicit permission to run so."""


def load_tokens(file: Path | None, inline: str) -> list[bytes]:
    """SHA-256 digests of the configured tokens: a file's lines and a comma-separated string."""
    tokens: list[str] = [t.strip() for t in inline.split(",") if t.strip()]
    if file is not None:
        for line in file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.append(line)
    for token in tokens:
        if len(token) < 16:
            raise ValueError("every token must be at least 16 characters (use `openssl rand -hex 32`)")
    return [hashlib.sha256(token.encode()).digest() for token in tokens]


def token_matches(presented: str, digests: Iterable[bytes]) -> bool:
    candidate = hashlib.sha256(presented.encode()).digest()
    matched = False
    for digest in digests:  # no early exit: the time does not depend on which token matched
        matched |= hmac.compare_digest(candidate, digest)
    return matched


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` that ends the call with `code`."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - an async generator, like the handler it replaces

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc,type-arg]
    """Lets a call through only with `authorization: Bearer <token>` for a configured token."""

    def __init__(self, digests: list[bytes], on_refused: Callable[[str], None] | None = None) -> None:
        self.digests = digests
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS_PREFIX):
            return handler
        token = bearer_token(details.invocation_metadata)
        if token is None:
            reason, message = "missing", "this server needs a token: send the metadata `authorization: Bearer <token>`"
        elif not token_matches(token, self.digests):
            reason, message = "invalid", "the token is not valid for this server"
        else:
            return handler
        logger.warning("refused %s: %s token", details.method, reason)
        if self.on_refused is not None:
            self.on_refused(reason)
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, message)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS for the gRPC port; with a client CA, mutual TLS: callers must show a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def check_binding(host: str, *, tls: bool, tokens: bool, allow_insecure: bool) -> None:
    """Refuse to listen beyond loopback with neither TLS nor tokens, unless told explicitly."""
    if host in LOOPBACK_HOSTS or tls or tokens:
        return
    if allow_insecure:
        logger.warning("listening on %s with neither TLS nor tokens (STYLIZE_ALLOW_INSECURE)", host)
        return
    raise InsecureBinding(
        f"STYLIZE_HOST={host} is reachable from other machines, but neither TLS (STYLIZE_TLS_CERT and "
        "STYLIZE_TLS_KEY) nor tokens (STYLIZE_TOKENS_FILE or STYLIZE_TOKENS) are configured. Configure one, "
        "or set STYLIZE_ALLOW_INSECURE=true for a private network."
    )
