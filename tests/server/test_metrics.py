"""Labelled counters exist at 0 from the first scrape, and their declared label values are the ones the code uses."""

from __future__ import annotations

import ast
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from server import metrics
from server.jobs.model import JobState
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import ROOT, RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def fresh(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(model_repo, tmp_path_factory.mktemp("fresh") / "server.log")
    yield server
    stop_server(server)


def test_a_fresh_server_exports_every_known_counter_at_zero(fresh: RunningServer, model_repo: Path) -> None:
    # Health checks (wait_serving) are not StyleTransfer calls, so nothing below has counted yet.
    exposition = urllib.request.urlopen(fresh.metrics_url, timeout=10).read().decode()
    expected = [
        f'stylize_requests_total{{code="{code}",method="{method.name}",protocol="{protocol}"}} 0.0'
        for method in pb.DESCRIPTOR.services_by_name["StyleTransfer"].methods
        for code in metrics.STATUS_CODES
        for protocol in metrics.PROTOCOLS
    ]
    expected += [f'stylize_requests_rejected_total{{reason="{r}"}} 0.0' for r in metrics.REJECTION_REASONS]
    expected += [f'stylize_jobs_finished_total{{state="{s}"}} 0.0' for s in metrics.JOB_FINAL_STATES]
    expected += [f'stylize_style_cache_requests_total{{result="{r}"}} 0.0' for r in metrics.STYLE_CACHE_RESULTS]
    expected += [f'stylize_tiled_requests_total{{model="{m.name}"}} 0.0' for m in model_repo.iterdir() if m.is_dir()]
    assert len(expected) > 100
    missing = [line for line in expected if line not in exposition.splitlines()]
    assert not missing, missing


def test_a_queue_worker_exports_its_counters_at_zero() -> None:
    exposition = generate_latest(metrics.WORKER_REGISTRY).decode().splitlines()
    for state in metrics.JOB_FINAL_STATES:
        assert f'stylize_jobs_finished_total{{state="{state}"}} 0.0' in exposition
    for reason in metrics.REQUEUE_REASONS:
        assert f'stylize_worker_jobs_requeued_total{{reason="{reason}"}} 0.0' in exposition


def label_strings(counter: str) -> set[str]:
    """Every string a call `<anything>.<counter>.labels(...)` in server/ can pass, read from the source.

    Constants in the call (a conditional's branches too), the constant prefix of an f-string, and the
    constants assigned to a name the call passes, within the same function.
    """
    found: set[str] = set()
    for path in (ROOT / "server").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.Module):
                continue
            assigned: dict[str, list[ast.expr]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    assigned.setdefault(node.targets[0].id, []).append(node.value)
            for node in ast.walk(function):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "labels"
                    and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == counter
                ):
                    continue
                for argument in [*node.args, *(k.value for k in node.keywords)]:
                    values = assigned.get(argument.id, []) if isinstance(argument, ast.Name) else [argument]
                    for value in values:
                        for part in ast.walk(value):
                            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                                found.add(part.value)
    return found


def test_declared_label_values_are_the_ones_the_code_uses() -> None:
    rejected = label_strings("REJECTED")
    assert "auth_" in rejected  # main.py: f"auth_{reason}", reason from server/auth.py
    auth_reasons = {"auth_", "auth_missing", "auth_invalid"}  # the HTTP guard names them whole
    assert rejected - auth_reasons == set(metrics.REJECTION_REASONS) - auth_reasons
    assert label_strings("WORKER_REQUEUED") == set(metrics.REQUEUE_REASONS)
    assert label_strings("STYLE_CACHE") == set(metrics.STYLE_CACHE_RESULTS)
    assert set(metrics.JOB_FINAL_STATES) == {state.value for state in JobState if state.final}
    auth = (ROOT / "server" / "auth.py").read_text()
    for reason in ("missing", "invalid"):
        assert f'reason, message = "{reason}"' in auth
