"""The benchmarks read the model repository as it is, not a version that retraining removed.

`make bench` is not part of `make test` (it takes an hour), so a benchmark that named
`models/great_wave/1` kept passing every test after v1 was replaced, and failed only
when run. These check, cheaply, what such a run needs first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.common import newest_graph
from core.repository import model_dirs
from tests.conftest import ROOT

BENCH = sorted(p for p in (ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.name)
def test_no_benchmark_names_a_version_directory(path: Path) -> None:
    # A path built as `... / "models" / name / "<digits>" / ...`: a string literal of digits joined by `/`.
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and side.value.isdigit():
                    pytest.fail(f"{path.name}:{node.lineno}: a fixed version directory {side.value!r}")


@pytest.mark.parametrize("model_dir", model_dirs(ROOT / "models"), ids=lambda p: p.name)
def test_every_bundled_model_has_a_newest_graph(model_dir: Path) -> None:
    assert newest_graph(model_dir).is_file()
