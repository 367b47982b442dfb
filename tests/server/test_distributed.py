"""The distributed job queue, for real: a redis-server, two API replicas and two queue workers, each a process.

Jobs are submitted to replica A and watched on replica B; workers are killed with
SIGKILL (the whole worker, as when its host is lost, and the job process alone, as
the OOM killer would), stopped with SIGTERM, and Redis itself goes away and comes
back. Tiny jobs (48x32, layers up to relu2_1, random VGG weights), one torch thread
per worker, and a visibility timeout of a few seconds keep it quick.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image

from client import StylizeClient
from server.jobs.model import JobSpec
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import ROOT, RunningServer, encode, free_port, photo, start_server, stop_server, wait_until
from tests.server.test_jobs import FINAL, LONG, job_request, running, wait_for

pytest.importorskip("celery", reason="the distributed queue needs the queue extra: pip install -e '.[queue]'")

VISIBILITY_TIMEOUT_SECONDS = 6  # a killed worker's job is redelivered after this (plus a sweep and the lease)
JOB_ITERATIONS = 300  # long enough to be killed mid-job, short enough to finish before the visibility timeout


def queue_env(url: str) -> dict[str, str]:
    return {
        "STYLIZE_QUEUE": url,
        "STYLIZE_LOSS_WEIGHTS": "random:0",
        "STYLIZE_JOB_MAX_SIDE": "256",
        "STYLIZE_JOB_MAX_ITERATIONS": str(LONG),
        "STYLIZE_JOB_UPDATE_INTERVAL_SECONDS": "0",
        "STYLIZE_JOB_MAX_ATTEMPTS": "2",
        "STYLIZE_MAX_JOBS_QUEUED": "8",
        "STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_SECONDS),
        "STYLIZE_WORKER_THREADS": "1",
        "STYLIZE_WARMUP_SIDES": "32",
        "STYLIZE_RELOAD_INTERVAL_SECONDS": "0",
    }


class RedisServer:
    """redis-server on a free local port, without persistence: a restart loses everything, as a test wants."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise TimeoutError(f"redis-server did not answer on {self.port}:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


@dataclass
class QueueWorker:
    """`python -m server.jobs.worker` in a session of its own, so killing the session kills its job process too."""

    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the worker and its job process: what losing the host looks like."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # a job process left behind (there should be none)
            os.killpg(self.process.pid, signal.SIGKILL)


def start_worker(env: dict[str, str], log_path: Path, timeout_s: float = 90.0) -> QueueWorker:
    metrics_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.jobs.worker"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env, "STYLIZE_WORKER_METRICS_PORT": str(metrics_port)},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = QueueWorker(process, log_path, f"http://127.0.0.1:{metrics_port}/metrics")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{worker.log()}")
        if f"stylize@{os.uname().nodename}:{process.pid} ready." in worker.log():
            return worker
        time.sleep(0.2)
    worker.stop()
    raise TimeoutError(f"worker not ready after {timeout_s} s:\n{worker.log()}")


@dataclass
class Cluster:
    redis: RedisServer
    env: dict[str, str]
    replicas: list[RunningServer]
    workers: list[QueueWorker]
    logs: Path
    started: int = 0

    def add_worker(self) -> QueueWorker:
        self.started += 1
        worker = start_worker(self.env, self.logs / f"worker-{self.started}.log")
        self.workers.append(worker)
        return worker

    def owner(self, job: pb.Job) -> QueueWorker:
        """The queue worker whose job process runs the job (Job.worker is the job process's host:pid)."""
        parent = int(Path(f"/proc/{pid_of(job)}/stat").read_text().split()[3])
        return next(w for w in self.workers if w.process.pid == parent)


