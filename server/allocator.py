"""Keep large freed buffers in the process for the next request instead of unmapping them.

A 1024 px request moves some 30 MB through buffers of 3 and 12 MB: the request's
pixels, the graph's float input, the float-to-uint8 conversion, the response.
glibc's malloc serves each from freshly mapped pages and unmaps it on free, so
every request pays a page fault for each 4 KB it touches: about 1 ms per MB
under KVM (bench/results/serving.json's machine), some 25 ms on top of the
`fast` preset's 210 ms of inference. Raising the mmap threshold to glibc's
ceiling (32 MiB) and the trim threshold to `keep_bytes` lets freed buffers be
reused as they are; the process keeps up to `keep_bytes` of free memory per
malloc arena instead. Model weights and ONNX Runtime's own arena are not
affected. Other allocators (musl, jemalloc via LD_PRELOAD) are left alone.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_CEILING = 32 << 20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)


def retain_freed_memory(keep_bytes: int) -> bool:
    """Tune glibc's malloc as above; False (and nothing changed) for keep_bytes 0 or another libc."""
    if keep_bytes <= 0:
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        logger.info("not glibc: malloc left as it is")
        return False
    mmap_threshold = min(keep_bytes, MMAP_THRESHOLD_CEILING)
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(keep_bytes))
    )
    if not applied:
        logger.warning("mallopt refused the thresholds: malloc left as it is")
    return applied
