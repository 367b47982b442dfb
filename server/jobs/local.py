"""The embedded job service: Gatys worker processes on this host, supervised by the API process.

Each worker is a spawned process (server/jobs/process.py) that loads the loss
network once and runs one job at a time (server/jobs/worker.py). This module is
the policy: the bounded queue, dispatch, cancellation, time budgets, start-up
timeouts, replacing dead workers, and shutdown.

A worker that dies fails the job it was running, with an error that says so,
and a replacement starts. The job is not retried: a job that killed one worker
(out of memory at a large size, a crash in native code on its input) would most
likely kill the next, costing a second worker and doubling the wait for a
failure the caller has to act on anyway. A worker that cannot start (weights
missing) is not restarted: the next would fail the same way; the service turns
unhealthy and every job call gets that reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from server import metrics
from server.config import ServerConfig
from server.errors import Draining, QueueFull, ServiceUnavailable
from server.jobs.model import (
    CancelJob,
    JobFinished,
    JobLimits,
    JobProgress,
    JobRecord,
    JobSpec,
    JobState,
    OptimizerInfo,
    Ready,
    RunJob,
    StartFailed,
    Stop,
    WorkerConfig,
)
from server.jobs.process import WorkerProcess, describe_exit
from server.jobs.service import JobService
from server.jobs.store import JobStore

logger = logging.getLogger(__name__)

CANCEL_WAIT_SECONDS = 10.0  # CancelJob answers once the job has stopped, or after this long
KILL_AFTER_SECONDS = 30.0  # a worker that ignores a cancel or overruns its budget this long is killed
SUPERVISE_SECONDS = 0.5


class LocalJobService(JobService):
    loop: asyncio.AbstractEventLoop  # set by start()

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = JobStore(config.job_retention_seconds, config.job_update_interval_seconds)
        self._limits = JobLimits(
            max_side=config.job_max_side,
            max_iterations=config.job_max_iterations,
            max_time_budget_seconds=config.job_time_budget_seconds,
            max_pixels=config.max_pixels,
        )
        self.worker_config = WorkerConfig(
            loss_weights=config.loss_weights,
            device=config.device,
            precision=config.job_precision,
            # The host's cores shared out: two workers each using every core only fight over them.
            threads=max(1, (os.cpu_count() or 1) // config.local_workers),
            max_pixels=config.max_pixels,
            log_level=config.log_level,
        )
        self.workers: list[WorkerProcess] = []
        self.queue: collections.deque[JobRecord] = collections.deque()
        self.info: OptimizerInfo | None = None
        self.failure = ""
        self.stopping = False
        self._spawned = 0
        self._cancel_reasons: dict[str, str] = {}  # job id -> "user" | "shutdown"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settled = asyncio.Event()  # every first-generation worker is ready, or one failed
        self._last_health: bool | None = None
        self._supervisor: asyncio.Task[None] | None = None

    # Life cycle.

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.store.start()
        for _ in range(self.config.local_workers):
            self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="job-supervisor")
        metrics.JOBS_OLDEST_QUEUED_SECONDS.set_function(self._oldest_queued_seconds)
        logger.info("starting %d Gatys workers (%d threads each)", len(self.workers), self.worker_config.threads)

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
        if self.stopping:
            raise Draining("the server is shutting down; submit the job to another replica")
        if not self.healthy:
            raise ServiceUnavailable(self.unavailable_reason)
        idle = any(w.state == "idle" for w in self.workers)
        if not idle and len(self.queue) >= self.config.max_jobs_queued:
            metrics.REJECTED.labels(reason="jobs_queue_full").inc()
            raise QueueFull(
                f"the job queue is full: {len(self.queue)} jobs wait for {len(self.workers)} workers "
                f"(STYLIZE_MAX_JOBS_QUEUED={self.config.max_jobs_queued}); retry later"
            )
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
            self._cancel(record, "user")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.finished.wait(), CANCEL_WAIT_SECONDS)
        return record.snapshot()

    # Workers.

    def _spawn(self) -> WorkerProcess:
        self._spawned += 1
        worker = WorkerProcess(self._spawned, self.worker_config, self.loop, self._on_message, self._on_exit)
        self.workers.append(worker)
        return worker

    def _task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, worker: WorkerProcess, message: object) -> None:
        self._task(worker.send(message))

    def _on_message(self, worker: WorkerProcess, message: object) -> None:
        if isinstance(message, Ready):
            worker.name = f"{message.host}:{message.pid}"
            worker.state = "idle"
            self.info = self.info or message.info
            logger.info(
                "worker %s ready (%s, %s, loss weights %s) in %.1f s",
                worker.name,
                message.info.device,
                message.info.defaults["precision"],
                message.info.loss_weights,
                self.loop.time() - worker.started,
            )
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
            job, worker.job, worker.cancel_sent = worker.job, None, 0.0
            worker.state = "idle" if worker.state == "busy" else worker.state
            if job is not None and job.id == message.job_id:
                self._finish(job, message)
            self._dispatch()
        self._check_settled()

    def _finish(self, job: JobRecord, message: JobFinished) -> None:
        state, error = message.state, message.error
        reason = self._cancel_reasons.pop(job.id, "")
        if state is JobState.CANCELLED:
            if reason == "shutdown":
                state, error = JobState.FAILED, self._shutdown_error(message.iteration, job.iterations)
            else:
                error = f"cancelled at iteration {message.iteration} of {job.iterations}"
        self.store.update(job, state=state, iteration=message.iteration, result=message.result, error=error)

    def _on_exit(self, worker: WorkerProcess) -> None:
        # Out of the pool at once, so no job is dispatched to it while its exit code is collected.
        was, worker.state = worker.state, "dead"
        if worker in self.workers:
            self.workers.remove(worker)
        self._task(self._worker_exit(worker, was))

    async def _worker_exit(self, worker: WorkerProcess, was: str) -> None:
        how = describe_exit(await worker.join())
        job, worker.job = worker.job, None
        if job is not None and not job.state.final:
            reason = self._cancel_reasons.pop(job.id, "")
            if self.stopping:
                self.store.update(job, state=JobState.FAILED, error=self._shutdown_error(job.iteration, job.iterations))
            elif reason == "user":
                self.store.update(job, state=JobState.CANCELLED, error=worker.kill_reason or "cancelled")
            else:
                error = worker.kill_reason or (
                    f"the worker process {worker.name} running this job died ({how}) at iteration "
                    f"{job.iteration} of {job.iterations}; the job was not retried, since a job that brings "
                    "down its worker would likely bring down the next: submit it again, perhaps smaller"
                )
                self.store.update(job, state=JobState.FAILED, error=error)
        if self.stopping or was == "stopping":
            return
        if was == "starting":
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
            worker = next((w for w in self.workers if w.state == "idle"), None)
            if worker is None:
                break
            record = self.queue.popleft()
            worker.state, worker.job, worker.job_started = "busy", record, self.loop.time()
            assert record.spec is not None
            self._send(worker, RunJob(record.id, record.spec))
            self.store.update(record, state=JobState.RUNNING, worker=worker.name, attempt=1)
        self._number_queue()

    def _number_queue(self) -> None:
        for position, record in enumerate(self.queue):
            if record.queue_position != position:
                self.store.update(record, queue_position=position)

    def _cancel(self, record: JobRecord, reason: str) -> None:
        worker = next((w for w in self.workers if w.job is record), None)
        self._cancel_reasons.setdefault(record.id, reason)
        if worker is not None and not worker.cancel_sent:
            worker.cancel_sent = self.loop.time()
            self._send(worker, CancelJob(record.id))

    def _check_settled(self) -> None:
        if self.failure or (self.workers and all(w.state in ("idle", "busy") for w in self.workers)):
            self._settled.set()
        healthy = self.healthy
        if healthy != self._last_health:
            self._last_health = healthy
            if self.on_health_change is not None:
                self.on_health_change(healthy)

    async def _supervise(self) -> None:
        """Start-up timeouts, jobs past their time budget, cancels a worker does not act on."""
        while True:
            await asyncio.sleep(SUPERVISE_SECONDS)
            now = self.loop.time()
            for worker in list(self.workers):
                timeout = self.config.worker_start_timeout_seconds
                if worker.state == "starting" and now - worker.started > timeout:
                    worker.kill(
                        f"the worker did not report ready within {timeout:g} s (STYLIZE_WORKER_START_TIMEOUT_SECONDS)",
                    )
                job = worker.job
                if worker.state != "busy" or job is None or job.spec is None:
                    continue
                budget = job.spec.time_budget_seconds
                if now - worker.job_started > budget + KILL_AFTER_SECONDS:
                    worker.kill(
                        f"the job ran past its time budget of {budget:g} s and its worker did not stop; "
                        "the worker was restarted",
                    )
                elif worker.cancel_sent and now - worker.cancel_sent > KILL_AFTER_SECONDS:
                    worker.kill(f"cancelled; the worker did not stop within {KILL_AFTER_SECONDS:g} s")

    @staticmethod
    def _shutdown_error(iteration: int, iterations: int) -> str:
        return f"the server shut down while the job ran (at iteration {iteration} of {iterations}); submit it again"

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
        running = [w.job for w in self.workers if w.job is not None]
        if running:
            logger.info("shutdown: %d jobs running, %.0f s grace", len(running), grace_seconds)
            await self._wait_finished(running, grace_seconds)
            for record in running:
                if not record.state.final:
                    self._cancel(record, "shutdown")
            await self._wait_finished(running, 5.0)
        # 3. The workers stop (and are killed if they do not).
        for worker in self.workers:
            worker.state = "stopping"
            self._send(worker, Stop())
        await asyncio.gather(*(asyncio.to_thread(w.end) for w in list(self.workers)))
        await asyncio.sleep(0.1)  # the reader threads post each worker's end
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for record in self.store.records():
            if not record.state.final:
                self.store.update(
                    record, state=JobState.FAILED, error=self._shutdown_error(record.iteration, record.iterations)
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
