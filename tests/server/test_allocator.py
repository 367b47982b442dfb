"""server/allocator.py: freed request buffers are reused without page faults (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The large buffers of a 1024 px request (pixels in, float input, float output, pixels out), alive
# together then freed, as a request does; prints whether the tuning applied and the page faults
# of one further request.
REQUEST = """
import resource, sys
import numpy as np
from server.allocator import retain_freed_memory
applied = retain_freed_memory(int(sys.argv[1]) << 20)
def request():
    buffers = [np.ones(size << 20, np.uint8) for size in (3, 12, 12, 3)]
    del buffers
request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    request()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def faults_per_request(keep_mib: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", REQUEST, str(keep_mib)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc's malloc")
def test_freed_request_buffers_are_reused_without_page_faults() -> None:
    applied, faults = faults_per_request(256)
    assert applied and faults < 100
    untuned, faults = faults_per_request(0)
    assert not untuned and faults > 1000  # glibc's defaults map 9 MB of it afresh every time
