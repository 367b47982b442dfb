"""Build and run the Stylize server.

    python -m server                      # models/ on 127.0.0.1:50051, metrics on 127.0.0.1:9464
    STYLIZE_DEVICE=cuda python -m server  # every flag has a STYLIZE_* variable: python -m server --help

Start-up order matters: workers first (they must not inherit the gRPC server's
threads), then the models are loaded and warmed while the workers load their
loss network, then the port opens, and only then does health say SERVING (the
job service, "stylize.jobs", once its workers are ready). Shutdown reverses it:
NOT_SERVING first; queued jobs fail, running ones get `grace_seconds` to finish
(watchers see their final state); then in-flight calls get `grace_seconds`.
The HTTP API (STYLIZE_HTTP_PORT, server/http/) opens with the gRPC port and
closes after it: two front doors to one StylizeService.
With STYLIZE_QUEUE the jobs live in Redis and run on their own workers: a
replica that stops fails none of them (server/jobs/distributed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from core import codec
from server import metrics
from server.admission import Admission
from server.auth import TokenInterceptor, check_binding, load_tokens, server_credentials
from server.config import ServerConfig
from server.http.serve import start_http
from server.jobs.local import LocalJobService, PoolSettings
from server.jobs.model import JobLimits
from server.jobs.service import DisabledJobService, JobService
from server.pipeline import Engine, EngineSettings
from server.registry import Changes, ModelRegistry
from server.runtime import RuntimeOptions, cuda_device_count, resolve_device
from server.service import FAMILIES, StylizeService
from server.servicer import StyleTransferServicer
from server.style_cache import StyleStatsCache
from stylize.v1 import stylize_pb2, stylize_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = stylize_pb2.DESCRIPTOR.services_by_name["StyleTransfer"].full_name
JOBS_SERVICE_NAME = "stylize.jobs"  # health of the Gatys job service alone
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def build_job_service(config: ServerConfig) -> JobService:
    """The Redis queue with STYLIZE_QUEUE, else the local worker pool; with neither, every job call is UNAVAILABLE."""
    limits = JobLimits(
        config.job_max_side, config.job_max_iterations, config.job_time_budget_seconds, config.max_pixels
    )
    if config.queue:
        try:
            from server.jobs.distributed import QueueClientSettings, RedisJobService  # the `queue` extra
        except ImportError as exc:
            return DisabledJobService(
                f"STYLIZE_QUEUE is set but {exc}: install the queue extra (pip install -e '.[queue]')", limits
            )
        queue = QueueClientSettings(
            url=config.queue,
            max_queued=config.max_jobs_queued,
            retention_seconds=config.job_retention_seconds,
            update_interval_seconds=config.job_update_interval_seconds,
            visibility_timeout_seconds=config.queue_visibility_timeout_seconds,
        )
        return RedisJobService(queue, limits)
    if config.local_workers == 0:
        return DisabledJobService(
            "this server runs no Gatys job service (STYLIZE_LOCAL_WORKERS=0 and no STYLIZE_QUEUE)", limits
        )
    pool = PoolSettings(
        processes=config.local_workers,
        max_queued=config.max_jobs_queued,
        retention_seconds=config.job_retention_seconds,
        update_interval_seconds=config.job_update_interval_seconds,
        start_timeout_seconds=config.worker_start_timeout_seconds,
    )
    # The host's cores shared out: two job processes each using every core only fight over them.
    process = config.job_process(threads=max(1, (os.cpu_count() or 1) // config.local_workers))
    return LocalJobService(pool, process, limits)


def runtime_options(config: ServerConfig) -> RuntimeOptions:
    return RuntimeOptions(
        device=resolve_device(config.device),
        intra_op_threads=config.intra_op_threads,
        graph_optimization=config.graph_optimization,
        cudnn_conv_algo_search=config.cudnn_conv_algo_search,
        gpu_mem_limit_bytes=config.gpu_mem_limit_bytes,
        arena_shrinkage=config.arena_shrinkage,
        fp16=config.fp16,
        int8=config.int8,
    )


def record_models(registry: ModelRegistry, changes: Changes) -> None:
    """Keep the model metrics in step with what the registry serves."""
    for name, number in changes.removed:
        for family in FAMILIES:
            with contextlib.suppress(KeyError):
                metrics.MODEL_INFO.remove(name, str(number), family)
        with contextlib.suppress(KeyError):
            metrics.MODEL_WARMUP_SECONDS.remove(name, str(number))
    metrics.MODEL_PROVIDER.clear()
    metrics.MODEL_PRECISION.clear()
    for model in registry.models():
        for graph, precision in model.newest.precision.items():
            metrics.MODEL_PRECISION.labels(model.name, graph, precision).set(1)
        for version in model.versions.values():
            metrics.MODEL_INFO.labels(model.name, str(version.version), model.spec.family).set(1)
            metrics.MODEL_WARMUP_SECONDS.labels(model.name, str(version.version)).set(version.warmup_seconds)
        metrics.MODEL_PROVIDER.labels(model.name, model.newest.provider).set(1)
        metrics.TILED.labels(model.name)  # at 0 until its first tiled call
        metrics.VIDEO_FRAMES.labels(model.name)  # and until its first video frame
    metrics.MODEL_LOAD_FAILURES.clear()
    for name in registry.failures:
        metrics.MODEL_LOAD_FAILURES.labels(name).set(1)


async def new_health_servicer() -> Any:
    """The health service, NOT_SERVING until serve() says otherwise.

    grpc's servicer starts with the whole server ("") SERVING; set before the
    port opens, a probe in the moments between the port opening and the last
    status being set (the HTTP door starting, the jobs' status) gets NOT_SERVING
    rather than a SERVING that the job service's status does not yet back.
    """
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    for name in ("", SERVICE_NAME, JOBS_SERVICE_NAME):
        await servicer.set(name, NOT_SERVING)
    return servicer


MODEL_HEALTH_PREFIX = "stylize.model."  # health per model: "stylize.model.starry_night"


async def report_model_health(health_servicer: Any, registry: ModelRegistry) -> None:
    """SERVING for each served model, NOT_SERVING for each that failed to load (operators ask health which)."""
    for model in registry.models():
        await health_servicer.set(MODEL_HEALTH_PREFIX + model.name, SERVING)
    served = {model.name for model in registry.models()}
    for key in registry.failures:
        name = key.split(" ", 1)[0]
        if name not in served:
            await health_servicer.set(MODEL_HEALTH_PREFIX + name, NOT_SERVING)


async def watch_repository(registry: ModelRegistry, engine: Engine, interval_s: float, health_servicer: Any) -> None:
    """Rescan the model repository every interval; new versions are warmed before they are served."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        try:
            changes = await loop.run_in_executor(None, registry.refresh)
        except Exception:  # a bad scan must not end the watching
            logger.exception("rescanning %s failed", registry.root)
            continue
        for name, version in changes.removed:
            engine.forget(name, version)
        if changes.added or changes.removed:
            logger.info("model repository changed: added %s, removed %s", changes.added, changes.removed)
            record_models(registry, changes)
            await report_model_health(health_servicer, registry)
            for name, _ in changes.removed:
                if name not in {model.name for model in registry.models()} and name not in registry.failures:
                    await health_servicer.set(MODEL_HEALTH_PREFIX + name, NOT_SERVING)


def grpc_server(config: ServerConfig) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with its limits and access control, bound to its port (not started)."""
    digests = load_tokens(Path(config.tokens_file) if config.tokens_file else None, config.tokens)
    tls = bool(config.tls_cert)
    check_binding(config.host, tls=tls, tokens=bool(digests), allow_insecure=config.allow_insecure)
    interceptors = [TokenInterceptor(digests, lambda reason: metrics.REJECTED.labels(f"auth_{reason}").inc())]
    server = grpc.aio.server(
        interceptors=interceptors if digests else None,
        # gRPC refuses calls beyond this before reading their messages: what bounds request memory.
        maximum_concurrent_rpcs=config.max_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    address = f"{config.host}:{config.port}"
    if tls:
        credentials = server_credentials(
            Path(config.tls_cert), Path(config.tls_key), Path(config.tls_client_ca) if config.tls_client_ca else None
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    logger.info(
        "access: %s, %s",
        "mutual TLS" if config.tls_client_ca else "TLS" if tls else "plaintext",
        f"{len(digests)} token(s)" if digests else "no tokens",
    )
    return server, port


async def serve(config: ServerConfig) -> None:
    jobs = build_job_service(config)
    await jobs.start()  # spawns the workers: before any gRPC thread exists
    options = runtime_options(config)
    metrics.CUDA_DEVICES.set(cuda_device_count()[0])
    metrics.start_at_zero(m.name for m in stylize_pb2.DESCRIPTOR.services_by_name["StyleTransfer"].methods)
    registry = ModelRegistry(config.models, options, config.warmup_sides)
    record_models(registry, registry.load_all())
    codec.warm_up()
    engine = Engine(
        EngineSettings(
            max_pixels=config.max_pixels,
            tile_pixels=config.tile_pixels,
            tile_halo=config.tile_halo,
            style_max_side=config.style_max_side,
            png_compress_level=config.png_compress_level,
            batch_window_ms=config.batch_window_ms,
            max_batch=config.max_batch,
        ),
        StyleStatsCache(config.style_cache_entries),
        options,
    )
    # Batching needs calls in flight together: room for a full batch on top of the configured slots.
    threads = config.max_concurrent + (config.max_batch if config.batch_window_ms else 0)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inference")
    admission = Admission(threads, config.max_queue)
    service = StylizeService(registry, admission, executor, jobs, engine)

    # The workers load their loss network while the models load; the port opens once both are done.
    if not await jobs.wait_ready(config.worker_start_timeout_seconds):
        log = logger.info if isinstance(jobs, DisabledJobService) else logger.error
        log("Gatys jobs unavailable: %s", jobs.unavailable_reason)

    server, port = grpc_server(config)
    stylize_pb2_grpc.add_StyleTransferServicer_to_server(StyleTransferServicer(service), server)
    health_servicer = await new_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await server.start()
    http = await start_http(config, service, health_servicer, SERVICE_NAME) if config.http_port else None
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host)
        logger.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)

    # Health means ready: every model is loaded and warmed, and the workers have loaded their loss network.
    # Jobs have their own name: a server whose workers cannot start still serves Stylize.
    await health_servicer.set(JOBS_SERVICE_NAME, SERVING if jobs.healthy else NOT_SERVING)
    loop = asyncio.get_running_loop()
    health_updates: set[asyncio.Task[None]] = set()

    def report_jobs_health(healthy: bool) -> None:
        task = loop.create_task(health_servicer.set(JOBS_SERVICE_NAME, SERVING if healthy else NOT_SERVING))
        health_updates.add(task)
        task.add_done_callback(health_updates.discard)

    jobs.on_health_change = report_jobs_health
    await report_model_health(health_servicer, registry)
    await health_servicer.set("", SERVING)
    await health_servicer.set(SERVICE_NAME, SERVING)
    logger.info("serving on %s:%d (health SERVING; jobs %s)", config.host, port, "on" if jobs.healthy else "off")

    watcher = (
        loop.create_task(watch_repository(registry, engine, config.reload_interval_seconds, health_servicer))
        if config.reload_interval_seconds
        else None
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    logger.info("shutting down: health NOT_SERVING, %.0f s grace for calls in flight", config.grace_seconds)
    if watcher is not None:
        watcher.cancel()
    await health_servicer.enter_graceful_shutdown()
    shutdown_started = time.monotonic()
    await service.drain(config.grace_seconds)  # ports open: new calls get UNAVAILABLE, health NOT_SERVING
    await jobs.stop(config.grace_seconds)
    await server.stop(max(0.0, config.grace_seconds - (time.monotonic() - shutdown_started)))
    if http is not None:
        await http.stop()
    executor.shutdown(wait=True, cancel_futures=True)
    logger.info("stopped")
