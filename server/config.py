"""The server's settings: command-line flags with STYLIZE_* environment equivalents, parsed once.

Precedence: a flag, else its environment variable, else the default. `main()`
calls `load_config()` once and passes the frozen result down; nothing below the
entry point reads flags or the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")


def _setting(default: object, help: str) -> typing.Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    host: str = _setting("127.0.0.1", "address of the gRPC port")
    port: int = _setting(50051, "gRPC port (0: any free port, printed in the log)")
    metrics_host: str = _setting("127.0.0.1", "address of the Prometheus /metrics port")
    metrics_port: int = _setting(9464, "Prometheus /metrics port (0: off)")
    models: Path = _setting(Path("models"), "the model repository")
    device: str = _setting("auto", "auto | cpu | cuda; cuda where CUDA cannot start is an error")
    queue: str = _setting("", "unset: local worker pool; redis://host:port/db: the distributed queue")
    local_workers: int = _setting(1, "local Gatys worker processes (0: none)")
    intra_op_threads: int = _setting(0, "ONNX Runtime threads per session (0: one per physical core)")
    max_concurrent: int = _setting(2, "Stylize requests inferring at once")
    max_queue: int = _setting(16, "Stylize requests waiting beyond those; more get RESOURCE_EXHAUSTED")
    max_message_bytes: int = _setting(32 << 20, "largest request or response message")
    max_pixels: int = _setting(16_777_216, "largest input image in pixels (width x height), checked before decoding")
    png_compress_level: int = _setting(1, "zlib level of PNG responses (0-9; 1 is fast, 6 is Pillow's default)")
    grace_seconds: float = _setting(10.0, "on SIGTERM, how long in-flight calls may finish")
    log_level: str = _setting("INFO", "DEBUG | INFO | WARNING | ERROR")

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.queue and not self.queue.startswith(("redis://", "rediss://")):
            raise ValueError(f"queue must be empty or a redis:// URL, not {self.queue!r}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in 0..65535")
        for name in ("local_workers", "intra_op_threads", "max_queue"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_concurrent < 1 or self.max_pixels < 1 or self.max_message_bytes < 1024:
            raise ValueError("max_concurrent and max_pixels must be positive, max_message_bytes at least 1024")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError("png_compress_level must be in 0..9")


def env_name(field_name: str) -> str:
    return "STYLIZE_" + field_name.upper()


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(ServerConfig)
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Stylize gRPC server. Every flag has an environment variable, shown in brackets.",
    )
    for f in dataclasses.fields(ServerConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            default=None,
            help=f"{f.metadata['help']} [{env_name(f.name)}, default {f.default!s}]",
        )
    args = parser.parse_args(argv)
    values: dict[str, object] = {}
    for f in dataclasses.fields(ServerConfig):
        raw = getattr(args, f.name)
        source = f"--{f.name.replace('_', '-')}"
        if raw is None and env_name(f.name) in environ:
            raw, source = environ[env_name(f.name)], env_name(f.name)
        if raw is None:
            continue
        kind = hints[f.name]
        try:
            values[f.name] = kind(raw)
        except ValueError:
            parser.error(f"{source}={raw!r} is not a valid {kind.__name__}")
    try:
        return ServerConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable
