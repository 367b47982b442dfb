"""Gatys jobs through a real server with real worker processes, on tiny images with random loss-network weights."""

from __future__ import annotations

import io
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from client import StylizeClient
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import RunningServer, encode, photo, start_server, stop_server

FINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
ENV = {
    "STYLIZE_LOCAL_WORKERS": "2",
    "STYLIZE_LOSS_WEIGHTS": "random:0",
    "STYLIZE_MAX_JOBS_QUEUED": "1",
    "STYLIZE_JOB_MAX_SIDE": "256",
    "STYLIZE_JOB_MAX_ITERATIONS": "20000",
    "STYLIZE_JOB_UPDATE_INTERVAL_SECONDS": "0",  # every iteration, so the tests see them all
    "STYLIZE_JOB_RETENTION_SECONDS": "6",
    "STYLIZE_JOB_PRECISION": "bf16",  # the non-default arithmetic end to end (training tests cover both)
}
LONG = 20000  # iterations of a job that a test stops itself


def job_request(iterations: int = 6, **fields: object) -> pb.OptimizationRequest:
    """A tiny job: 48x32 content, one 40 px style, layers up to relu2_1 (milliseconds per iteration)."""
    request = pb.OptimizationRequest(
        content=pb.Image(data=encode(photo(48, 32))),
        style_images=[pb.Image(data=encode(photo(40, 40, seed=3)))],
        max_side=48,
        iterations=iterations,
        content_layers=["relu2_1"],
        style_layers=[pb.LayerWeight(layer="relu1_1"), pb.LayerWeight(layer="relu2_1")],
    )
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(request, name).extend(value)
            if name == "schedule":
                request.ClearField("max_side")
                request.ClearField("iterations")
        elif isinstance(value, pb.Image):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("no_models")  # jobs need no ONNX model
    server = start_server(models, tmp_path_factory.mktemp("jobs") / "server.log", env=ENV)
    yield server
    stop_server(server)


@pytest.fixture()
def client(jobs_server: RunningServer) -> Iterator[StylizeClient]:
    with StylizeClient(jobs_server.target, timeout_s=30.0) as stylize_client:
        yield stylize_client


