"""The API process never imports torch: only worker processes and training do."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

API_MODULES = [
    "server.main",
    "server.servicer",
    "server.registry",
    "server.pipeline",
    "server.video",
    "server.temporal",
    "server.codec",
    "server.jobs.local",
    "server.jobs.store",
    "server.jobs.convert",
    "server.jobs.entry",
    "server.jobs.queue",
    "server.jobs.distributed",
    "server.jobs.queue_worker",  # the queue worker's own process: torch only in the job process it spawns
    "client.cli",
]


def test_api_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        f"for name in {API_MODULES!r}: __import__(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision')))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
