"""Build and run the Stylize server.

    python -m server                      # models/ on 127.0.0.1:50051, metrics on 127.0.0.1:9464
    STYLIZE_DEVICE=cuda python -m server  # every flag has a STYLIZE_* variable: python -m server --help

Start-up order matters: workers first (they must not inherit the gRPC server's
threads), then the models are loaded and warmed, then the port opens, and only
then does health say SERVING. Shutdown reverses it: NOT_SERVING first, then
the in-flight calls get `grace_seconds` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from server import metrics
from server.admission import Admission
from server.config import ServerConfig
from server.registry import ModelRegistry
from server.runtime import RuntimeOptions, resolve_device
from server.servicer import StyleTransferServicer
from stylize.v1 import stylize_pb2, stylize_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = stylize_pb2.DESCRIPTOR.services_by_name["StyleTransfer"].full_name


def build_registry(config: ServerConfig) -> ModelRegistry:
    options = RuntimeOptions(device=resolve_device(config.device), intra_op_threads=config.intra_op_threads)
    registry = ModelRegistry(config.models, options)
    registry.load_all()
    for model in registry.models():
        for version in model.versions.values():
            metrics.MODEL_INFO.labels(model.name, str(version.version), model.spec.family).set(1)
            metrics.MODEL_WARMUP_SECONDS.labels(model.name, str(version.version)).set(version.warmup_seconds)
        metrics.MODEL_PROVIDER.labels(model.name, model.newest.provider).set(1)
    for name in registry.failures:
        metrics.MODEL_LOAD_FAILURES.labels(name).set(1)
    return registry


async def serve(config: ServerConfig) -> None:
    registry = build_registry(config)
    executor = ThreadPoolExecutor(max_workers=config.max_concurrent, thread_name_prefix="inference")
    servicer = StyleTransferServicer(config, registry, Admission(config.max_concurrent, config.max_queue), executor)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    stylize_pb2_grpc.add_StyleTransferServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host)
        logger.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)

    # Health means ready: every model is loaded and warmed.
    status = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", status)
    await health_servicer.set(SERVICE_NAME, status)
    logger.info("serving on %s:%d (health SERVING)", config.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    logger.info("shutting down: health NOT_SERVING, %.0f s grace for calls in flight", config.grace_seconds)
    servicer.draining = True
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_seconds)
    executor.shutdown(wait=True, cancel_futures=True)
    logger.info("stopped")
