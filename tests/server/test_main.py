"""Server start-up and shutdown as an operator sees them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.runtime import cuda_device_count
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import ROOT, free_port, start_server


@pytest.mark.skipif(cuda_device_count()[0] > 0, reason="this machine has a CUDA device")
def test_device_cuda_without_cuda_refuses_to_start(model_repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STYLIZE_DEVICE": "cuda", "STYLIZE_LOCAL_WORKERS": "0"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--models",
            str(model_repo),
            "--port",
            str(free_port()),
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CUDA cannot start" in result.stderr


def test_sigterm_stops_cleanly(model_repo: Path, tmp_path: Path) -> None:
    server = start_server(model_repo, tmp_path / "server.log")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert "health NOT_SERVING" in server.log() and "stopped" in server.log()


def test_a_broken_model_is_skipped_and_the_others_serve(model_repo: Path, tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "models"
    shutil.copytree(model_repo, repo)
    broken = repo / "broken"
    shutil.copytree(repo / "tiny", broken)
    (broken / "model.json").write_text((broken / "model.json").read_text().replace('"tiny"', '"broken"'))
    (broken / "1" / "model.onnx").write_bytes(b"not onnx")
    server = start_server(repo, tmp_path / "server.log")
    try:
        from client import StylizeClient

        with StylizeClient(server.target) as client:
            assert [m.name for m in client.list_models()] == ["adain", "tiny", "trio"]
            response = client.stub.ListModels(pb.ListModelsRequest())
            assert [f.name for f in response.failed] == ["broken", "broken v1"]
            assert client.health("stylize.model.broken") == "NOT_SERVING"
            assert client.health("stylize.model.tiny") == "SERVING"
            assert client.health() == "SERVING", "the others still serve"
        assert "model broken v1 not served" in server.log()
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def test_health_says_not_serving_until_the_server_says_otherwise() -> None:
    """grpc's health servicer starts with "" SERVING; ours must not answer that before serve() sets it."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from server.main import JOBS_SERVICE_NAME, SERVICE_NAME, new_health_servicer

    async def statuses() -> list[str]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(await new_health_servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answers = [await stub.Check(health_pb2.HealthCheckRequest(service=name)) for name in names]
        finally:
            await server.stop(None)
        return [health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status) for answer in answers]

    names = ("", SERVICE_NAME, JOBS_SERVICE_NAME)
    assert asyncio.run(statuses()) == ["NOT_SERVING"] * 3
