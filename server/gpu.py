"""GPU memory through NVML (the driver's library), read at scrape time; nothing where there is no GPU.

ctypes rather than a Python binding: the API image stays small, and a machine
without the driver simply reports no GPU.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _load_nvml() -> ctypes.CDLL | None:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    return nvml


def memory() -> list[tuple[int, int, int]]:
    """[(gpu index, used bytes, total bytes)] for every GPU NVML sees; [] without the driver."""
    nvml = _NVML
    if nvml is None:
        return []
    count = ctypes.c_uint(0)
    if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        return []
    found = []
    for index in range(count.value):
        handle = ctypes.c_void_p()
        info = _Memory()
        if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
            continue
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info)) == 0:
            found.append((index, int(info.used), int(info.total)))
    return found


_NVML = _load_nvml()


class GpuMemoryCollector(Collector):
    """stylize_gpu_memory_used_bytes and _total_bytes per GPU, read when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily("stylize_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("stylize_gpu_memory_total_bytes", "GPU memory in all (NVML)", labels=["gpu"])
        for index, used_bytes, total_bytes in memory():
            used.add_metric([str(index)], used_bytes)
            total.add_metric([str(index)], total_bytes)
        yield used
        yield total
