"""A queue worker's jobs: claim one from Redis, drive the job process through it, report, finish.

This process (server/jobs/worker.py, `make worker`) is a Celery consumer (the
"solo" pool: one job at a time, in its main thread) that runs no optimisation
itself: it drives a job process (server/jobs/job_process.py), which loads the
loss network once and reports every iteration. So this process stays
responsive while a job runs, and does each iteration what a job on another host
needs, under the job policy of server/jobs/policy.py:

1. claims the job (a Lua script: queued or orphaned -> running, attempt + 1, a
   lease only it renews), or fails it when it has started STYLIZE_JOB_MAX_ATTEMPTS
   times already;
2. writes progress and previews to the job's hash at most once per
   STYLIZE_JOB_UPDATE_INTERVAL_SECONDS (always the final state), renewing the lease;
3. reads the job's cancel flag every iteration and passes a cancel to the job process;
4. writes the final state, and only then lets Celery acknowledge the message.

If the job process dies (the OOM killer, a crash in native code), the job goes
back on the queue at once (policy.RetryPolicy), to start again from iteration 0
on whichever worker is free; a new job process starts for the next job. If this
whole process dies (SIGKILL, the host lost), the message is still
unacknowledged and Redis hands it out again after
STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS. On SIGTERM the running job is stopped
and handed back to the queue (its attempt not counted), then the worker exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import redis
from celery.exceptions import Reject  # type: ignore[import-untyped]

from server import metrics
from server.jobs import policy, queue
from server.jobs.model import (
    CancelJob,
    JobFinished,
    JobProcessSettings,
    JobProgress,
    JobSpec,
    JobState,
    OptimizerInfo,
    RunJob,
    StopReason,
)
from server.jobs.process import JobProcess, StartError
from server.jobs.queue_ledger import Claim, ClaimStatus, JobLedger, Lease, shutting_down

logger = logging.getLogger(__name__)


class QueueWorker:
    def __init__(self, ledger: JobLedger, process: JobProcessSettings, *, start_timeout_s: float, update_s: float):
        self.ledger = ledger
        self.retries = policy.RetryPolicy(ledger.max_attempts)
        self.process_settings = process
        self.start_timeout_s = start_timeout_s
        self.update_s = update_s
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.process: JobProcess | None = None
        self.info: OptimizerInfo | None = None
        self._stopped = threading.Event()

    # The job process, and telling the API replicas what it accepts.

    def job_process(self) -> JobProcess:
        """The running job process, started (again, after one died) when needed."""
        if self.process is None:
            process = JobProcess(self.process_settings)
            self.info = process.wait_ready(self.start_timeout_s)
            self.process = process
        return self.process

    def heartbeat(self) -> None:
        """Thread: the optimiser's settings for the API replicas, and this worker's liveness, every few seconds."""
        down = False
        while not self._stopped.is_set():
            try:
                if self.info is not None:
                    self.ledger.redis.set(queue.OPTIMIZER_KEY, queue.encode_info(self.info))
                self.ledger.redis.zadd(queue.WORKERS_KEY, {self.name: time.time()})
                if down:
                    logger.info("the job queue at %s is reachable again", self.ledger.url)
                down = False
            except (redis.RedisError, OSError) as exc:
                if not down:
                    logger.error("the job queue at %s is unreachable: %s; retrying", self.ledger.url, exc)
                down = True
            self._stopped.wait(queue.HEARTBEAT_SECONDS)

    def close(self) -> None:
        self._stopped.set()
        if self.process is not None:
            self.process.stop()
        with contextlib.suppress(redis.RedisError, OSError):
            self.ledger.redis.zrem(queue.WORKERS_KEY, self.name)

    # One job: the Celery task.

    def run_job(self, job_id: str) -> None:
        """Claim, run, report, finish; returns once the final state is written (then Celery acknowledges)."""
        ledger = self.ledger
        try:
            process = self.job_process()
        except StartError as exc:
            logger.error("the job process cannot start: %s; handing job %s back and stopping", exc, job_id)
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown, after this task
            raise Reject(requeue=True) from exc
        try:
            claim = ledger.claim(job_id, process.name)
        except (redis.RedisError, OSError) as exc:
            logger.error("cannot claim job %s: the job queue at %s is unreachable: %s", job_id, ledger.url, exc)
            time.sleep(1.0)
            raise Reject(requeue=True) from exc
        if claim.status in (ClaimStatus.MISSING, ClaimStatus.FINAL):
            gone = claim.status is ClaimStatus.MISSING
            logger.info("job %s is %s: nothing to run", job_id, "gone" if gone else "over")
            if gone:
                with contextlib.suppress(redis.RedisError, OSError):
                    ledger.redis.zrem(queue.QUEUED_KEY, job_id)
            return
        if claim.status is ClaimStatus.CANCELLED:
            ledger.finish(job_id, "", state=JobState.CANCELLED, error="cancelled; its worker stopped before it did")
            return
        if claim.status is ClaimStatus.EXHAUSTED:
            error = (
                f"the job started {claim.attempt} times and each time its worker died "
                f"(STYLIZE_JOB_MAX_ATTEMPTS={ledger.max_attempts}); the last: "
                f"{claim.last_error or self._vanished(claim)}"
            )
            ledger.finish(job_id, "", state=JobState.FAILED, error=error)
            metrics.WORKER_JOBS_FINISHED.labels(JobState.FAILED.value).inc()
            return
        if claim.attempt > 1:
            logger.warning(
                "job %s: attempt %d of %d; before: %s",
                job_id,
                claim.attempt,
                ledger.max_attempts,
                claim.last_error or self._vanished(claim),
            )
        try:
            metrics.WORKER_BUSY.set(1)
            self.run_claimed(job_id, process, claim)
        except Reject:
            raise
        except Exception as exc:  # a bug here: fail the job visibly rather than redeliver it for ever
            logger.exception("job %s failed in the queue worker", job_id)
            ledger.finish(job_id, process.name, state=JobState.FAILED, error=f"internal error in the worker: {exc!r}")
        finally:
            metrics.WORKER_BUSY.set(0)

    def run_claimed(self, job_id: str, process: JobProcess, claim: Claim) -> None:
        spec = self.ledger.spec(job_id)
        if spec is None:
            self.ledger.finish(
                job_id, process.name, state=JobState.FAILED, error="the job's request was lost from Redis"
            )
            return
        supervision = policy.Supervision(time.monotonic(), spec.time_budget_seconds)
        process.send(RunJob(job_id, spec))
        pending: dict[str, Any] = {}
        written = renewed = 0.0
        iteration = 0
        lease: Lease | None = Lease.OURS
        while True:
            try:
                message = process.receive(policy.POLL_SECONDS)
            except EOFError:
                self.process = None
                metrics.WORKER_JOB_PROCESS_RESTARTS.inc()
                self.job_process_died(job_id, process, claim, spec, supervision.stop_reason, iteration)
                return
            now = time.monotonic()
            if isinstance(message, JobFinished) and message.job_id == job_id:
                self.job_finished(job_id, process, message, spec, supervision.stop_reason, now - supervision.started)
                return
            if isinstance(message, JobProgress) and message.job_id == job_id:
                iteration = message.iteration
                pending.update(iteration=iteration, stage=message.stage, losses=queue.encode_losses(message.losses))
                if message.preview:
                    pending.update(preview=message.preview, preview_iteration=iteration)
            # Every iteration: progress when due (renewing the lease), else the cancel flag alone.
            if pending and now - written >= self.update_s:
                lease, written, renewed = self.ledger.update(job_id, process.name, pending), now, now
                if lease is not None:
                    pending = {}
            elif now - renewed >= queue.LEASE_RENEW_SECONDS:
                lease, renewed = self.ledger.update(job_id, process.name, {}), now
            elif isinstance(message, JobProgress):
                lease = self.ledger.cancel_requested(job_id)
            reason = self._stop_reason(job_id, lease) if supervision.stop_reason is None else None
            if reason is not None and supervision.stop(reason, now):
                process.send(CancelJob(job_id))
            if kill := supervision.kill_reason(now):
                process.kill(kill)

    @staticmethod
    def _stop_reason(job_id: str, lease: Lease | None) -> StopReason | None:
        if lease is Lease.CANCELLED:
            return StopReason.USER
        if lease in (Lease.NOT_OURS, Lease.GONE):
            logger.warning("job %s is no longer this worker's (ended, expired, or taken over): stopping", job_id)
            return StopReason.LOST
        if shutting_down():
            logger.info("shutting down: stopping job %s to hand it back to the queue", job_id)
            return StopReason.SHUTDOWN
        return None

    def job_finished(
        self,
        job_id: str,
        process: JobProcess,
        message: JobFinished,
        spec: JobSpec,
        reason: StopReason | None,
        seconds: float,
    ) -> None:
        state, error = message.state, message.error
        if state is JobState.CANCELLED:
            if reason is StopReason.SHUTDOWN:
                self.ledger.requeue(job_id, process.name, f"its worker {self.name} shut down", count_attempt=False)
            if reason is StopReason.LOST:
                return
            error = policy.cancelled_error(message.iteration, spec.iterations)
        fields: dict[str, Any] = {"state": state.value, "iteration": message.iteration, "error": error}
        if message.result:
            fields["result"] = message.result
        self.ledger.finish(job_id, process.name, **fields)
        metrics.WORKER_JOBS_FINISHED.labels(state.value).inc()
        metrics.WORKER_JOB_SECONDS.observe(seconds)
        if message.iteration and seconds > 0:
            metrics.WORKER_JOB_ITERATIONS_PER_SECOND.observe(message.iteration / seconds)

    def job_process_died(
        self, job_id: str, process: JobProcess, claim: Claim, spec: JobSpec, reason: StopReason | None, iteration: int
    ) -> None:
        how = process.exit_description()
        logger.error("job process %s died (%s) running job %s", process.name, how, job_id)
        if reason is StopReason.LOST:
            return
        if reason is StopReason.SHUTDOWN:
            self.ledger.requeue(job_id, process.name, f"its worker {self.name} shut down", count_attempt=False)
        if reason is not None:
            state, error = policy.stopped_outcome(reason, process.kill_reason, iteration, spec.iterations)
            self.ledger.finish(job_id, process.name, state=state.value, iteration=iteration, error=error)
            metrics.WORKER_JOBS_FINISHED.labels(state.value).inc()
            return
        error = self.retries.died_error(process.name, how, iteration, spec.iterations, claim.attempt)
        if self.retries.retries(claim.attempt):
            self.ledger.requeue(job_id, process.name, error, count_attempt=True)  # raises Reject
        self.ledger.finish(job_id, process.name, state=JobState.FAILED.value, iteration=iteration, error=error)
        metrics.WORKER_JOBS_FINISHED.labels(JobState.FAILED.value).inc()

    @staticmethod
    def _vanished(claim: Claim) -> str:
        return (
            f"its worker {claim.previous_worker or '(unknown)'} stopped at iteration {claim.previous_iteration} "
            "without finishing it (its process or host died)"
        )
