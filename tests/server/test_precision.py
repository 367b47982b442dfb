"""fp16 graph variants (server/fp16.py) and arena shrinkage (server/runtime.py), on real sessions.

Which precision a GPU runs faster cannot be produced on this CPU, so the tests
of the choice slow one real session down by a set delay; everything else is
the real conversion, real ONNX Runtime sessions and the real registry.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from core.repository import list_versions, read_spec
from server import fp16
from server.registry import ModelRegistry, fp32_graph, graph_feeds
from server.runtime import RuntimeOptions, Session, create_session

ROOT = Path(__file__).resolve().parents[2]
CPU = RuntimeOptions(device="cpu")


class Delayed:
    """A real session that takes `delay` seconds longer, or answers `offset` off: stands in for a GPU."""

    def __init__(self, session: Session, delay: float = 0.0, offset: float = 0.0) -> None:
        self.session, self.delay, self.offset = session, delay, offset

    def run(self, output_names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        time.sleep(self.delay)
        return [np.asarray(out) + np.float32(self.offset) for out in self.session.run(output_names, feeds)]


@pytest.fixture(scope="module")
def tiny_sessions(model_repo: Path) -> tuple[Session, Session, dict[str, np.ndarray]]:
    path = model_repo / "tiny" / "1" / "model.onnx"
    feeds = {"image": np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)}
    return create_session(path, CPU), create_session(fp16.fp16_graph(path), CPU), feeds


def test_every_family_has_an_fp16_variant_that_matches_fp32(model_repo: Path) -> None:
    fp32 = ModelRegistry(model_repo, CPU, warmup_sides=(32,))
    half = ModelRegistry(model_repo, RuntimeOptions(device="cpu", fp16="always"), warmup_sides=(32,))
    fp32.load_all()
    half.load_all()
    assert [m.name for m in half.models()] == ["adain", "tiny", "trio"] and not half.failures
    for model in half.models():
        version = model.newest
        assert set(version.precision.values()) == {"fp16"}, model.name
        for graph in model.spec.graphs:
            feeds = graph_feeds(graph, 48, np.random.default_rng(2))
            expected = fp32.get(model.name)[1].sessions[graph.file].run(None, feeds)[0]
            got = version.sessions[graph.file].run(None, feeds)[0]
            assert got.dtype == np.float32 and got.shape == expected.shape  # callers see no difference
            assert np.abs(got - expected).max() < fp16.MAX_ERROR, (model.name, graph.file)


def test_a_variant_that_cannot_be_built_leaves_the_model_in_fp32(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: Path) -> bytes:  # a converter that fails, as on an operator it does not know
        raise ValueError(f"cannot convert {path.name}")

    monkeypatch.setattr(fp16, "fp16_graph", broken)
    registry = ModelRegistry(model_repo, RuntimeOptions(device="cpu", fp16="always"), warmup_sides=(32,))
    registry.load_all()
    assert not registry.failures and registry.get("tiny")[1].precision == {"model.onnx": "fp32"}
    assert "no fp16 variant: ValueError: cannot convert model.onnx" in caplog.text


def test_the_variant_is_kept_only_where_it_measures_faster(tiny_sessions: tuple[Session, Session, Any]) -> None:
    fp32, half, feeds = tiny_sessions
    faster = fp16.choose("measure", Delayed(fp32, delay=0.05), half, feeds, feeds)  # type: ignore[arg-type]
    assert faster.precision == "fp16" and faster.reason == "faster" and faster.fp16_ms < faster.fp32_ms
    slower = fp16.choose("measure", fp32, Delayed(half, delay=0.05), feeds, feeds)  # type: ignore[arg-type]
    assert slower.precision == "fp32" and "not 5% faster" in slower.reason and slower.fp16_ms > slower.fp32_ms
    always = fp16.choose("always", fp32, Delayed(half, delay=0.05), feeds, feeds)  # type: ignore[arg-type]
    assert always.precision == "fp16"


def test_a_variant_that_differs_from_fp32_is_refused(tiny_sessions: tuple[Session, Session, Any]) -> None:
    fp32, half, feeds = tiny_sessions
    choice = fp16.choose("always", fp32, Delayed(half, offset=0.1), feeds, feeds)  # type: ignore[arg-type]
    assert choice.precision == "fp32" and "differs by 0.1" in choice.reason


def test_auto_measures_on_cuda_only() -> None:
    assert not fp16.wanted(RuntimeOptions(device="cpu", fp16="auto"))
    assert fp16.wanted(RuntimeOptions(device="cuda", fp16="auto"))
    assert fp16.wanted(RuntimeOptions(device="cpu", fp16="measure"))
    assert not fp16.wanted(RuntimeOptions(device="cuda", fp16="off"))


# The bundled quality model (its newest version) at 1536 px, then at 64 px: the arena holds what the
# large run needed unless it shrinks after each run. Prints the process's RSS in MiB after the small runs.
ARENA = """
import os, sys
import numpy as np
import onnx
from server.runtime import RuntimeOptions, create_session
session = create_session(
    sys.argv[2], RuntimeOptions(device="cpu", arena_shrinkage=sys.argv[1] == "1")
)
for side in (64, 1536, 64, 64):
    session.run(None, {"image": np.full((1, 3, side, side), 0.5, np.float32)})
