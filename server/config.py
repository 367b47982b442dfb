"""Each process's settings: command-line flags with STYLIZE_* environment equivalents, parsed once.

    ServerConfig   the API process (`python -m server`): load_config()
    WorkerConfig   a queue worker (`make worker`, server/jobs/worker.py): load_worker_config()
    JobSettings    what both run jobs with; each takes these fields, defined once here

Precedence: a flag, else its environment variable, else the default. Each
entry point parses its own dataclass once and passes the small settings its
components use down (EngineSettings, RuntimeOptions, PoolSettings, ...);
nothing below the entry point reads flags or the environment. A variable keeps
its name in every process that reads it. (The trainers parse theirs in
training/config.py.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.jobs.model import JobProcessSettings

DEVICES = ("auto", "cpu", "cuda")
FP16_MODES = ("off", "auto", "measure", "always")  # server/fp16.py
INT8_MODES = FP16_MODES  # server/int8.py


def _setting(default: object, help: str) -> typing.Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class JobSettings:
    """Settings of both the API process and a queue worker: the queue, and how job processes run jobs."""

    queue: str = _setting("", "unset: local worker pool; redis://host:port/db: the distributed queue")
    device: str = _setting("auto", "auto | cpu | cuda; cuda where CUDA cannot start is an error")
    loss_weights: str = _setting(
        "keras-vgg16", "the workers' VGG weights: keras-vgg16 (make weights), torchvision, a file, or random:SEED"
    )
    job_precision: str = _setting("fp32", "the workers' arithmetic: fp32 | bf16 (on GPUs and AVX512-BF16/AMX CPUs)")
    max_pixels: int = _setting(16_777_216, "largest input image in pixels (width x height), checked before decoding")
    job_time_budget_seconds: float = _setting(1800.0, "longest a job may run; also its budget when it sets none")
    job_retention_seconds: float = _setting(3600.0, "how long finished jobs (and results) stay readable")
    job_update_interval_seconds: float = _setting(0.1, "WatchJob sends at most one update per interval (0: every)")
    worker_start_timeout_seconds: float = _setting(300.0, "how long a worker may take to load its loss network")
    queue_visibility_timeout_seconds: float = _setting(
        3600.0, "a job whose worker vanished (host lost, SIGKILL) is redelivered after this; above the time budget"
    )
    metrics_host: str = _setting("127.0.0.1", "address of the Prometheus /metrics port")
    log_level: str = _setting("INFO", "DEBUG | INFO | WARNING | ERROR")

    def job_process(self, threads: int) -> JobProcessSettings:
        """What each job process starts with (it crosses the spawn boundary: small and picklable)."""
        return JobProcessSettings(
            loss_weights=self.loss_weights,
            device=self.device,
            precision=self.job_precision,
            threads=threads,
            max_pixels=self.max_pixels,
            log_level=self.log_level,
        )

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.queue and not self.queue.startswith(("redis://", "rediss://")):
            raise ValueError(f"queue must be empty or a redis:// URL, not {self.queue!r}")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        if self.job_update_interval_seconds < 0:
            raise ValueError("job_update_interval_seconds must not be negative")
        for name in ("job_time_budget_seconds", "job_retention_seconds", "worker_start_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not self.queue_visibility_timeout_seconds > 0:
            raise ValueError("queue_visibility_timeout_seconds must be positive")
        if not self.loss_weights:
            raise ValueError("loss_weights must not be empty: imagenet, a weights file, or random:SEED")
        if self.job_precision not in ("fp32", "bf16"):
            raise ValueError(f"job_precision must be fp32 or bf16, not {self.job_precision!r}")


@dataclass(frozen=True)
class WorkerConfig(JobSettings):
    """A queue worker's settings (`make worker`): no port, no models, no TLS; its job process and its metrics."""

    job_max_attempts: int = _setting(2, "times a job may start: when its worker has died that often, it ends FAILED")
    worker_metrics_port: int = _setting(9465, "a queue worker's Prometheus /metrics port (0: off)")
    worker_threads: int = _setting(0, "torch threads of a queue worker's job process (0: every core)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.worker_metrics_port <= 65535:
            raise ValueError("worker_metrics_port must be in 0..65535")
        if self.job_max_attempts < 1 or self.worker_threads < 0:
            raise ValueError("job_max_attempts must be at least 1, worker_threads not negative")


@dataclass(frozen=True)
class ServerConfig(JobSettings):
    """The API process's settings (`python -m server`)."""

    host: str = _setting("127.0.0.1", "address of the gRPC port")
    port: int = _setting(50051, "gRPC port (0: any free port, printed in the log)")
    http_port: int = _setting(8080, "HTTP/JSON API and web page port, on the gRPC port's host, TLS and tokens (0: off)")
    http_keepalive_seconds: float = _setting(
        15.0, "an SSE stream with no update for this long gets a comment line, so proxies keep it open (0: never)"
    )
    metrics_port: int = _setting(9464, "Prometheus /metrics port (0: off)")
    models: Path = _setting(Path("models"), "the model repository")
    local_workers: int = _setting(1, "local Gatys worker processes (0: none)")
    intra_op_threads: int = _setting(0, "ONNX Runtime threads per session (0: one per physical core)")
    max_concurrent: int = _setting(2, "Stylize requests inferring at once")
    max_queue: int = _setting(16, "Stylize requests waiting beyond those; more get RESOURCE_EXHAUSTED")
    max_message_bytes: int = _setting(32 << 20, "largest request or response message")
    max_rpcs: int = _setting(64, "calls of any kind open at once (streams included); more get RESOURCE_EXHAUSTED")
    png_compress_level: int = _setting(1, "deflate level of PNG responses (ISA-L, 0-3; 1: 5 ms for 1 MP on 2 cores)")
    malloc_keep_mib: int = _setting(
        256, "free memory glibc's malloc keeps for the next request, MiB per arena (0: its defaults; allocator.py)"
    )
    grace_seconds: float = _setting(10.0, "on SIGTERM, how long in-flight calls and running jobs may finish")
    max_jobs_queued: int = _setting(16, "Gatys jobs waiting for a worker; more get RESOURCE_EXHAUSTED")
    job_max_side: int = _setting(1024, "largest output side a job may ask for, in pixels")
    job_max_iterations: int = _setting(2000, "most iterations a job may ask for, over all its stages")
    warmup_sides: tuple[int, ...] = _setting((64, 512), "square sizes each graph runs at before health says SERVING")
    reload_interval_seconds: float = _setting(10.0, "how often the model repository is rescanned (0: never)")
    tile_pixels: int = _setting(4_194_304, "pixel budget of one inference; larger images run tiled")
    tile_halo: int = _setting(128, "overlap of tiles in pixels (a multiple of 8)")
    style_max_side: int = _setting(512, "arbitrary style: style images are shrunk to this longer side")
    style_cache_entries: int = _setting(1024, "style statistics kept (4 KB each; 0: no cache)")
    batch_window_ms: float = _setting(0.0, "dynamic batching: how long a call waits for same-size calls (0: off)")
    max_batch: int = _setting(8, "dynamic batching: most images in one batch")
    graph_optimization: str = _setting("all", "ONNX Runtime graph optimisation: basic | extended | all")
    cudnn_conv_algo_search: str = _setting("HEURISTIC", "CUDA: HEURISTIC | EXHAUSTIVE | DEFAULT")
    gpu_mem_limit_bytes: int = _setting(0, "CUDA: ONNX Runtime's arena limit per session (0: none)")
    arena_shrinkage: bool = _setting(
        False, "after each run, free the arena growth it needed: less memory held, more allocation per large image"
    )
    fp16: str = _setting("auto", "fp16 graph variants: auto (CUDA: where faster) | measure | always | off (fp16.py)")
    int8: str = _setting("auto", "int8 variants: auto (CPU: where faster, in bound) | measure | always | off (int8.py)")
    tls_cert: str = _setting("", "PEM certificate chain for the gRPC port; with tls_key, TLS is on")
    tls_key: str = _setting("", "PEM private key for the gRPC port")
    tls_client_ca: str = _setting("", "PEM CA bundle: with it, callers must present a certificate it signed (mTLS)")
    tokens_file: str = _setting("", "a file of bearer tokens, one per line; calls must send one (health is open)")
    tokens: str = _setting("", "bearer tokens, comma-separated (prefer tokens_file: the environment leaks)")
    allow_insecure: bool = _setting(False, "allow a non-loopback host without TLS or tokens")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("port", "http_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in 0..65535")
        for name in ("local_workers", "intra_op_threads", "max_queue", "max_jobs_queued"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_rpcs < 4:
            raise ValueError("max_rpcs must be at least 4 (health checks and watchers count too)")
        if self.max_concurrent < 1 or self.max_message_bytes < 1024:
            raise ValueError("max_concurrent must be positive, max_message_bytes at least 1024")
        if not 0 <= self.malloc_keep_mib <= 1024:
            raise ValueError("malloc_keep_mib must be in 0..1024")
        if not 0 <= self.png_compress_level <= 3:
            raise ValueError("png_compress_level must be in 0..3 (ISA-L's deflate levels)")
        if self.job_max_side < 16 or self.job_max_iterations < 1:
            raise ValueError("job_max_side must be at least 16 and job_max_iterations at least 1")
        if self.tile_halo % 8 or self.tile_halo < 0 or self.tile_pixels < 64 * 64:
            raise ValueError("tile_halo must be a non-negative multiple of 8 and tile_pixels at least 4096")
        if self.graph_optimization not in ("basic", "extended", "all"):
            raise ValueError("graph_optimization must be basic, extended or all")
        if self.fp16 not in FP16_MODES:
            raise ValueError(f"fp16 must be one of {FP16_MODES}, not {self.fp16!r}")
        if self.int8 not in INT8_MODES:
            raise ValueError(f"int8 must be one of {INT8_MODES}, not {self.int8!r}")
        if self.cudnn_conv_algo_search not in ("HEURISTIC", "EXHAUSTIVE", "DEFAULT"):
            raise ValueError("cudnn_conv_algo_search must be HEURISTIC, EXHAUSTIVE or DEFAULT")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if any(side < 16 for side in self.warmup_sides) or self.max_batch < 1 or self.batch_window_ms < 0:
            raise ValueError("warmup_sides must be at least 16, max_batch at least 1, batch_window_ms not negative")


def env_name(field_name: str) -> str:
    return "STYLIZE_" + field_name.upper()


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The API process's settings."""
    return load_settings(ServerConfig, "python -m server", "Stylize gRPC server.", argv, environ)


def load_worker_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """A queue worker's settings."""
    description = "Stylize queue worker: Gatys jobs from STYLIZE_QUEUE."
    return load_settings(WorkerConfig, "python -m server.jobs.worker", description, argv, environ)


Settings = typing.TypeVar("Settings", ServerConfig, WorkerConfig)


def load_settings(
    kind: type[Settings],
    prog: str,
    description: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(kind)
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{description} Every flag has an environment variable, shown in brackets."
    )
    for f in dataclasses.fields(kind):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            default=None,
            help=f"{f.metadata['help']} [{env_name(f.name)}, default {f.default!s}]",
        )
    args = parser.parse_args(argv)
    values: dict[str, object] = {}
    for f in dataclasses.fields(kind):
        raw = getattr(args, f.name)
        source = f"--{f.name.replace('_', '-')}"
        if raw is None and env_name(f.name) in environ:
            raw, source = environ[env_name(f.name)], env_name(f.name)
        if raw is None:
            continue
        try:
            values[f.name] = _parse(hints[f.name], raw)
        except ValueError:
            parser.error(f"{source}={raw!r} is not a valid {hints[f.name]}")
    try:
        return kind(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable


def _parse(kind: object, raw: str) -> object:
    """A flag's or variable's text -> the field's type (bool and tuple of int need care)."""
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            raise ValueError(raw)
        return lowered in ("1", "true", "yes", "on")
    if typing.get_origin(kind) is tuple:
        return tuple(int(part) for part in raw.split(",") if part.strip())
    return kind(raw)  # type: ignore[operator]
