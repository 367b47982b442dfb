"""The distributed job service: Gatys jobs on a Redis-backed Celery queue, run by workers on any host.

    STYLIZE_QUEUE=redis://redis:6379/0 python -m server   # an API replica; run as many as you like
    STYLIZE_QUEUE=redis://redis:6379/0 make worker        # a worker; as many as you like, anywhere

An API replica keeps no job of its own: a job is a hash in Redis (server/jobs/queue.py).
SubmitOptimization writes it and sends the job id as a Celery task; GetJob reads it;
WatchJob reads it, then again whenever its id is published on the updates channel
(one subscription per replica, shared by all its watchers), so any replica serves
any job, and a replica that stops loses nothing. CancelJob cancels a queued job at
once and marks a running one, which its worker reads every iteration.

Redis is pinged every second: while it is away every job call is UNAVAILABLE,
saying so, health reports "stylize.jobs" NOT_SERVING (Stylize keeps serving), and
both come back by themselves when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server import metrics
from server.errors import Draining, InvalidRequest, JobNotFound, ServiceUnavailable
from server.jobs import policy, queue
from server.jobs.model import JobLimits, JobRecord, JobSpec, JobState, OptimizerInfo
from server.jobs.service import JobService
from server.jobs.watch import watch_updates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueClientSettings:
    """An API replica's settings of the distributed queue (from ServerConfig, built in server/main.py)."""

    url: str  # STYLIZE_QUEUE
    max_queued: int
    retention_seconds: float
    update_interval_seconds: float
    visibility_timeout_seconds: float


