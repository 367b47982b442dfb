"""uvicorn serving the HTTP app inside the API process's event loop, beside the gRPC server.

Same host as the gRPC port (whose binding rules server/main.py has checked),
the same TLS files and the same tokens. uvicorn's own signal handling is left
out: server/main.py owns SIGTERM and stops this after the gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from server.auth import load_tokens
from server.config import ServerConfig
from server.http.app import HttpSettings, build_app, readiness
from server.service import StylizeService

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # server/main.py handles SIGTERM and SIGINT for both front doors


class HttpServer:
    def __init__(self, server: _Server, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (uvicorn's graceful timeout), then return."""
        self.server.should_exit = True
        await self.task


async def start_http(
    config: ServerConfig, service: StylizeService, health_servicer: Any, service_name: str
) -> HttpServer:
    digests = load_tokens(Path(config.tokens_file) if config.tokens_file else None, config.tokens)
    settings = HttpSettings(
        max_body_bytes=config.max_message_bytes,
        max_open_requests=config.max_rpcs,
        token_digests=digests,
        keepalive_seconds=config.http_keepalive_seconds,
    )
    app = build_app(service, settings, readiness(health_servicer, service_name))
    tls: dict[str, Any] = {}
    if config.tls_cert:
        tls = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
        if config.tls_client_ca:
            tls |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.http_port,
            lifespan="off",
            log_config=None,  # the server's logging, configured once in server/__main__.py
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(config.grace_seconds) or 1,
            **tls,
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():  # uvicorn exits (SystemExit) when it cannot bind
            raise OSError(f"cannot listen for HTTP on {config.host}:{config.http_port}")
        await asyncio.sleep(0.01)
    scheme = "https" if config.tls_cert else "http"
    logger.info("HTTP API and web page on %s://%s:%d/", scheme, config.host, config.http_port)
    return HttpServer(server, task)
