"""ONNX Runtime sessions: which execution provider, with which options, and proof that it started.

ONNX Runtime quietly runs on the CPU when the CUDA provider cannot start (no
driver, no device, a missing cuDNN). Stylize never does: the device is decided
once at start-up (`resolve_device`), every session is checked after it starts
(`create_session`), and asking for CUDA where it cannot start is an error.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderUnavailable(RuntimeError):
    """The requested execution provider cannot start here; the message says why."""


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "cpu"  # resolved: "cpu" or "cuda"
    intra_op_threads: int = 0  # 0: ONNX Runtime's default, one per physical core
    graph_optimization: str = "all"  # "basic" | "extended" | "all"
    # CUDA provider options (ignored on CPU).
    cudnn_conv_algo_search: str = "HEURISTIC"  # EXHAUSTIVE benchmarks every new shape: seconds per new size
    gpu_mem_limit_bytes: int = 0  # 0: no limit
    cuda_device_id: int = 0
    # After each run, give back the arena memory the run grew beyond the first chunk: less memory held
    # between large images, page faults (CPU) or cudaMalloc (CUDA) on the next large one.
    arena_shrinkage: bool = False
    fp16: str = "off"  # fp16 variants of the graphs (server/fp16.py): off | auto | measure | always
    int8: str = "off"  # int8 variants written at export (server/int8.py): off | auto | measure | always

    @property
    def provider(self) -> str:
        return CUDA if self.device == "cuda" else CPU


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why none) from the driver API, without importing a framework."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "libcuda.so.1 (the NVIDIA driver) cannot be loaded"
    if libcuda.cuInit(0) != 0:
        return 0, "cuInit failed: the driver found no usable GPU"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the driver reports no CUDA device"
    return count.value, ""


def why_no_cuda() -> str:
    """Why ONNX Runtime cannot run on CUDA here; empty where it can."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build has no {CUDA} (install onnxruntime-gpu)"
    return cuda_device_count()[1]


def resolve_device(requested: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda', logging the choice and its reason."""
    if requested == "cpu":
        logger.info("execution provider: %s (asked for)", CPU)
        return "cpu"
    why_not = why_no_cuda()
    if not why_not:
        logger.info("execution provider: %s (%d CUDA device(s))", CUDA, cuda_device_count()[0])
        return "cuda"
    if requested == "cuda":
        raise ProviderUnavailable(f"STYLIZE_DEVICE=cuda, but CUDA cannot start: {why_not}. Use auto or cpu.")
    logger.info("execution provider: %s (auto: %s)", CPU, why_not)
    return "cpu"


_OPTIMIZATION = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class Session:
    """An ONNX Runtime session whose every run carries the configured run options (arena shrinkage)."""

    def __init__(self, session: ort.InferenceSession, options: RuntimeOptions) -> None:
        self.inner = session
        self.run_options = ort.RunOptions()
        if options.arena_shrinkage:
            arena = f"gpu:{options.cuda_device_id}" if options.device == "cuda" else "cpu:0"
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arena)

    def run(self, output_names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        return list(self.inner.run(output_names, dict(feeds), self.run_options))


def create_session(model: Path | bytes, options: RuntimeOptions) -> Session:
    """A session (from a file or serialised graph) on the resolved provider; ProviderUnavailable if ONNX Runtime
    fell back to another one."""
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = _OPTIMIZATION[options.graph_optimization]
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.log_severity_level = 3  # errors only; fallbacks are caught below
    # ONNX Runtime's threads spin while they wait for work, inside a run and on after it. In a server
    # the cores are wanted at the same time by decoding, encoding and the other call's inference, which
    # the spinning slows: with 8 concurrent clients on 2 cores the service gave 0.75-0.94x the
    # throughput of sequential direct runs with spinning, 0.90-0.95x with spinning stopped after each
    # run, 1.01-1.02x with none, which costs a lone 1024 px call about 3% (bench/serving.py).
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[str | tuple[str, dict[str, str]]]
    if options.device == "cuda":
        cuda_options = {
            "device_id": str(options.cuda_device_id),
            "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
            # Grow the arena by what is asked, not by powers of two: varying image
            # sizes otherwise leave large unused blocks behind.
            "arena_extend_strategy": "kSameAsRequested",
        }
        if options.gpu_mem_limit_bytes:
            cuda_options["gpu_mem_limit"] = str(options.gpu_mem_limit_bytes)
        providers = [(CUDA, cuda_options), CPU]
    else:
        providers = [CPU]
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, session_options, providers=providers)
    active = session.get_providers()
    if active[0] != options.provider:
        where = "a derived graph" if isinstance(model, bytes) else str(model)
        raise ProviderUnavailable(f"{where}: asked for {options.provider}, ONNX Runtime started {active[0]}")
    return Session(session, options)
