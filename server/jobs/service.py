"""The job service the servicer talks to, whatever runs the jobs.

Two implementations sit behind it: LocalJobService (worker processes on this
host, server/jobs/local.py) and RedisJobService (a Redis-backed Celery queue,
workers on any host, server/jobs/distributed.py). A third, DisabledJobService,
answers every call with UNAVAILABLE and the reason. Methods raise the domain
errors of server/errors.py: QueueFull, JobNotFound, InvalidRequest, Draining,
ServiceUnavailable.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable

from server.errors import ServiceUnavailable
from server.jobs.model import JobLimits, JobRecord, JobSpec, OptimizerInfo


class JobService(abc.ABC):
    #: Called with the new health whenever it changes (set by server/main.py to drive the health service).
    on_health_change: Callable[[bool], None] | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Start what runs the jobs (spawn the workers); returns without waiting for them."""

    @abc.abstractmethod
    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the service can run jobs, or it fails to start, or the timeout; returns `healthy`."""

    @abc.abstractmethod
    async def stop(self, grace_seconds: float) -> None:
        """Take no new jobs; fail the queued ones; give running ones the grace period; stop the workers."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """Can run jobs now."""

    @property
    @abc.abstractmethod
    def unavailable_reason(self) -> str:
        """Why not, when not healthy."""

    @property
    @abc.abstractmethod
    def limits(self) -> JobLimits: ...

    @abc.abstractmethod
    def optimizer_info(self) -> OptimizerInfo:
        """What the optimiser accepts (raises ServiceUnavailable before any worker reported it)."""

    @abc.abstractmethod
    async def submit(self, spec: JobSpec) -> JobRecord: ...

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord:
        """The job now (async: the distributed service reads it from Redis)."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobRecord:
        """Stop the job: a queued one never starts, a running one stops within one iteration."""

    @abc.abstractmethod
    def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then its updates, ending with its final state."""


class DisabledJobService(JobService):
    """No job service on this server: every job call is UNAVAILABLE, saying why."""

    def __init__(self, reason: str, limits: JobLimits) -> None:
        self.reason = reason
        self._limits = limits

    async def start(self) -> None:
        pass

    async def wait_ready(self, timeout_s: float) -> bool:
        return False

    async def stop(self, grace_seconds: float) -> None:
        pass

    @property
    def healthy(self) -> bool:
        return False

    @property
    def unavailable_reason(self) -> str:
        return self.reason

    @property
    def limits(self) -> JobLimits:
        return self._limits

    def optimizer_info(self) -> OptimizerInfo:
        raise ServiceUnavailable(self.reason)

    async def submit(self, spec: JobSpec) -> JobRecord:
        raise ServiceUnavailable(self.reason)

    async def get(self, job_id: str) -> JobRecord:
        raise ServiceUnavailable(self.reason)

    async def cancel(self, job_id: str) -> JobRecord:
        raise ServiceUnavailable(self.reason)

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        raise ServiceUnavailable(self.reason)
        yield  # pragma: no cover - makes this an async generator like the others