print(int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20)
"""


def test_arena_shrinkage_gives_back_what_a_large_image_needed() -> None:
    model_dir = ROOT / "models" / "starry_night"
    graph = model_dir / str(max(list_versions(model_dir, read_spec(model_dir).family))) / "model.onnx"

    def rss_mib(shrink: bool) -> int:
        command = [sys.executable, "-c", ARENA, "1" if shrink else "0", str(graph)]
        run = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        return int(run.stdout.split()[-1])

    held, shrunk = rss_mib(False), rss_mib(True)
    assert held - shrunk > 200, (held, shrunk)  # the 1536 px run's activations: about 500 MiB


def test_outputs_beyond_unit_range_are_compared_relative_to_it(tmp_path: Path) -> None:
    """The bundled adain's style statistics (keras-vgg16's relu4_1, values in the thousands) match in fp16 to
    about 2e-4 of their range, though by 0.6 in absolute terms: fp16 must not be refused for the second."""
    (tmp_path / "adain").symlink_to(ROOT / "models" / "adain")
    registry = ModelRegistry(tmp_path, RuntimeOptions(device="cpu", fp16="always"), warmup_sides=(32,))
    registry.load_all()
    version = registry.get("adain")[1]
    assert version.precision == {"style_encoder.onnx": "fp16", "model.onnx": "fp16"}
    feeds = graph_feeds(next(g for g in registry.get("adain")[0].spec.graphs if g.file == "style_encoder.onnx"), 48)
    got = version.sessions["style_encoder.onnx"].run(None, feeds)[0]
    assert np.abs(got).max() > 100, "the statistics are beyond [0, 1], or this test checks nothing"


def test_fp32_runs_with_its_thin_convolutions_split_on_the_cpu(tmp_path: Path) -> None:
    """A version exported before core/passes.py's split is served split on the CPU: the same output."""
    from tests.core.test_passes import conv_graph

    thin, wide = tmp_path / "thin.onnx", tmp_path / "wide.onnx"
    onnx.save(conv_graph(3, 9, [4, 4, 4, 4]), str(thin))  # the quality preset's last layer, unsplit
    onnx.save(conv_graph(16, 3, [1, 1, 1, 1]), str(wide))
    served = fp32_graph(thin, CPU)
    assert isinstance(served, bytes)
    assert [n.name for n in onnx.load_from_string(served).graph.node] == ["head/rows", "head/columns"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 33, 47)).astype(np.float32)}
    expected = create_session(thin, CPU).run(None, feeds)[0]
    np.testing.assert_allclose(create_session(served, CPU).run(None, feeds)[0], expected, atol=1e-4, rtol=1e-5)
    assert fp32_graph(wide, CPU) == wide  # nothing to split: the file itself
    assert fp32_graph(thin, RuntimeOptions(device="cuda")) == thin  # cuDNN blocks no output channels
