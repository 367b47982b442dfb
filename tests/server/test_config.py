"""Configuration: flags over environment over defaults, validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ServerConfig, WorkerConfig, load_config, load_worker_config
from server.runtime import ProviderUnavailable, cuda_device_count, resolve_device


def test_defaults() -> None:
    config = load_config([], environ={})
    assert config == ServerConfig()
    assert (config.host, config.port, config.metrics_port, config.models) == ("127.0.0.1", 50051, 9464, Path("models"))
    assert config.device == "auto" and config.queue == "" and config.local_workers == 1


def test_environment_and_flags() -> None:
    environ = {
        "STYLIZE_PORT": "6000",
        "STYLIZE_DEVICE": "cpu",
        "STYLIZE_LOCAL_WORKERS": "0",
        "STYLIZE_QUEUE": "redis://localhost:6379/0",
        "STYLIZE_MODELS": "/srv/models",
    }
    config = load_config(["--port", "7000"], environ=environ)
    assert config.port == 7000 and config.device == "cpu" and config.local_workers == 0
    assert config.queue == "redis://localhost:6379/0" and config.models == Path("/srv/models")


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--device", "tpu"], {}),
        ([], {"STYLIZE_PORT": "http"}),
        ([], {"STYLIZE_QUEUE": "amqp://x"}),
        (["--local-workers", "-1"], {}),
        (["--malloc-keep-mib", "4096"], {}),
    ],
)
def test_invalid_settings_exit_with_a_usage_error(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_config(argv, environ=environ)
    assert caught.value.code == 2


def test_each_process_offers_only_its_own_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_worker_config(["--help"], environ={})
    worker_help = capsys.readouterr().out
    assert "--queue" in worker_help and "--job-max-attempts" in worker_help and "--worker-threads" in worker_help
    for api_only in ("--tls-cert", "--tile-pixels", "--port", "--models", "--max-concurrent"):
        assert api_only not in worker_help
    with pytest.raises(SystemExit):
        load_config(["--help"], environ={})
    api_help = capsys.readouterr().out
    assert "--tls-cert" in api_help and "--job-max-attempts" not in api_help and "--worker-threads" not in api_help
    # A variable both read means the same in both.
    environ = {"STYLIZE_LOSS_WEIGHTS": "random:7", "STYLIZE_JOB_PRECISION": "bf16", "STYLIZE_MAX_PIXELS": "4096"}
    api, worker = load_config([], environ=environ), load_worker_config([], environ=environ)
    assert api.job_process(threads=2) == worker.job_process(threads=2)
    assert WorkerConfig().queue == ServerConfig().queue == ""


@pytest.mark.skipif(cuda_device_count()[0] > 0, reason="this machine has a CUDA device")
def test_cuda_where_it_cannot_start_is_an_error_not_a_cpu_run() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ProviderUnavailable, match="CUDA cannot start"):
        resolve_device("cuda")