@pytest.fixture(scope="module")
def cluster(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (`make system-deps` installs it)")
    logs = tmp_path_factory.mktemp("distributed")
    redis_server = RedisServer(logs / "redis.log")
    redis_server.start()
    env = queue_env(redis_server.url)
    cluster = Cluster(redis_server, env, [], [], logs)
    try:
        cluster.add_worker()
        cluster.add_worker()
        for name in ("a", "b"):
            cluster.replicas.append(start_server(model_repo, logs / f"api-{name}.log", env=env))
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()
        for replica in cluster.replicas:
            stop_server(replica)
        redis_server.stop()


@pytest.fixture()
def a(cluster: Cluster) -> Iterator[StylizeClient]:
    with StylizeClient(cluster.replicas[0].target, timeout_s=30.0) as client:
        yield client


@pytest.fixture()
def b(cluster: Cluster) -> Iterator[StylizeClient]:
    with StylizeClient(cluster.replicas[1].target, timeout_s=30.0) as client:
        yield client


def pid_of(job: pb.Job) -> int:
    return int(job.worker.rsplit(":", 1)[1])


def wait_health(client: StylizeClient, service: str, status: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.health(service) != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service or 'server'} health never became {status}")
        time.sleep(0.2)


class Watch(threading.Thread):
    """A WatchJob stream read to its end on a thread, so several can run at once."""

    def __init__(self, client: StylizeClient, job_id: str) -> None:
        super().__init__(daemon=True)
        self.stream = client.watch_job(job_id, timeout_s=180)
        self.updates: list[pb.Job] = []
        self.start()

    def run(self) -> None:
        for update in self.stream:
            self.updates.append(update)

    def result(self) -> list[pb.Job]:
        self.join(180)
        assert not self.is_alive(), "the watch did not end"
        return self.updates


def test_jobs_submitted_to_one_replica_and_watched_on_the_other_survive_a_killed_worker(
    cluster: Cluster, a: StylizeClient, b: StylizeClient
) -> None:
    assert a.health("stylize.jobs") == "SERVING" and b.health("stylize.jobs") == "SERVING"
    jobs = [a.submit_optimization(job_request(iterations=JOB_ITERATIONS, seed=i)) for i in range(4)]
    watches = {job.id: Watch(b, job.id) for job in jobs}
    # The whole worker running a job goes, job process and all, as if its host were lost.
    victim = wait_for(b, jobs[0].id, running)
    cluster.owner(victim).kill()
    cluster.add_worker()  # its replacement, for the tests after this one

    finals = {job_id: watch.result()[-1] for job_id, watch in watches.items()}
    for final in finals.values():
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
        assert final.iteration == JOB_ITERATIONS
        assert Image.open(io.BytesIO(final.result.data)).size == (48, 32)
    again = finals[victim.id]
    assert again.attempt == 2 and again.worker != victim.worker and not again.error
    assert [f.attempt for i, f in finals.items() if i != victim.id] == [1, 1, 1]
    # B streamed the killed job's first run, then its clean restart from the beginning.
    updates = watches[victim.id].result()
    retry = [u.iteration for u in updates if u.attempt == 2]
    assert any(u.attempt == 1 and u.iteration >= 2 for u in updates)
    assert retry[0] < JOB_ITERATIONS // 2 and retry == sorted(retry)
    assert any(f"its worker {victim.worker} stopped at iteration" in w.log() for w in cluster.workers)


def test_cancel_on_another_replica_stops_a_running_job_and_a_queued_one_never_starts(
    cluster: Cluster, a: StylizeClient, b: StylizeClient
) -> None:
    busy = [a.submit_optimization(job_request(iterations=LONG)) for _ in range(2)]
    try:
        for job in busy:
            wait_for(b, job.id, running)
        queued = a.submit_optimization(job_request())
        assert queued.state == pb.JOB_STATE_QUEUED
        never = b.cancel_job(queued.id)
        assert never.state == pb.JOB_STATE_CANCELLED and "before it started" in never.error
        assert not never.worker and not never.started_at.seconds and never.attempt == 0

        stream = a.watch_job(busy[0].id, timeout_s=60)
        at = wait_for(b, busy[0].id, running).iteration
        started = time.monotonic()
        cancelled = b.cancel_job(busy[0].id)
        assert time.monotonic() - started < 5
        assert cancelled.state == pb.JOB_STATE_CANCELLED, cancelled
        assert at <= cancelled.iteration < LONG and "cancelled at iteration" in cancelled.error
        assert list(stream)[-1].state == pb.JOB_STATE_CANCELLED
    finally:
        for job in busy:
            b.cancel_job(job.id)
    # Its message still reaches a worker, which finds the job over and runs nothing.
    over = f"job {queued.id} is over: nothing to run"
    wait_until(lambda: any(over in w.log() for w in cluster.workers), "a worker to take the cancelled job's message")
    assert a.get_job(queued.id).state == pb.JOB_STATE_CANCELLED and not a.get_job(queued.id).worker


def test_a_job_whose_worker_keeps_dying_fails_after_the_most_attempts(cluster: Cluster, a: StylizeClient) -> None:
    job = a.submit_optimization(job_request(iterations=LONG))
    stream = a.watch_job(job.id, timeout_s=120)
    first = wait_for(a, job.id, running)
    os.kill(pid_of(first), signal.SIGKILL)  # the job process alone: its worker hands the job back at once
    second = wait_for(a, job.id, lambda j: running(j) and j.attempt == 2, timeout_s=90)
    assert second.worker != first.worker
    os.kill(pid_of(second), signal.SIGKILL)
    final = list(stream)[-1]
    assert final.state == pb.JOB_STATE_FAILED and final.attempt == 2
    assert "died (killed by SIGKILL" in final.error and "STYLIZE_JOB_MAX_ATTEMPTS=2" in final.error
    # The workers start new job processes and take jobs again.
    for job in [a.submit_optimization(job_request()) for _ in range(2)]:
        assert wait_for(a, job.id, lambda j: j.state in FINAL).state == pb.JOB_STATE_SUCCEEDED


def test_sigterm_hands_the_running_job_back_to_the_queue(cluster: Cluster, a: StylizeClient) -> None:
    job = a.submit_optimization(job_request(iterations=JOB_ITERATIONS))
    stream = a.watch_job(job.id, timeout_s=120)
    owner = cluster.owner(wait_for(a, job.id, running))
    owner.process.terminate()
    assert owner.process.wait(timeout=30) == 0
    cluster.add_worker()
    final = list(stream)[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert final.attempt == 1  # a hand-back is not the job's fault: no attempt spent
    assert "handed back" in owner.log() or "back on the queue" in owner.log()


def test_queue_metrics_on_the_replicas_and_job_metrics_on_the_workers(cluster: Cluster, a: StylizeClient) -> None:
    done = [a.submit_optimization(job_request()) for _ in range(3)]
    for job in done:
        wait_for(a, job.id, lambda j: j.state in FINAL)
    # The replicas read the queue from Redis once a second, so wait for every gauge: a reading taken while the
    # last job ran shows an empty queue (oldest 0) with one job running, and one taken before the newest
    # worker's first heartbeat counts one live worker (a killed one counts until its heartbeat is 30 s old).
    settled = ("stylize_jobs_oldest_queued_seconds 0.0", "stylize_jobs_queued 0.0", "stylize_jobs_running 0.0")

    def reported(text: str) -> bool:
        return all(line in text for line in settled) and value(text, "stylize_job_queue_workers") >= 2

    deadline = time.monotonic() + 10
    while not reported(text := scrape(cluster.replicas[1].metrics_url)):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert "stylize_jobs_queued 0.0" in text and "stylize_jobs_running 0.0" in text
    assert value(text, "stylize_job_queue_workers") >= 2  # the two live workers
    assert value(scrape(cluster.replicas[0].metrics_url), "stylize_jobs_submitted_total") >= len(done)  # by A alone
    live = [w for w in cluster.workers if w.process.poll() is None]
    texts = [scrape(w.metrics_url) for w in live]
    assert sum(value(t, 'stylize_jobs_finished_total{state="succeeded"}') for t in texts) >= len(done)
    assert all("stylize_worker_busy 0.0" in t and "stylize_job_duration_seconds_bucket" in t for t in texts)


def scrape(url: str) -> str:
    return str(urllib.request.urlopen(url, timeout=5).read().decode())


def value(text: str, name: str) -> float:
    """A sample's value; 0 when the series has none yet."""
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


def test_redis_away_makes_jobs_unavailable_and_both_come_back(
    cluster: Cluster, a: StylizeClient, b: StylizeClient
) -> None:
    cluster.redis.stop()
    for client in (a, b):
        wait_health(client, "stylize.jobs", "NOT_SERVING")
        assert client.health() == "SERVING"
        with pytest.raises(grpc.RpcError) as caught:
            client.submit_optimization(job_request())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"the job queue at {cluster.redis.url} is unreachable" in caught.value.details()
        # The fast path does not need Redis.
        assert client.stylize(encode(photo(40, 30)), "tiny").width == 40

    cluster.redis.start()  # empty: it kept nothing
    for client in (a, b):
        wait_health(client, "stylize.jobs", "SERVING")
    job = a.submit_optimization(job_request())
    final = wait_for(b, job.id, lambda j: j.state in FINAL, timeout_s=60)  # the workers reconnected by themselves
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error


def test_queue_settings_come_from_the_environment_and_are_checked() -> None:
    from server.config import load_worker_config

    config = load_worker_config(
        [],
        environ={
            "STYLIZE_QUEUE": "redis://:secret@queue:6379/0",
            "STYLIZE_JOB_MAX_ATTEMPTS": "3",
            "STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "7200",
        },
    )
    assert config.job_max_attempts == 3 and config.queue_visibility_timeout_seconds == 7200
    assert config.worker_metrics_port == 9465 and config.worker_threads == 0
    for environ in (
        {"STYLIZE_JOB_MAX_ATTEMPTS": "0"},
        {"STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "0"},
        {"STYLIZE_WORKER_METRICS_PORT": "70000"},
        {"STYLIZE_WORKER_THREADS": "-1"},
    ):
        with pytest.raises(SystemExit):
            load_worker_config([], environ=environ)
    from server.jobs import queue

    assert queue.redact(config.queue) == "redis://:****@queue:6379/0"
    spec = JobSpec(b"content", (b"s1", b""), b"init", {"sizes": (24, 48), "seed": 3}, 8, "jpeg", 60.0)
    assert queue.decode_spec(queue.encode_spec(spec)) == spec  # no pickle: JSON and raw bytes


def test_make_worker_without_a_queue_says_what_to_set() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "STYLIZE_QUEUE"}
    result = subprocess.run(
        [sys.executable, "-m", "server.jobs.worker"],
        cwd=ROOT,
        env={**environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "set STYLIZE_QUEUE=redis://" in result.stderr
