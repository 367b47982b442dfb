"""`stylize optimize` end to end against a real server with one worker process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from client import StylizeClient
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import ROOT, RunningServer, ctrl_c_as_in_a_terminal, encode, photo, start_server, stop_server

TINY = ["--max-side", "48", "--content-layer", "relu2_1", "--style-layer", "relu1_1", "--style-layer", "relu2_1"]


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cli_jobs")
    env = {"STYLIZE_LOCAL_WORKERS": "1", "STYLIZE_LOSS_WEIGHTS": "random:0"}
    server = start_server(root, root / "server.log", env=env)
    yield server
    stop_server(server)


@pytest.fixture()
def images(tmp_path: Path) -> tuple[Path, Path]:
    content, style = tmp_path / "photo.png", tmp_path / "style.png"
    content.write_bytes(encode(photo(48, 32)))
    style.write_bytes(encode(photo(40, 40, seed=3)))
    return content, style


def cli(server: RunningServer, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STYLIZE_TARGET": server.target}
    command = [sys.executable, "-m", "client", "optimize", *args]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )


def test_optimize_writes_the_result_and_previews(
    jobs_server: RunningServer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    content, style = images
    args = [str(content), "--style-image", str(style), "-o", str(tmp_path / "out.png"), "--iterations", "6"]
    process = cli(jobs_server, *args, *TINY, "--preview-every", "3", "--preview-dir", str(tmp_path / "previews"))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert Image.open(tmp_path / "out.png").size == (48, 32)
    assert "6/6" in stderr and "loss" in stderr and "style" in stderr
    assert f"-> {tmp_path / 'out.png'}" in stdout
    assert list((tmp_path / "previews").glob("preview_*.png"))


def test_ctrl_c_cancels_the_job(jobs_server: RunningServer, images: tuple[Path, Path]) -> None:
    content, style = images
    process = cli(jobs_server, str(content), "--style-image", str(style), "--iterations", "2000", *TINY)
    assert process.stderr is not None
    job_id = process.stderr.readline().split()[-1]  # "job <id>"
    with StylizeClient(jobs_server.target) as client:
        deadline = time.monotonic() + 60
        while client.get_job(job_id).iteration < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # A SIGINT that lands before the CLI's handler is in place is lost; a user presses Ctrl-C again.
        for _ in range(20):
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)
                break
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert f"cancelled job {job_id}" in stderr
        assert client.get_job(job_id).state == pb.JOB_STATE_CANCELLED


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs, filled: writes fail with ENOSPC (needs mount rights; skipped without them)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    subprocess.run(["dd", "if=/dev/zero", f"of={mount_point / 'filler'}", "bs=1k", "count=64"], capture_output=True)
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_for_previews_leaves_the_job_running_to_its_result(
    jobs_server: RunningServer, images: tuple[Path, Path], tmp_path: Path, full_disk: Path
) -> None:
    content, style = images
    args = [str(content), "--style-image", str(style), "-o", str(tmp_path / "out.png"), "--iterations", "6"]
    process = cli(jobs_server, *args, *TINY, "--preview-every", "2", "--preview-dir", str(full_disk / "previews"))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "cannot save previews" in stderr and "No space left on device" in stderr
    assert Image.open(tmp_path / "out.png").size == (48, 32)


def test_the_loss_network_is_the_servers_unless_asked(images: tuple[Path, Path]) -> None:
    # The CLI sent VGG-19 by default, which a server on its default keras-vgg16 weights (a VGG-16) must fail.
    from client.cli import build_parser, optimization_request
    from stylize.v1 import stylize_pb2 as pb

    content, style = images
    base = ["optimize", str(content), "--style-image", str(style)]
    assert optimization_request(build_parser().parse_args(base)).loss_network == pb.LOSS_NETWORK_UNSPECIFIED
    asked = optimization_request(build_parser().parse_args([*base, "--loss-network", "vgg19"]))
    assert asked.loss_network == pb.LOSS_NETWORK_VGG19
