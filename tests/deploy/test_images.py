"""The API and worker images as shipped, without Docker: each Dockerfile replayed (tests/deploy/replay.py).

A clean venv of exactly the requirement list the Dockerfile installs (deploy/requirements.py), only the files
its COPY steps take through .dockerignore, the stubs made by its own protoc step, and the process started by
its CMD with its ENV and nothing of this test's environment. Then, like `docker compose up` with a real
redis-server: the API answers health SERVING, a tiled Stylize per family with fp16 variants built, and the
compose health check; a worker of the worker image takes a job the API queued and finishes it.

The first run builds the venvs (about a minute for the API, a few for the worker's CUDA torch); later runs
reuse them from ~/.cache/stylize/image-venvs until pyproject.toml's lists change.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from client import StylizeClient
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import ROOT, STYLE_DIR, RunningServer, encode, free_port, photo, wait_serving
from tests.deploy.replay import Image, replay
from tests.server.test_distributed import RedisServer
from tests.server.test_jobs import job_request

# The first run builds the venvs, in fixtures and tests alike: minutes for the worker's CUDA wheels.
pytestmark = pytest.mark.timeout(1200)

# One bundled model per family.
MODELS = {"great_wave": "per_style", "painters": "multi_style", "adain": "arbitrary"}
TILE_PIXELS = 4096  # the smallest budget: a 96x64 photo runs in tiles, through the graphs derived at load


def start(image: Image, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    home = log_path.parent / "home"
    home.mkdir(exist_ok=True)
    return subprocess.Popen(
        image.command,
        cwd=image.app_dir,
        env=image.environment(home, **env),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the worker's job process goes with it
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.stop()


@dataclass
class ApiImage:
    server: RunningServer
    image: Image
    env: dict[str, str]  # what the process was started with, beside the image's ENV


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[ApiImage]:
    image = replay(ROOT / "deploy" / "api.Dockerfile", tmp_path_factory.mktemp("api-image"))
    models = tmp_path_factory.mktemp("models")
    for name in MODELS:
        (models / name).symlink_to(ROOT / "models" / name)
    scratch = tmp_path_factory.mktemp("api")
    port, metrics_port = free_port(), free_port()
    env = {
        "STYLIZE_QUEUE": redis_server.url,
        "STYLIZE_LOCAL_WORKERS": "0",  # as in docker-compose.yml: jobs go to the queue's workers
        "STYLIZE_HOST": "127.0.0.1",  # the image's 0.0.0.0 would need TLS, tokens or allow_insecure
        "STYLIZE_METRICS_HOST": "127.0.0.1",
        "STYLIZE_PORT": str(port),
        "STYLIZE_METRICS_PORT": str(metrics_port),
        "STYLIZE_HTTP_PORT": str(free_port()),  # not the default 8080, which another server may hold
        "STYLIZE_MODELS": str(models),
        "STYLIZE_DEVICE": "cpu",  # the image's cuda: there is no GPU here
        "STYLIZE_FP16": "always",  # build every fp16 variant: their converter must be in the image too
        "STYLIZE_INT8": "off",  # fp16 alone: an int8 variant in bound on this CPU (VNNI) would race it
        "STYLIZE_TILE_PIXELS": str(TILE_PIXELS),
        "STYLIZE_TILE_HALO": "16",
        "STYLIZE_WARMUP_SIDES": "32",
        "STYLIZE_RELOAD_INTERVAL_SECONDS": "0",
    }
    log = scratch / "api.log"
    server = RunningServer(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", start(image, log, env), log)
    try:
        wait_serving(server, timeout_s=180)
    except Exception:
        stop(server.process)
        raise
    yield ApiImage(server, image, env)
    stop(server.process)


def test_the_api_image_serves_every_family_tiled_and_in_fp16(api: ApiImage) -> None:
    content = encode(photo(96, 64))
    style = (STYLE_DIR / "great_wave.jpg").read_bytes()
    with StylizeClient(api.server.target, timeout_s=60) as client:
        served = {m.name: m for m in client.list_models()}
        for name, family in MODELS.items():
            assert pb.ModelFamily.Name(served[name].family) == "MODEL_FAMILY_" + family.upper()
            assert set(served[name].precision.values()) == {"fp16"}, (name, api.server.log())
        calls: dict[str, dict[str, Any]] = {
            "great_wave": {},
            "painters": {"styles": {served["painters"].styles[0]: 1.0}},
            "adain": {"style_images": [style]},
        }
        for name, fields in calls.items():
            response = client.stylize(content, name, **fields)
            assert (response.width, response.height) == (96, 64), name
            assert response.provider == "CPUExecutionProvider"
    metrics = urllib.request.urlopen(api.server.metrics_url, timeout=10).read().decode()
    for name in MODELS:
        assert f'stylize_tiled_requests_total{{model="{name}"}} 1.0' in metrics, f"{name} did not run tiled"


def test_the_compose_health_check_passes_in_the_api_image(api: ApiImage) -> None:
    check = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "python", check
    env = api.image.environment(api.image.app_dir, **api.env, STYLIZE_TARGET=api.server.target)
    done = subprocess.run([str(api.image.python), *check[2:]], cwd=api.image.app_dir, env=env, capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_worker_of_the_worker_image_finishes_a_job_from_the_api(
    api: ApiImage, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = replay(ROOT / "deploy" / "worker.Dockerfile", tmp_path_factory.mktemp("worker-image"))
    scratch = tmp_path_factory.mktemp("worker")
    env = {
        "STYLIZE_QUEUE": redis_server.url,
        "STYLIZE_DEVICE": "cpu",
        "STYLIZE_WORKER_THREADS": "1",
        "STYLIZE_WORKER_METRICS_PORT": str(free_port()),
    }
    log = scratch / "worker.log"
    worker = start(image, log, env)
    try:
        with StylizeClient(api.server.target, timeout_s=60) as client:
            # The API takes jobs once a worker has announced itself on the queue (health "stylize.jobs").
            deadline = time.monotonic() + 300
            while client.health("stylize.jobs") != "SERVING":
                assert worker.poll() is None and time.monotonic() < deadline, f"worker not ready:\n{log.read_text()}"
                time.sleep(0.2)
            job = client.submit_optimization(job_request(iterations=6))
            try:
                *_, job = client.watch_job(job.id, timeout_s=300)
            except grpc.RpcError as exc:
                raise AssertionError(f"{exc}\nworker log:\n{log.read_text()}") from None
        assert job.state == pb.JOB_STATE_SUCCEEDED, f"{job.error}\nworker log:\n{log.read_text()}"
        assert job.result.data.startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        stop(worker)
