"""A worker of the distributed queue: takes Gatys jobs from Redis one at a time, on any host.

    STYLIZE_QUEUE=redis://redis:6379/0 STYLIZE_LOSS_WEIGHTS=imagenet make worker

Two processes. This one is a Celery consumer (the "solo" pool: one job at a time,
in this process's main thread) that runs no optimisation itself: it drives a job
process, the same spawned GatysWorker the local pool uses (server/jobs/worker.py,
`serve`), which loads the loss network once and reports every iteration. So this
process stays responsive while a job runs, and does each iteration what a job
on another host needs:

1. claims the job (a Lua script: queued or orphaned -> running, attempt + 1, a
   lease only it renews), or fails it when it has started STYLIZE_JOB_MAX_ATTEMPTS
   times already;
2. writes progress and previews to the job's hash at most once per
   STYLIZE_JOB_UPDATE_INTERVAL_SECONDS (always the final state), renewing the lease;
3. reads the job's cancel flag every iteration and passes a cancel to the job process;
4. writes the final state, and only then lets Celery acknowledge the message.

If the job process dies (the OOM killer, a crash in native code), the job goes
back on the queue at once, to start again from iteration 0 on whichever worker
is free; a new job process starts for the next job. If this whole process dies
(SIGKILL, the host lost), the message is still unacknowledged and Redis hands it
out again after STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS. On SIGTERM the running
job is stopped and handed back to the queue (its attempt not counted), then the
worker exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery.exceptions import Reject  # type: ignore[import-untyped]
from celery.worker import state as celery_state  # type: ignore[import-untyped]
from prometheus_client import start_http_server

from server import metrics
from server.config import ServerConfig
from server.jobs import queue
from server.jobs.local import KILL_AFTER_SECONDS
from server.jobs.model import (
    CancelJob,
    JobFinished,
    JobProgress,
    JobSpec,
    JobState,
    OptimizerInfo,
    RunJob,
    WorkerConfig,
)
from server.jobs.process import JobProcess, StartError

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the loop looks up from the job process when no message comes
LEASE_RENEW_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0


@dataclass
class Claim:
    status: str  # claimed | exhausted | final | missing | cancelled
    attempt: int = 0
    previous_state: str = ""
    previous_worker: str = ""
    previous_iteration: int = 0
    last_error: str = ""


def shutting_down() -> bool:
    """Celery's warm (SIGTERM) or cold shutdown has begun."""
    return celery_state.should_stop is not None or celery_state.should_terminate is not None


