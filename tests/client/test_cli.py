"""The `stylize` command line end to end against the real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import ROOT, RunningServer, encode, photo


def run_cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STYLIZE_TARGET": server.target}
    return subprocess.run([sys.executable, "-m", "client", *args], env=env, capture_output=True, text=True, timeout=120)


def test_models_and_health(server: RunningServer) -> None:
    models = run_cli(server, "models")
    assert models.returncode == 0, models.stderr
    assert "tiny" in models.stdout and "per_style" in models.stdout and "CPUExecutionProvider" in models.stdout
    health = run_cli(server, "health", "--wait", "10")
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"


def test_apply_a_folder_writes_one_result_per_photo(server: RunningServer, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(encode(photo(50, 40)))
    (photos / "sub" / "b.jpg").write_bytes(encode(photo(33, 47), "JPEG"))
    (photos / "notes.txt").write_text("not an image")
    result = run_cli(server, "apply", "-m", "tiny", str(photos), "-o", str(tmp_path / "out"), "--strength", "0.5")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out" / "a.tiny.png").size == (50, 40)
    assert Image.open(tmp_path / "out" / "b.tiny.png").size == (33, 47)


def test_apply_one_file_to_a_named_jpeg(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(encode(photo(64, 64)))
    result = run_cli(server, "apply", "-m", "tiny", str(source), "-o", str(tmp_path / "x.jpg"), "--format", "jpeg")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"


def test_errors_are_reported_per_file_with_a_nonzero_exit(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(encode(photo()))
    result = run_cli(server, "apply", "-m", "missing_model", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr and "missing_model" in result.stderr