def wait_for(client: StylizeClient, job_id: str, check: Callable[[pb.Job], bool], timeout_s: float = 60.0) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if check(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never got there: {client.get_job(job_id)}")


def running(job: pb.Job) -> bool:
    return job.state == pb.JOB_STATE_RUNNING and job.iteration >= 2


def watch(client: StylizeClient, job_id: str) -> list[pb.Job]:
    return list(client.watch_job(job_id, timeout_s=120))


def pid_of(job: pb.Job) -> int:
    return int(job.worker.rsplit(":", 1)[1])


def test_a_job_runs_to_the_end(client: StylizeClient) -> None:
    assert client.health("stylize.jobs") == "SERVING"
    job = client.submit_optimization(job_request(iterations=12))
    assert job.id and job.iterations == 12 and job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    updates = watch(client, job.id)
    final = updates[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert all(u.state not in FINAL for u in updates[:-1])
    iterations = [u.iteration for u in updates if u.iteration]
    assert iterations == sorted(iterations) and iterations[-1] == 12 and len(set(iterations)) >= 4
    totals = [u.losses.total for u in updates if u.iteration]
    assert totals[-1] < 0.5 * totals[0]
    image = Image.open(io.BytesIO(final.result.data))
    assert image.format == "PNG" and image.size == (48, 32)
    assert final.worker.count(":") == 1 and final.attempt == 1
    assert final.created_at.seconds and final.finished_at.ToNanoseconds() >= final.started_at.ToNanoseconds()


def test_workers_run_in_the_configured_precision(jobs_server: RunningServer) -> None:
    ready = [line for line in jobs_server.log().splitlines() if " ready (" in line]
    assert ready and all("(cpu, bf16, loss weights random:0)" in line for line in ready), ready


def test_previews_a_schedule_and_jpeg(client: StylizeClient) -> None:
    request = job_request(
        schedule=[pb.Stage(max_side=24, iterations=4), pb.Stage(max_side=48, iterations=4)],
        preview_every=2,
        output_format=pb.OUTPUT_FORMAT_JPEG,
        init=pb.INITIALIZATION_NOISE,
        seed=7,
    )
    updates = watch(client, client.submit_optimization(request).id)
    assert updates[-1].state == pb.JOB_STATE_SUCCEEDED, updates[-1].error
    previews = [Image.open(io.BytesIO(u.preview.data)).size for u in updates if u.preview.data]
    assert previews and previews[-1] == (48, 32)
    assert {u.stage for u in updates if u.iteration} == {0, 1}
    assert Image.open(io.BytesIO(updates[-1].result.data)).format == "JPEG"


def test_a_late_watch_ends_with_the_result_and_two_watchers_both_do(client: StylizeClient) -> None:
    job = client.submit_optimization(job_request())
    wait_for(client, job.id, lambda j: j.state in FINAL)
    for _ in range(2):
        (only,) = watch(client, job.id)
        assert only.state == pb.JOB_STATE_SUCCEEDED and only.result.data and only.iteration == 6


def test_cancel_stops_a_running_job(client: StylizeClient) -> None:
    job = client.submit_optimization(job_request(iterations=LONG))
    stream = client.watch_job(job.id, timeout_s=120)
    at = wait_for(client, job.id, running).iteration
    cancelled = client.cancel_job(job.id)
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert at <= cancelled.iteration < LONG and "cancelled at iteration" in cancelled.error
    assert list(stream)[-1].state == pb.JOB_STATE_CANCELLED
    assert client.cancel_job(job.id).state == pb.JOB_STATE_CANCELLED  # again: no change


def test_two_jobs_run_at_once_and_a_full_queue_refuses(client: StylizeClient) -> None:
    first = client.submit_optimization(job_request(iterations=LONG))
    second = client.submit_optimization(job_request(iterations=LONG))
    try:
        a = wait_for(client, first.id, running)
        b = wait_for(client, second.id, running)
        assert a.worker != b.worker
        assert client.get_job(first.id).state == pb.JOB_STATE_RUNNING  # both at once
        queued = client.submit_optimization(job_request())
        assert queued.state == pb.JOB_STATE_QUEUED and queued.queue_position == 0
        with pytest.raises(grpc.RpcError) as caught:
            client.submit_optimization(job_request())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "STYLIZE_MAX_JOBS_QUEUED=1" in caught.value.details()
        # A queued job that is cancelled never starts.
        never = client.cancel_job(queued.id)
        assert never.state == pb.JOB_STATE_CANCELLED and not never.worker and not never.started_at.seconds
    finally:
        client.cancel_job(first.id)
        client.cancel_job(second.id)


def test_a_killed_worker_fails_its_job_and_is_replaced(client: StylizeClient, jobs_server: RunningServer) -> None:
    job = client.submit_optimization(job_request(iterations=LONG))
    victim = pid_of(wait_for(client, job.id, running))
    os.kill(victim, signal.SIGKILL)
    failed = wait_for(client, job.id, lambda j: j.state in FINAL, timeout_s=30)
    assert failed.state == pb.JOB_STATE_FAILED
    assert "died (killed by SIGKILL" in failed.error and "not retried" in failed.error
    # The replacement: two long jobs run at once again, neither on the dead process.
    jobs = [client.submit_optimization(job_request(iterations=LONG)) for _ in range(2)]
    try:
        pids = {pid_of(wait_for(client, j.id, running, timeout_s=120)) for j in jobs}
        assert len(pids) == 2 and victim not in pids
    finally:
        for j in jobs:
            client.cancel_job(j.id)
    assert watch(client, client.submit_optimization(job_request()).id)[-1].state == pb.JOB_STATE_SUCCEEDED
    assert "starting a replacement" in jobs_server.log()


def test_the_time_budget_fails_a_job(client: StylizeClient) -> None:
    job = client.submit_optimization(job_request(iterations=LONG, time_budget_seconds=1.0))
    final = wait_for(client, job.id, lambda j: j.state in FINAL, timeout_s=60)
    assert final.state == pb.JOB_STATE_FAILED and "time budget of 1 s ran out" in final.error


def test_an_undecodable_image_fails_the_job_saying_why(client: StylizeClient) -> None:
    job = client.submit_optimization(job_request(content=pb.Image(data=b"not an image")))
    final = watch(client, job.id)[-1]
    assert final.state == pb.JOB_STATE_FAILED and "content image is not a PNG, JPEG or WebP" in final.error


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_side": 512}, "limit of 256 px (STYLIZE_JOB_MAX_SIDE)"),
        ({"iterations": 30000}, "limit of 20000 (STYLIZE_JOB_MAX_ITERATIONS)"),
        ({"schedule": [pb.Stage(max_side=300, iterations=2)]}, "schedule[0].max_side 300"),
        ({"time_budget_seconds": 1e9}, "STYLIZE_JOB_TIME_BUDGET_SECONDS"),
        ({"content_layers": ["relu9_9"]}, "vgg16 has no layer 'relu9_9'"),  # the default network
        ({"learning_rate": 0.1}, "learning_rate applies to OPTIMIZER_ADAM only"),
        ({"init": pb.INITIALIZATION_IMAGE}, "init_image.data is empty"),
        ({"style_weights": [1.0, 2.0]}, "2 values for 1 style images"),
        ({"style_scale": 8.0}, "style_scale must be between"),
        ({"content": pb.Image()}, "content.data is empty"),
        ({"content": pb.Image(raw=pb.RawImage(width=1, height=1, rgb=b"abc"))}, "content is raw pixels; send PNG"),
    ],
)
def test_bad_requests_are_invalid_argument(client: StylizeClient, fields: dict[str, object], message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.submit_optimization(job_request(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_unknown_jobs_are_not_found_and_finished_jobs_are_dropped_after_retention(client: StylizeClient) -> None:
    for call in (client.get_job, client.cancel_job, lambda job_id: list(client.watch_job(job_id, timeout_s=10))):
        with pytest.raises(grpc.RpcError) as caught:
            call("no-such-job")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    job = client.submit_optimization(job_request(iterations=2))
    wait_for(client, job.id, lambda j: j.state in FINAL)
    with pytest.raises(grpc.RpcError) as caught:
        wait_for(client, job.id, lambda j: False, timeout_s=20)
    assert (
        caught.value.code() == grpc.StatusCode.NOT_FOUND and "STYLIZE_JOB_RETENTION_SECONDS" in caught.value.details()
    )


def test_job_metrics(client: StylizeClient, jobs_server: RunningServer) -> None:
    watch(client, client.submit_optimization(job_request()).id)
    text = urllib.request.urlopen(jobs_server.metrics_url, timeout=5).read().decode()
    for line in (
        'stylize_jobs_finished_total{state="succeeded"}',
        'stylize_job_duration_seconds_bucket{le="1800.0"}',
        "stylize_job_iterations_per_second_count",
        "stylize_jobs_queued 0.0",
        "stylize_worker_restarts_total",
        'stylize_requests_total{code="OK",method="WatchJob",protocol="grpc"}',
    ):
        assert line in text
    submitted = next(v for v in text.splitlines() if v.startswith("stylize_jobs_submitted_total"))
    assert float(submitted.split()[-1]) >= 1


def test_shutdown_fails_queued_and_running_jobs_saying_why(tmp_path: Path) -> None:
    env = {**ENV, "STYLIZE_LOCAL_WORKERS": "1", "STYLIZE_GRACE_SECONDS": "1"}
    server = start_server(tmp_path, tmp_path / "server.log", env=env)
    try:
        with StylizeClient(server.target, timeout_s=30) as client:
            run = client.submit_optimization(job_request(iterations=LONG))
            queued = client.submit_optimization(job_request())
            streams = [client.watch_job(job.id, timeout_s=60) for job in (run, queued)]
            wait_for(client, run.id, running)
            server.process.send_signal(signal.SIGTERM)
            last = [list(stream)[-1] for stream in streams]
        assert server.process.wait(timeout=60) == 0
    finally:
        stop_server(server)
    assert last[0].state == pb.JOB_STATE_FAILED and "shut down while the job ran" in last[0].error
    assert last[1].state == pb.JOB_STATE_FAILED and "shut down before the job started" in last[1].error


def test_workers_that_cannot_load_their_weights_leave_jobs_unavailable(tmp_path: Path) -> None:
    env = {**ENV, "STYLIZE_LOCAL_WORKERS": "1", "STYLIZE_LOSS_WEIGHTS": str(tmp_path / "vgg19-missing.pth")}
    server = start_server(tmp_path, tmp_path / "server.log", env=env)
    try:
        with StylizeClient(server.target, timeout_s=30) as client:
            assert client.health() == "SERVING" and client.health("stylize.jobs") == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as caught:
                client.submit_optimization(job_request())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "workers cannot start" in caught.value.details() and "vgg19-missing.pth does not exist" in (
            caught.value.details()
        )
    finally:
        stop_server(server)


def test_job_settings_come_from_the_environment_and_are_checked() -> None:
    from server.config import load_config

    config = load_config([], environ={"STYLIZE_JOB_MAX_SIDE": "640", "STYLIZE_LOSS_WEIGHTS": "random:3"})
    assert config.job_max_side == 640 and config.loss_weights == "random:3" and config.max_jobs_queued == 16
    for environ in (
        {"STYLIZE_JOB_MAX_SIDE": "8"},
        {"STYLIZE_JOB_RETENTION_SECONDS": "0"},
        {"STYLIZE_LOSS_WEIGHTS": ""},
        {"STYLIZE_JOB_PRECISION": "fp16"},
    ):
        with pytest.raises(SystemExit):
            load_config([], environ=environ)


def test_a_network_the_workers_weights_lack_is_refused_at_submission(tmp_path: Path) -> None:
    """keras-vgg16 is a VGG-16: a VGG-19 job is INVALID_ARGUMENT when submitted, not a job that fails later."""
    env = {**ENV, "STYLIZE_LOCAL_WORKERS": "1", "STYLIZE_LOSS_WEIGHTS": "keras-vgg16"}
    server = start_server(tmp_path, tmp_path / "server.log", env=env)
    try:
        with StylizeClient(server.target, timeout_s=30) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.submit_optimization(job_request(loss_network=pb.LOSS_NETWORK_VGG19))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "loss weights (keras-vgg16:3be917fb" in caught.value.details()
            assert "have no VGG19; ask for VGG16" in caught.value.details()
            job = client.submit_optimization(job_request(iterations=2, loss_network=pb.LOSS_NETWORK_VGG16))
            assert wait_for(client, job.id, lambda j: j.state in FINAL).state == pb.JOB_STATE_SUCCEEDED
    finally:
        stop_server(server)