class QueueWorker:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.worker_config = WorkerConfig(
            loss_weights=config.loss_weights,
            device=config.device,
            precision=config.job_precision,
            threads=config.worker_threads or os.cpu_count() or 1,
            max_pixels=config.max_pixels,
            log_level=config.log_level,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.url = queue.redact(config.queue)
        self.redis = redis.Redis.from_url(config.queue, socket_connect_timeout=2.0, socket_timeout=10.0)
        self._claim = self.redis.register_script(queue.CLAIM)
        self._update = self.redis.register_script(queue.UPDATE)
        self._finish = self.redis.register_script(queue.FINISH)
        self._requeue = self.redis.register_script(queue.REQUEUE)
        self.process: JobProcess | None = None
        self.info: OptimizerInfo | None = None
        self._stopped = threading.Event()
        self._retry_at = 0.0  # while Redis is away mid-job: when to try it again

    # The job process, and telling the API replicas what it accepts.

    def job_process(self) -> JobProcess:
        """The running job process, started (again, after one died) when needed."""
        if self.process is None:
            self.process = JobProcess(self.worker_config, self.config.worker_start_timeout_seconds)
            self.info = self.process.info
        return self.process

    def heartbeat(self) -> None:
        """Thread: the optimiser's settings for the API replicas, and this worker's liveness, every few seconds."""
        down = False
        while not self._stopped.is_set():
            try:
                if self.info is not None:
                    self.redis.set(queue.OPTIMIZER_KEY, queue.encode_info(self.info))
                self.redis.zadd(queue.WORKERS_KEY, {self.name: time.time()})
                if down:
                    logger.info("the job queue at %s is reachable again", self.url)
                down = False
            except (redis.RedisError, OSError) as exc:
                if not down:
                    logger.error("the job queue at %s is unreachable: %s; retrying", self.url, exc)
                down = True
            self._stopped.wait(HEARTBEAT_SECONDS)

    def close(self) -> None:
        self._stopped.set()
        if self.process is not None:
            self.process.stop()
        with contextlib.suppress(redis.RedisError, OSError):
            self.redis.zrem(queue.WORKERS_KEY, self.name)

    # One job: the Celery task.

    def run_job(self, job_id: str) -> None:
        """Claim, run, report, finish; returns once the final state is written (then Celery acknowledges)."""
        try:
            process = self.job_process()
        except StartError as exc:
            logger.error("the job process cannot start: %s; handing job %s back and stopping", exc, job_id)
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown, after this task
            raise Reject(requeue=True) from exc
        try:
            claim = self.claim(job_id, process.name)
        except (redis.RedisError, OSError) as exc:
            logger.error("cannot claim job %s: the job queue at %s is unreachable: %s", job_id, self.url, exc)
            time.sleep(1.0)
            raise Reject(requeue=True) from exc
        if claim.status in ("missing", "final"):
            logger.info("job %s is %s: nothing to run", job_id, "gone" if claim.status == "missing" else "over")
            if claim.status == "missing":
                with contextlib.suppress(redis.RedisError, OSError):
                    self.redis.zrem(queue.QUEUED_KEY, job_id)
            return
        if claim.status == "cancelled":
            self.finish(job_id, "", state=JobState.CANCELLED, error="cancelled; its worker stopped before it did")
            return
        if claim.status == "exhausted":
            error = (
                f"the job started {claim.attempt} times and each time its worker died "
                f"(STYLIZE_JOB_MAX_ATTEMPTS={self.config.job_max_attempts}); the last: "
                f"{claim.last_error or self._vanished(claim)}"
            )
            self.finish(job_id, "", state=JobState.FAILED, error=error)
            metrics.WORKER_JOBS_FINISHED.labels(JobState.FAILED.value).inc()
            return
        if claim.attempt > 1:
            logger.warning(
                "job %s: attempt %d of %d; before: %s",
                job_id,
                claim.attempt,
                self.config.job_max_attempts,
                claim.last_error or self._vanished(claim),
            )
        try:
            metrics.WORKER_BUSY.set(1)
            self.run_claimed(job_id, process, claim)
        except Reject:
            raise
        except Exception as exc:  # a bug here: fail the job visibly rather than redeliver it for ever
            logger.exception("job %s failed in the queue worker", job_id)
            self.finish(job_id, process.name, state=JobState.FAILED, error=f"internal error in the worker: {exc!r}")
        finally:
            metrics.WORKER_BUSY.set(0)

    def claim(self, job_id: str, holder: str) -> Claim:
        """The job for this worker, waiting while another live worker holds it (a redelivery that came early)."""
        busy_since, warned = time.monotonic(), False
        while True:
            reply = [
                value.decode() if isinstance(value, bytes) else str(value)
                for value in self._claim(
                    keys=[queue.record_key(job_id), queue.lease_key(job_id), queue.QUEUED_KEY, queue.RUNNING_KEY],
                    args=[
                        holder,
                        repr(time.time()),
                        int(queue.LEASE_SECONDS * 1000),
                        self.config.job_max_attempts,
                        queue.LIVE_TTL_SECONDS,
                        queue.UPDATES_CHANNEL,
                        job_id,
                    ],
                )
            ]
            if reply[0] != "busy":
                if len(reply) == 1:
                    return Claim(reply[0])
                return Claim(reply[0], int(reply[1]), reply[2], reply[3], int(float(reply[4])), reply[5])
            # A dead holder's lease lapses within LEASE_SECONDS; a holder that keeps it longer is alive.
            if not warned and time.monotonic() - busy_since > queue.LEASE_SECONDS + 1:
                warned = True
                metrics.WORKER_DUPLICATES.inc()
                logger.warning(
                    "job %s was delivered again while %s still runs it: waiting for that run to end. It has run "
                    "longer than STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS=%g; raise that above the longest job",
                    job_id,
                    reply[1],
                    self.config.queue_visibility_timeout_seconds,
                )
            if shutting_down():
                raise Reject(f"job {job_id} handed back: this worker shuts down", requeue=True)
            time.sleep(0.5)

    def run_claimed(self, job_id: str, process: JobProcess, claim: Claim) -> None:
        spec = self.spec(job_id)
        if spec is None:
            self.finish(job_id, process.name, state=JobState.FAILED, error="the job's request was lost from Redis")
            return
        started = time.monotonic()
        process.send(RunJob(job_id, spec))
        pending: dict[str, Any] = {}
        written = renewed = 0.0
        iteration = 0
        stop_reason = ""  # user | shutdown | lost | budget: why this worker stops the job before its end
        stop_sent = 0.0
        status: int | None = 1
        while True:
            try:
                message = process.receive(POLL_SECONDS)
            except EOFError:
                self.process = None
                metrics.WORKER_JOB_PROCESS_RESTARTS.inc()
                self.job_process_died(job_id, process, claim, spec, stop_reason, iteration)
                return
            now = time.monotonic()
            if isinstance(message, JobFinished) and message.job_id == job_id:
                self.job_finished(job_id, process, message, spec, stop_reason, now - started)
                return
            if isinstance(message, JobProgress) and message.job_id == job_id:
                iteration = message.iteration
                pending.update(iteration=iteration, stage=message.stage, losses=queue.encode_losses(message.losses))
                if message.preview:
                    pending.update(preview=message.preview, preview_iteration=iteration)
            # Every iteration: progress when due (renewing the lease), else the cancel flag alone.
            if pending and now - written >= self.config.job_update_interval_seconds:
                status, written, renewed = self.update(job_id, process.name, pending), now, now
                if status is not None:
                    pending = {}
            elif now - renewed >= LEASE_RENEW_SECONDS:
                status, renewed = self.update(job_id, process.name, {}), now
            elif isinstance(message, JobProgress):
                status = self.cancel_requested(job_id)
            if not stop_reason:
                if status == 2:
                    stop_reason = "user"
                elif status in (0, -1):
                    stop_reason = "lost"
                    logger.warning(
                        "job %s is no longer this worker's (ended, expired, or taken over): stopping", job_id
                    )
                elif shutting_down():
                    stop_reason = "shutdown"
                    logger.info("shutting down: stopping job %s to hand it back to the queue", job_id)
            if stop_reason and not stop_sent:
                process.send(CancelJob(job_id))
                stop_sent = now
            elif stop_sent and now - stop_sent > KILL_AFTER_SECONDS:
                process.kill(f"asked to stop ({stop_reason}); it did not within {KILL_AFTER_SECONDS:g} s")
            elif now - started > spec.time_budget_seconds + KILL_AFTER_SECONDS:
                stop_reason = stop_reason or "budget"
                process.kill(f"the job ran past its time budget of {spec.time_budget_seconds:g} s and did not stop")

    def job_finished(
        self, job_id: str, process: JobProcess, message: JobFinished, spec: JobSpec, stop_reason: str, seconds: float
    ) -> None:
        state, error = message.state, message.error
        if state is JobState.CANCELLED:
            if stop_reason == "shutdown":
                self.requeue(job_id, process.name, f"its worker {self.name} shut down", count_attempt=False)
            if stop_reason == "lost":
                return
            error = f"cancelled at iteration {message.iteration} of {spec.iterations}"
        fields: dict[str, Any] = {"state": state.value, "iteration": message.iteration, "error": error}
        if message.result:
            fields["result"] = message.result
        self.finish(job_id, process.name, **fields)
        metrics.WORKER_JOBS_FINISHED.labels(state.value).inc()
        metrics.WORKER_JOB_SECONDS.observe(seconds)
        if message.iteration and seconds > 0:
            metrics.WORKER_JOB_ITERATIONS_PER_SECOND.observe(message.iteration / seconds)

    def job_process_died(
        self, job_id: str, process: JobProcess, claim: Claim, spec: JobSpec, stop_reason: str, iteration: int
    ) -> None:
        how = process.exit_description()
        logger.error("job process %s died (%s) running job %s", process.name, how, job_id)
        if stop_reason == "lost":
            return
        if stop_reason == "shutdown":
            self.requeue(job_id, process.name, f"its worker {self.name} shut down", count_attempt=False)
        if stop_reason in ("user", "budget"):
            state = JobState.CANCELLED if stop_reason == "user" else JobState.FAILED
            error = process.kill_reason or f"cancelled at iteration {iteration} of {spec.iterations}"
            self.finish(job_id, process.name, state=state.value, iteration=iteration, error=error)
            metrics.WORKER_JOBS_FINISHED.labels(state.value).inc()
            return
        error = (
            f"the worker process {process.name} running this job died ({how}) at iteration "
            f"{iteration} of {spec.iterations}"
        )
        if claim.attempt < self.config.job_max_attempts:
            self.requeue(job_id, process.name, error, count_attempt=True)
        error += (
            f"; the job had started {claim.attempt} times, as many as STYLIZE_JOB_MAX_ATTEMPTS="
            f"{self.config.job_max_attempts} allows"
        )
        self.finish(job_id, process.name, state=JobState.FAILED.value, iteration=iteration, error=error)
        metrics.WORKER_JOBS_FINISHED.labels(JobState.FAILED.value).inc()

    # Writes to the job's hash.

    def spec(self, job_id: str) -> JobSpec | None:
        data = self.redis.hget(queue.record_key(job_id), "spec")
        return queue.decode_spec(data) if isinstance(data, bytes) and data else None

    def update(self, job_id: str, holder: str, fields: dict[str, Any]) -> int | None:
        """1: still ours, 2: ours and cancelled, 0: not ours any more, -1: gone; None: Redis away (run on)."""
        args: list[Any] = [holder, int(queue.LEASE_SECONDS * 1000), queue.LIVE_TTL_SECONDS]
        args += [queue.UPDATES_CHANNEL, job_id, *(item for pair in fields.items() for item in pair)]
        if time.monotonic() < self._retry_at:
            return None
        try:
            status = int(self._update(keys=[queue.record_key(job_id), queue.lease_key(job_id)], args=args))
        except (redis.RedisError, OSError) as exc:
            self._away(job_id, exc)
            return None
        if self._retry_at:
            logger.info("job %s: the job queue is reachable again; progress written", job_id)
            self._retry_at = 0.0
        return status

    def cancel_requested(self, job_id: str) -> int | None:
        if time.monotonic() < self._retry_at:
            return None
        try:
            return 2 if self.redis.hget(queue.record_key(job_id), "cancel") == b"1" else 1
        except (redis.RedisError, OSError) as exc:
            self._away(job_id, exc)
            return None

    def _away(self, job_id: str, exc: BaseException) -> None:
        """Redis is away mid-job: the job runs on; progress waits (tried again each second), then catches up."""
        if not self._retry_at:
            logger.error("job %s: the job queue at %s is unreachable (%s); the job runs on", job_id, self.url, exc)
        self._retry_at = time.monotonic() + 1.0

    def finish(self, job_id: str, holder: str, **fields: Any) -> None:
        """The final state, retried while Redis is away (the message stays unacknowledged until it is written)."""
        keys = [queue.record_key(job_id), queue.lease_key(job_id), queue.QUEUED_KEY, queue.RUNNING_KEY]
        retention = max(1, round(self.config.job_retention_seconds))
        args: list[Any] = [holder, repr(time.time()), retention, queue.UPDATES_CHANNEL, job_id]
        args += [item for pair in fields.items() for item in pair]
        while True:
            try:
                done = int(self._finish(keys=keys, args=args))
                break
            except (redis.RedisError, OSError) as exc:
                if shutting_down():
                    raise Reject(requeue=True) from exc  # unacknowledged: it runs again elsewhere
                logger.error("job %s: final state not written (%s); retrying", job_id, exc)
                time.sleep(1.0)
        if done == 1:
            logger.info(
                "job %s %s%s", job_id, fields.get("state"), f": {fields['error']}" if fields.get("error") else ""
            )
        else:
            logger.warning("job %s: final state dropped: the job %s", job_id, "is gone" if done < 0 else "had ended")

    def requeue(self, job_id: str, holder: str, why: str, *, count_attempt: bool) -> None:
        """Back on the queue to start again from iteration 0; raises Reject, so Celery requeues the message."""
        keys = [queue.record_key(job_id), queue.lease_key(job_id), queue.QUEUED_KEY, queue.RUNNING_KEY]
        args: list[Any] = [holder, repr(time.time()), queue.LIVE_TTL_SECONDS, queue.UPDATES_CHANNEL, job_id, why]
        try:
            self._requeue(keys=keys, args=[*args, "0" if count_attempt else "1"])
        except (redis.RedisError, OSError) as exc:
            logger.error(
                "job %s: cannot hand it back (%s); it is redelivered after the visibility timeout", job_id, exc
            )
        reason = "worker_died" if count_attempt else "shutdown"
        metrics.WORKER_REQUEUED.labels(reason).inc()
        logger.warning("job %s back on the queue: %s", job_id, why)
        raise Reject(f"job {job_id} handed back to the queue: {why}", requeue=True)

    @staticmethod
    def _vanished(claim: Claim) -> str:
        return (
            f"its worker {claim.previous_worker or '(unknown)'} stopped at iteration {claim.previous_iteration} "
            "without finishing it (its process or host died)"
        )


def run(config: ServerConfig) -> None:
    """Start the job process, then consume the queue until SIGTERM (or SIGINT)."""
    worker = QueueWorker(config)
    logger.info("queue worker %s: jobs from %s", worker.name, worker.url)
    if config.queue_visibility_timeout_seconds < config.job_time_budget_seconds:
        logger.warning(
            "STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS=%g is shorter than STYLIZE_JOB_TIME_BUDGET_SECONDS=%g: a job "
            "running longer is delivered to a second worker, which waits for the first",
            config.queue_visibility_timeout_seconds,
            config.job_time_budget_seconds,
        )
    try:
        worker.job_process()  # before taking any job: a worker that cannot run one takes none
    except StartError as exc:
        raise SystemExit(f"stylize worker: the job process cannot start: {exc}") from None
    if config.worker_metrics_port:
        start_http_server(config.worker_metrics_port, addr=config.metrics_host, registry=metrics.WORKER_REGISTRY)
        logger.info("metrics on http://%s:%d/metrics", config.metrics_host, config.worker_metrics_port)
    threading.Thread(target=worker.heartbeat, name="queue-heartbeat", daemon=True).start()

    app = queue.celery_app(config)

    def run_gatys_job(job_id: str) -> None:
        worker.run_job(job_id)

    app.task(name=queue.TASK_NAME)(run_gatys_job)
    celery_worker = app.Worker(
        hostname=f"stylize@{worker.name}",
        loglevel=config.log_level,
        quiet=True,
        without_mingle=True,  # no start-up chatter between workers: jobs need none of it
        without_gossip=True,
        without_heartbeat=True,
    )
    try:
        celery_worker.start()
    finally:
        worker.close()
        logger.info("queue worker %s stopped", worker.name)
    raise SystemExit(celery_worker.exitcode or 0)
