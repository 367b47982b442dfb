"""Shared fixtures: a tiny exported model repository and a real server subprocess on free ports.

Everything is real: the model is a seeded, untrained per-style network exported
through export/ (ONNX Runtime checks its parity), and the server is
`python -m server` in its own process, reached over gRPC on a local port.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONTENT_DIR = ROOT / "data" / "content"
STYLE_DIR = ROOT / "data" / "styles"


def ctrl_c_as_in_a_terminal() -> None:
    """`preexec_fn` for a CLI that a test interrupts: SIGINT back to its default disposition. A shell
    without job control starts background commands with SIGINT ignored, Python then installs no
    KeyboardInterrupt handler, and the CLI under test would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def encode(array: np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, deterministic RGB test image (gradients plus a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / width, y / height, (x + y) / (width + height)], axis=2) * 200
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_checkpoint(path: Path, preset: str = "fast", seed: int = 0, styles: tuple[str, ...] = ("test_style",)) -> Path:
    """A seeded, untrained per-style network saved as a training checkpoint."""
    import torch

    from training import loop
    from training.transformer_net import PRESETS, TransformerNet

    torch.manual_seed(seed)
    net = TransformerNet(PRESETS[preset])
    loop.save_checkpoint(
        path,
        {
            "family": "per_style",
            "styles": list(styles),
            "model_config": net.config.to_dict(),
            "model": net.state_dict(),
            "loss_weights": "random:0",
            "step": 0,
        },
    )
    return path


def make_family_checkpoints(folder: Path) -> dict[str, Path]:
    """Seeded, untrained multi-style and arbitrary-style checkpoints, tiny, whose styles differ."""
    import torch

    from training import loop
    from training.adain import AdaINConfig, AdaINNet
    from training.conditional_net import ConditionalNetConfig, ConditionalStyleNet

    torch.manual_seed(0)
    multi = ConditionalStyleNet(ConditionalNetConfig(num_styles=3, channels=(8, 16, 32), residual_blocks=2))
    adain = AdaINNet(AdaINConfig(widths=(32, 16, 8)))
    with torch.no_grad():
        for module in multi.modules():  # untrained styles would be identical: give each its own normalisation
            if hasattr(module, "gamma"):
                module.gamma.copy_(1 + 0.5 * torch.randn_like(module.gamma))
                module.beta.copy_(0.5 * torch.randn_like(module.beta))
        for module in adain.decoder.modules():  # random VGG features are small: let them through the decoder
            if isinstance(module, torch.nn.Conv2d):
                module.bias.zero_()
                module.weight.mul_(3)
        adain.decoder.out.conv.bias.fill_(0.5)
    common = {"loss_weights": "random:0", "step": 0}
    loop.save_checkpoint(
        folder / "trio.pt",
        {
            "family": "multi_style",
            "styles": ["wave", "scream", "kiss"],
            "model_config": multi.config.to_dict(),
            "model": multi.state_dict(),
            **common,
        },
    )
    loop.save_checkpoint(
        folder / "adain.pt",
        {
            "family": "arbitrary",
            "styles": [],
            "model_config": adain.config.to_dict(),
            "model": adain.state_dict(),
            **common,
        },
    )
    return {"trio": folder / "trio.pt", "adain": folder / "adain.pt"}


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family, tiny: `tiny` (per-style, fast preset), `trio` (three styles), `adain` (arbitrary)."""
    from export.__main__ import ExportConfig, export_checkpoint

    root = tmp_path_factory.mktemp("models")
    scratch = tmp_path_factory.mktemp("ckpt")
    checkpoints = {"tiny": make_checkpoint(scratch / "checkpoint.pt"), **make_family_checkpoints(scratch)}
    for name, checkpoint in checkpoints.items():
        export_checkpoint(ExportConfig(checkpoint=checkpoint, name=name, models=root))
    return root


@pytest.fixture(scope="session")
def variant_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_repo's models with the variants of export/variants.py (pixels, int8), calibrated on small photos."""
    from export.variants import KINDS, add_to_newest

    HELD_SIDE = 120  # the held photo is measured at 80 x 64 and at 120 x 96

    root = tmp_path_factory.mktemp("variants") / "models"
    shutil.copytree(model_repo, root)
    photos = tmp_path_factory.mktemp("photos")
    for seed in range(7):  # six for calibration, one held
        (photos / f"photo{seed}.png").write_bytes(encode(photo(80, 64, seed=seed)))
    for name in ("tiny", "trio", "adain"):
        add_to_newest(root / name, photos, KINDS, f"python -m export.variants models/{name}", held_side=HELD_SIDE)
    return root


@dataclass
class RunningServer:
    target: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    http_url: str = ""  # the HTTP API (STYLIZE_HTTP_PORT), on a free port of its own

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    models: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    tls_ca: Path | None = None,
    tls_client: tuple[Path, Path] | None = None,
) -> RunningServer:
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "STYLIZE_LOCAL_WORKERS": "0", **(env or {})}
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--models",
            str(models),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--http-port",
            str(http_port),
            *extra,
        ],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    scheme = "https" if tls_ca else "http"
    server = RunningServer(
        f"127.0.0.1:{port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        process,
        log_path,
        http_url=f"{scheme}://127.0.0.1:{http_port}",
    )
    wait_serving(server, tls_ca=tls_ca, tls_client=tls_client)
    return server


def wait_serving(
    server: RunningServer,
    timeout_s: float = 60.0,
    tls_ca: Path | None = None,
    tls_client: tuple[Path, Path] | None = None,
) -> None:
    from client import StylizeClient

    deadline = time.monotonic() + timeout_s
    credentials = {
        "tls_ca": tls_ca.read_bytes() if tls_ca else None,
        "tls_cert": tls_client[0].read_bytes() if tls_client else None,
        "tls_key": tls_client[1].read_bytes() if tls_client else None,
    }
    with StylizeClient(server.target, timeout_s=2.0, **credentials) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
            try:
                if client.health() == "SERVING":
                    return
            except Exception:  # not listening yet
                time.sleep(0.2)
    raise TimeoutError(f"server not SERVING after {timeout_s} s:\n{server.log()}")


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Wait on a state, not a guess: poll `condition` until it holds (TimeoutError naming `what` if it never does)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s} s")
        time.sleep(0.05)


def metric(server: RunningServer, line_start: str) -> float:
    """The sum of the server's /metrics samples whose line starts with `line_start`."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(model_repo, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture()
def client(server: RunningServer) -> Iterator[object]:
    from client import StylizeClient

    with StylizeClient(server.target, timeout_s=60.0) as stylize_client:
        yield stylize_client
