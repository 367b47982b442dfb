"""The local pool: the API process's own job processes on this host, the API's entry into server/jobs/.

Each job process is spawned (server/jobs/process.py, PooledProcess), loads the
loss network once and runs one job at a time (server/jobs/job_process.py). This
module adapts the job policy (server/jobs/policy.py: entry checks, supervision,
what a death means) to an in-memory queue: dispatch, cancellation, start-up
timeouts, replacing dead processes, and shutdown.

A job process that dies fails the job it was running (policy.LOCAL_POOL_RETRIES
says why it is not retried), and a replacement starts. One that cannot start
(weights missing) is not restarted: the next would fail the same way; the
service turns unhealthy and every job call gets that reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from server import metrics
from server.errors import ServiceUnavailable
from server.jobs import policy
from server.jobs.model import (
    CancelJob,
    JobFinished,
    JobLimits,
    JobProcessSettings,
    JobProgress,
    JobRecord,
    JobSpec,
    JobState,
    OptimizerInfo,
    ProcessState,
    Ready,
    RunJob,
    StartFailed,
    Stop,
    StopReason,
)
from server.jobs.process import PooledProcess, describe_exit, log_ready
from server.jobs.service import JobService
from server.jobs.store import JobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSettings:
    """The local pool's own settings (from ServerConfig, built in server/main.py)."""

    processes: int  # STYLIZE_LOCAL_WORKERS
    max_queued: int
    retention_seconds: float
    update_interval_seconds: float
    start_timeout_seconds: float


