"""The local pool's view of every job: records, their changes, watchers, retention and the job metrics.

The local worker processes report into a JobStore; WatchJob and GetJob read
from it. (The distributed queue keeps its jobs in Redis instead, where every API
replica reads them: server/jobs/distributed.py.) It is used from the event loop
thread only, so records need no locks: a change bumps the record's version and
sets the event its watchers wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from server import metrics
from server.errors import InvalidRequest, JobNotFound
from server.jobs.model import JobRecord, JobSpec, JobState
from server.jobs.watch import watch_updates

logger = logging.getLogger(__name__)


class JobStore:
    def __init__(self, retention_seconds: float, update_interval_seconds: float) -> None:
        self.retention_seconds = retention_seconds
        self.update_interval_seconds = update_interval_seconds
        self._jobs: dict[str, JobRecord] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="job-retention")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def add(self, spec: JobSpec) -> JobRecord:
        record = JobRecord(id=uuid.uuid4().hex, spec=spec, iterations=spec.iterations, created_at=time.time())
        self._jobs[record.id] = record
        metrics.JOBS_SUBMITTED.inc()
        self._count()
        return record

    def get(self, job_id: str) -> JobRecord:
        if not job_id:
            raise InvalidRequest("id is empty: pass the id that SubmitOptimization returned")
        record = self._jobs.get(job_id)
        if record is None:
            raise JobNotFound(
                f"no job {job_id!r}: it was never submitted here, or it ended more than "
                f"{self.retention_seconds:g} s ago and was dropped (STYLIZE_JOB_RETENTION_SECONDS)"
            )
        return record

    def records(self) -> list[JobRecord]:
        return list(self._jobs.values())

    def update(self, record: JobRecord, **changes: Any) -> None:
        """Change a record and wake its watchers; a final state also records the job's metrics."""
        was = record.state
        for name, value in changes.items():
            setattr(record, name, value)
        now = time.time()
        if record.state is JobState.RUNNING and was is JobState.QUEUED:
            record.started_at = record.started_at or now
        if record.state.final and not was.final:
            record.finished_at = now
            record.spec = None
            record.queue_position = 0
            self._observe_finished(record)
        record.version += 1
        event, record.changed = record.changed, asyncio.Event()
        event.set()
        if record.state.final:
            record.finished.set()
        if record.state is not was:
            logger.info("job %s %s%s", record.id, record.state, f": {record.error}" if record.error else "")
            self._count()

    def _observe_finished(self, record: JobRecord) -> None:
        metrics.JOBS_FINISHED.labels(record.state.value).inc()
        if record.started_at:
            seconds = record.finished_at - record.started_at
            metrics.JOB_SECONDS.observe(seconds)
            if record.iteration and seconds > 0:
                metrics.JOB_ITERATIONS_PER_SECOND.observe(record.iteration / seconds)

    def _count(self) -> None:
        states = [r.state for r in self._jobs.values()]
        metrics.JOBS_QUEUED.set(states.count(JobState.QUEUED))
        metrics.JOBS_RUNNING.set(states.count(JobState.RUNNING))

    def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then its changes (server/jobs/watch.py)."""
        record = self.get(job_id)

        async def read(preview_after: int | None) -> JobRecord:
            return record.snapshot(with_preview=preview_after is None or record.preview_iteration > preview_after)

        async def wait_change(seen: int, timeout_s: float) -> None:
            if record.version == seen:  # else it has moved on already (while the watcher was sending)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(record.changed.wait(), timeout_s)

        return watch_updates(read, wait_change, self.update_interval_seconds)

    async def _sweep(self) -> None:
        """Drop finished jobs past their retention time."""
        interval = min(60.0, max(0.2, self.retention_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            cutoff = time.time() - self.retention_seconds
            expired = [r.id for r in self._jobs.values() if r.state.final and r.finished_at < cutoff]
            for job_id in expired:
                del self._jobs[job_id]
            if expired:
                logger.info("dropped %d finished jobs older than %g s", len(expired), self.retention_seconds)