class RedisJobService(JobService):
    def __init__(self, settings: QueueClientSettings, limits: JobLimits) -> None:
        self.settings = settings
        self.url = queue.redact(settings.url)
        self.redis = Redis.from_url(settings.url, socket_connect_timeout=2.0, socket_timeout=5.0)
        # Sends tasks by name; the task's module (and torch) stay out.
        self.sender = queue.celery_app(settings.url, settings.visibility_timeout_seconds)
        self._limits = limits
        self._cancel = self.redis.register_script(queue.CANCEL)
        self.info: OptimizerInfo | None = None  # from the workers, through Redis; kept while Redis is away
        self.reachable = False
        self.error = ""
        self.stopping = False
        self._checked = asyncio.Event()  # the first health check is done
        self._waiters: dict[str, set[asyncio.Event]] = {}  # job id -> its watchers' wake-up events
        self._oldest_queued_at = 0.0
        self._health = policy.HealthReport()
        self._tasks: list[asyncio.Task[None]] = []

    # Life cycle.

    async def start(self) -> None:
        queue.warn_visibility(self.settings.visibility_timeout_seconds, self._limits.max_time_budget_seconds)
        metrics.JOBS_OLDEST_QUEUED_SECONDS.set_function(self._oldest_queued_seconds)
        self._tasks = [
            asyncio.create_task(self._monitor(), name="job-queue-health"),
            asyncio.create_task(self._listen(), name="job-queue-updates"),
        ]
        logger.info("Gatys jobs go to the queue at %s", self.url)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait for the first look at Redis only: workers may join (and leave) at any time."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._checked.wait(), timeout_s)
        return self.healthy

    async def stop(self, grace_seconds: float) -> None:
        """Nothing to fail: the jobs live in Redis and run on; watchers here are told to watch elsewhere."""
        self.stopping = True
        self._report_health()
        self._wake_all()
        await asyncio.sleep(0.1)  # the watchers end their streams
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
        await asyncio.to_thread(self.sender.close)
        logger.info("job queue client stopped; queued and running jobs go on")

    @property
    def healthy(self) -> bool:
        return not self.stopping and self.reachable and self.info is not None

    @property
    def unavailable_reason(self) -> str:
        if self.stopping:
            return "the server is shutting down; retry on another replica"
        if not self._checked.is_set():
            return f"connecting to the job queue at {self.url}; retry shortly"
        if not self.reachable:
            return f"the job queue at {self.url} is unreachable: {self.error}"
        return (
            f"no Gatys worker has connected to the job queue at {self.url} yet: "
            f"start one with `make worker` and STYLIZE_QUEUE={self.url}"
        )

    @property
    def limits(self) -> JobLimits:
        return self._limits

    def optimizer_info(self) -> OptimizerInfo:
        if not self.healthy or self.info is None:
            raise ServiceUnavailable(self.unavailable_reason)
        return self.info

    # The job API.

    async def submit(self, spec: JobSpec) -> JobRecord:
        policy.check_entry(stopping=self.stopping, healthy=self.healthy, unavailable_reason=self.unavailable_reason)
        record = JobRecord(id=uuid.uuid4().hex, spec=None, iterations=spec.iterations, created_at=time.time())
        key = queue.record_key(record.id)
        async with self._redis_errors():
            waiting = int(await self.redis.zcard(queue.QUEUED_KEY))
            policy.check_room(waiting, self.settings.max_queued, waits_for="a worker")
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=queue.new_record_fields(record, spec))
                pipe.expire(key, queue.LIVE_TTL_SECONDS)
                pipe.zadd(queue.QUEUED_KEY, {record.id: record.created_at})
                await pipe.execute()
        try:
            # kombu publishes with blocking sockets: off the event loop.
            await asyncio.to_thread(
                self.sender.send_task, queue.TASK_NAME, args=[record.id], task_id=record.id, queue=queue.QUEUE_NAME
            )
        except Exception as exc:  # kombu's OperationalError and the socket errors under it
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(key)
                await self.redis.zrem(queue.QUEUED_KEY, record.id)
            self._unreachable(exc)
            raise ServiceUnavailable(self.unavailable_reason) from exc
        metrics.JOBS_SUBMITTED.inc()
        logger.info("job %s queued, %d waiting before it", record.id, waiting)
        record.queue_position = waiting
        return record

    async def get(self, job_id: str) -> JobRecord:
        return await self._read(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        self._check_id(job_id)
        with self._notices(job_id) as notice:
            async with self._redis_errors():
                outcome = await self._cancel(
                    keys=[queue.record_key(job_id), queue.QUEUED_KEY],
                    args=[
                        repr(time.time()),
                        self._retention(),
                        queue.UPDATES_CHANNEL,
                        job_id,
                        "cancelled before it started",
                    ],
                )
            if outcome == b"missing":
                raise self._not_found(job_id)
            if outcome == b"cancelled":
                logger.info("job %s cancelled before it started", job_id)
            deadline = asyncio.get_running_loop().time() + policy.CANCEL_WAIT_SECONDS
            while True:
                notice.clear()
                record = await self._read(job_id)
                remaining = deadline - asyncio.get_running_loop().time()
                if outcome != b"running" or record.state.final or remaining <= 0:
                    return record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(notice.wait(), min(remaining, policy.WATCH_POLL_SECONDS))

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then its changes (server/jobs/watch.py), read from Redis when its id is published."""
        with self._notices(job_id) as notice:  # listening before the first read: no change slips between

            async def read(preview_after: int | None) -> JobRecord:
                return await self._read(job_id, preview_after=preview_after)

            async def wait_change(seen: int, timeout_s: float) -> None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(notice.wait(), timeout_s)
                notice.clear()
                if self.stopping:
                    raise Draining("this replica is shutting down; the job goes on: watch it on another replica")

            async for record in watch_updates(read, wait_change, self.settings.update_interval_seconds):
                yield record

    # Redis.

    async def _read(self, job_id: str, preview_after: int | None = None) -> JobRecord:
        """The job's record; its preview always (None), or only when newer than `preview_after`."""
        self._check_id(job_id)
        key = queue.record_key(job_id)
        extra = ["result"] if preview_after is not None else ["result", "preview"]
        async with self._redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(key, [*queue.RECORD_FIELDS, *extra])
                pipe.zrank(queue.QUEUED_KEY, job_id)
                values, position = await pipe.execute()
            fields = len(queue.RECORD_FIELDS)
            if values[0] is None:
                raise self._not_found(job_id)
            preview = values[fields + 1] if preview_after is None else b""
            record = queue.record_from_fields(job_id, values[:fields], preview=preview, result=values[fields])
            if preview_after is not None and record.preview_iteration > preview_after:
                preview = await self.redis.hget(key, "preview")
                record.preview = preview if isinstance(preview, bytes) else b""
        if record.state is JobState.QUEUED and position is not None:
            record.queue_position = int(position)
        return record

    @contextlib.asynccontextmanager
    async def _redis_errors(self) -> AsyncIterator[None]:
        """Redis failures as UNAVAILABLE, saying where the queue is and what went wrong."""
        try:
            yield
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            raise ServiceUnavailable(self.unavailable_reason) from exc

    def _unreachable(self, exc: BaseException) -> None:
        self._set_reachable(False, str(exc) or type(exc).__name__)
        self._report_health()

    def _set_reachable(self, reachable: bool, error: str) -> None:
        if reachable and not self.reachable and self._checked.is_set():
            logger.info("the job queue at %s is reachable again", self.url)
        elif not reachable and (self.reachable or not self._checked.is_set()):
            logger.error("the job queue at %s is unreachable: %s; job calls get UNAVAILABLE", self.url, error)
        self.reachable, self.error = reachable, error

    def _report_health(self) -> None:
        self._health.report(self.healthy, self.on_health_change)

    async def _monitor(self) -> None:
        """Every second: is Redis there, what do the workers accept, and the queue metrics."""
        while True:
            await self._check()
            await asyncio.sleep(queue.HEALTH_CHECK_SECONDS)

    async def _check(self) -> None:
        now = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(queue.OPTIMIZER_KEY)
                pipe.zcard(queue.QUEUED_KEY)
                pipe.zrange(queue.QUEUED_KEY, 0, 0, withscores=True)
                pipe.zcard(queue.RUNNING_KEY)
                pipe.zremrangebyscore(queue.WORKERS_KEY, 0, now - queue.WORKER_SEEN_SECONDS)
                pipe.zcard(queue.WORKERS_KEY)
                info, waiting, oldest, running, _, workers = await pipe.execute()
            if oldest and not await self.redis.exists(queue.record_key(oldest[0][0].decode())):
                await self.redis.zrem(queue.QUEUED_KEY, oldest[0][0])  # expired while queued: abandoned
        except (RedisError, OSError) as exc:
            self._set_reachable(False, str(exc) or type(exc).__name__)
        else:
            if info:
                self.info = queue.decode_info(info)
            metrics.JOBS_QUEUED.set(waiting)
            metrics.JOBS_RUNNING.set(running)
            metrics.QUEUE_WORKERS.set(workers)
            self._oldest_queued_at = float(oldest[0][1]) if oldest else 0.0
            self._set_reachable(True, "")
        self._checked.set()
        self._report_health()

    def _oldest_queued_seconds(self) -> float:
        return max(0.0, time.time() - self._oldest_queued_at) if self._oldest_queued_at else 0.0

    async def _listen(self) -> None:
        """One subscription for every watcher here: wake the watchers of each job id published."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(queue.UPDATES_CHANNEL)
                self._wake_all()  # changes while we were away went unheard: everyone re-reads
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        for event in self._waiters.get(message["data"].decode(), ()):
                            event.set()
            except (RedisError, OSError):
                await asyncio.sleep(queue.HEALTH_CHECK_SECONDS)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def _notices(self, job_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(job_id, set())
            events.discard(event)
            if not events:
                self._waiters.pop(job_id, None)

    # Helpers.

    def _retention(self) -> int:
        return max(1, round(self.settings.retention_seconds))

    @staticmethod
    def _check_id(job_id: str) -> None:
        if not job_id:
            raise InvalidRequest("id is empty: pass the id that SubmitOptimization returned")

    def _not_found(self, job_id: str) -> JobNotFound:
        return JobNotFound(
            f"no job {job_id!r}: it was never submitted, or it ended more than "
            f"{self.settings.retention_seconds:g} s ago and was dropped (STYLIZE_JOB_RETENTION_SECONDS)"
        )