class LocalJobService(JobService):
    loop: asyncio.AbstractEventLoop  # set by start()

    def __init__(self, settings: PoolSettings, process: JobProcessSettings, limits: JobLimits) -> None:
        self.settings = settings
        self.store = JobStore(settings.retention_seconds, settings.update_interval_seconds)
        self._limits = limits
        self.process_settings = process
        self.processes: list[PooledProcess] = []
        self.queue: collections.deque[JobRecord] = collections.deque()
        self.info: OptimizerInfo | None = None
        self.failure = ""
        self.stopping = False
        self._spawned = 0
        self._cancel_reasons: dict[str, StopReason] = {}  # job id -> why it is being stopped
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settled = asyncio.Event()  # every first-generation process is ready, or one failed
        self._health = policy.HealthReport()
        self._supervisor: asyncio.Task[None] | None = None

    # Life cycle.

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.store.start()
        for _ in range(self.settings.processes):
            self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="job-supervisor")
        metrics.JOBS_OLDEST_QUEUED_SECONDS.set_function(self._oldest_queued_seconds)
        logger.info("starting %d Gatys workers (%d threads each)", len(self.processes), self.process_settings.threads)

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        return self.healthy

    @property
    def healthy(self) -> bool:
        return not self.stopping and not self.failure and self.info is not None

    @property
    def unavailable_reason(self) -> str:
        if self.stopping:
            return "the server is shutting down"
        if self.failure:
            return f"the Gatys workers cannot start: {self.failure}"
        return "the Gatys workers are still starting; retry shortly"

    @property
    def limits(self) -> JobLimits:
        return self._limits

    def optimizer_info(self) -> OptimizerInfo:
        if not self.healthy or self.info is None:
            raise ServiceUnavailable(self.unavailable_reason)
        return self.info

    def _oldest_queued_seconds(self) -> float:
        """At scrape time, on the metrics thread: the queue's head is the job that has waited longest."""
        try:
            return max(0.0, time.time() - self.queue[0].created_at)
        except IndexError:  # none waits (or the last one just left)
            return 0.0

    # The job API.

    async def submit(self, spec: JobSpec) -> JobRecord:
        policy.check_entry(stopping=self.stopping, healthy=self.healthy, unavailable_reason=self.unavailable_reason)
        if not any(w.state is ProcessState.IDLE for w in self.processes):
            policy.check_room(len(self.queue), self.settings.max_queued, waits_for=f"{len(self.processes)} workers")
        record = self.store.add(spec)
        self.queue.append(record)
        self._dispatch()
        return record.snapshot()

    async def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id).snapshot()

    def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        return self.store.watch(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record.state is JobState.QUEUED:
            self.queue.remove(record)
            self.store.update(record, state=JobState.CANCELLED, error="cancelled before it started")
            self._number_queue()
        elif record.state is JobState.RUNNING:
            self._cancel(record, StopReason.USER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.finished.wait(), policy.CANCEL_WAIT_SECONDS)
        return record.snapshot()

    # Workers.

    def _spawn(self) -> PooledProcess:
        self._spawned += 1
        worker = PooledProcess(self._spawned, self.process_settings, self.loop, self._on_message, self._on_exit)
        self.processes.append(worker)
        return worker

    def _task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, worker: PooledProcess, message: object) -> None:
        self._task(worker.send_async(message))

    def _on_message(self, worker: PooledProcess, message: object) -> None:
        if isinstance(message, Ready):
            worker.ready(message)
            worker.state = ProcessState.IDLE
            self.info = self.info or message.info
            log_ready(worker.name, message.info, self.loop.time() - worker.started)
            self._dispatch()
        elif isinstance(message, StartFailed):
            worker.start_error = message.error
        elif isinstance(message, JobProgress):
            job = worker.job
            if job is not None and job.id == message.job_id and not job.state.final:
                changes: dict[str, Any] = {"iteration": message.iteration, "stage": message.stage}
                changes["losses"] = message.losses
                if message.preview:
                    changes.update(preview=message.preview, preview_iteration=message.iteration)
                self.store.update(job, **changes)
        elif isinstance(message, JobFinished):
            job, worker.job, worker.supervision = worker.job, None, None
            worker.state = ProcessState.IDLE if worker.state is ProcessState.BUSY else worker.state
            if job is not None and job.id == message.job_id:
                self._finish(job, message)
            self._dispatch()
        self._check_settled()

    def _finish(self, job: JobRecord, message: JobFinished) -> None:
        state, error = message.state, message.error
        reason = self._cancel_reasons.pop(job.id, None)
        if state is JobState.CANCELLED:
            state, error = policy.stopped_outcome(reason or StopReason.USER, "", message.iteration, job.iterations)
        self.store.update(job, state=state, iteration=message.iteration, result=message.result, error=error)

    def _on_exit(self, worker: PooledProcess) -> None:
        # Out of the pool at once, so no job is dispatched to it while its exit code is collected.
        was, worker.state = worker.state, ProcessState.DEAD
        if worker in self.processes:
            self.processes.remove(worker)
        self._task(self._worker_exit(worker, was))

    async def _worker_exit(self, worker: PooledProcess, was: ProcessState) -> None:
        how = describe_exit(await worker.join())
        job, worker.job = worker.job, None
        supervision, worker.supervision = worker.supervision, None
        if job is not None and not job.state.final:
            reason = StopReason.SHUTDOWN if self.stopping else self._cancel_reasons.pop(job.id, None)
            if reason is None and supervision is not None:
                reason = supervision.stop_reason
            if reason is not None:
                state, error = policy.stopped_outcome(reason, worker.kill_reason, job.iteration, job.iterations)
            else:
                attempt = 1
                state = JobState.FAILED  # LOCAL_POOL_RETRIES.retries(attempt) is False: see server/jobs/policy.py
                error = policy.LOCAL_POOL_RETRIES.died_error(worker.name, how, job.iteration, job.iterations, attempt)
            self.store.update(job, state=state, error=error)
        if self.stopping or was is ProcessState.STOPPING:
            return
        if was is ProcessState.STARTING:
            self.failure = worker.start_error or worker.kill_reason or f"a worker process exited while starting ({how})"
            logger.error("Gatys worker %s could not start: %s", worker.name, self.failure)
            self._check_settled()
            return
        logger.error("Gatys worker %s died (%s); starting a replacement", worker.name, how)
        metrics.WORKER_RESTARTS.inc()
        self._spawn()

    def _dispatch(self) -> None:
        """Give queued jobs to idle workers, oldest first."""
        while self.queue and not self.stopping:
            worker = next((w for w in self.processes if w.state is ProcessState.IDLE), None)
            if worker is None:
                break
            record = self.queue.popleft()
            assert record.spec is not None
            worker.state, worker.job = ProcessState.BUSY, record
            worker.supervision = policy.Supervision(self.loop.time(), record.spec.time_budget_seconds)
            self._send(worker, RunJob(record.id, record.spec))
            self.store.update(record, state=JobState.RUNNING, worker=worker.name, attempt=1)
        self._number_queue()

    def _number_queue(self) -> None:
        for position, record in enumerate(self.queue):
            if record.queue_position != position:
                self.store.update(record, queue_position=position)

    def _cancel(self, record: JobRecord, reason: StopReason) -> None:
        worker = next((w for w in self.processes if w.job is record), None)
        self._cancel_reasons.setdefault(record.id, reason)
        if worker is not None and worker.supervision is not None and worker.supervision.stop(reason, self.loop.time()):
            self._send(worker, CancelJob(record.id))

    def _check_settled(self) -> None:
        running = (ProcessState.IDLE, ProcessState.BUSY)
        if self.failure or (self.processes and all(w.state in running for w in self.processes)):
            self._settled.set()
        self._health.report(self.healthy, self.on_health_change)

    async def _supervise(self) -> None:
        """Start-up timeouts, and the policy's supervision of each running job (budget, stops not obeyed)."""
        while True:
            await asyncio.sleep(policy.SUPERVISE_SECONDS)
            now = self.loop.time()
            timeout = self.settings.start_timeout_seconds
            for worker in list(self.processes):
                if worker.state is ProcessState.STARTING and now - worker.started > timeout:
                    worker.kill(policy.start_timeout_error(timeout))
                if worker.state is ProcessState.BUSY and worker.supervision is not None:
                    if reason := worker.supervision.kill_reason(now):
                        worker.kill(reason)

    async def stop(self, grace_seconds: float) -> None:
        self.stopping = True
        self._check_settled()
        # 1. Queued jobs will not run here.
        for record in self.queue:
            self.store.update(
                record, state=JobState.FAILED, error="the server shut down before the job started; submit it again"
            )
        self.queue.clear()
        # 2. Running jobs get the grace period to finish, then are stopped (FAILED, saying why).
        running = [w.job for w in self.processes if w.job is not None]
        if running:
            logger.info("shutdown: %d jobs running, %.0f s grace", len(running), grace_seconds)
            await self._wait_finished(running, grace_seconds)
            for record in running:
                if not record.state.final:
                    self._cancel(record, StopReason.SHUTDOWN)
            await self._wait_finished(running, 5.0)
        # 3. The workers stop (and are killed if they do not).
        for worker in self.processes:
            worker.state = ProcessState.STOPPING
            self._send(worker, Stop())
        await asyncio.gather(*(asyncio.to_thread(w.end) for w in list(self.processes)))
        await asyncio.sleep(0.1)  # the reader threads post each worker's end
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for record in self.store.records():
            if not record.state.final:
                self.store.update(
                    record, state=JobState.FAILED, error=policy.shutdown_error(record.iteration, record.iterations)
                )
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.store.stop()
        logger.info("Gatys workers stopped")

    async def _wait_finished(self, records: list[JobRecord], timeout: float) -> None:
        waits = [asyncio.ensure_future(r.finished.wait()) for r in records if not r.state.final]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for task in pending:
                task.cancel()
