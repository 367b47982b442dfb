"""The API process and the queue worker never import torch: only the job process and training do."""

from __future__ import annotations

import re
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
    "core.codec",
    "core.repository",
    "server.jobs.local",
    "server.jobs.store",
    "server.jobs.convert",
    "server.jobs.job_process",  # the spawn target's module: the parent imports it to name it
    "server.jobs.queue",
    "server.jobs.distributed",
    "client.cli",
]


def worker_entry_module() -> str:
    """The module `make worker` runs, read from the Makefile's worker target."""
    target = re.search(r"^worker:.*\n\t\$\(PY\) -m ([\w.]+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert target, "the Makefile has no `worker:` target running `$(PY) -m <module>`"
    return target.group(1)


def assert_torch_free(modules: list[str], run: str = "") -> None:
    code = (
        "import sys\n"
        f"for name in {modules!r}: __import__(name)\n"
        f"{run}\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision')))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_api_modules_do_not_import_torch() -> None:
    assert_torch_free(API_MODULES)


def test_the_queue_worker_imports_no_torch_only_its_job_process_does() -> None:
    """`make worker`'s own module, and everything it imports to consume the queue (run's lazy imports too)."""
    entry = worker_entry_module()
    assert entry == "server.jobs.worker"
    consumer = ["server.jobs.queue_worker", "server.jobs.queue_ledger", "server.jobs.process", "prometheus_client"]
    assert_torch_free([entry, *consumer])
