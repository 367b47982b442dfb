"""What this CPU's instruction set offers the int8 and fp32 kernels, read at run time from /proc/cpuinfo.

ONNX Runtime's int8 convolutions are fast where the CPU has a dot-product
instruction for 8-bit integers (AVX-512 VNNI, AVX-VNNI or AMX); with AVX2 alone
they widen to 16 bits and may be no faster than fp32. The server says which it
found (server/int8.py) and benchmarks record it (bench/common.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

# The flags that decide which kernels ONNX Runtime picks, in the kernel's order of preference.
SIMD_FLAGS = (
    "sse4_2",
    "fma",
    "f16c",
    "avx",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
)
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first processor's flags (empty where /proc/cpuinfo is absent, as on macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def simd_flags() -> list[str]:
    """The SIMD_FLAGS this CPU has, in SIMD_FLAGS' order."""
    flags = cpu_flags()
    return [flag for flag in SIMD_FLAGS if flag in flags]


def int8_dot_product() -> str:
    """The 8-bit dot-product instruction set this CPU has ("avx512_vnni", ...), or "" for none."""
    flags = cpu_flags()
    return next((flag for flag in INT8_DOT_FLAGS if flag in flags), "")
