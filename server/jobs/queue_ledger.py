"""A queue worker's reads and writes of a job's Redis hash, each through one of server/jobs/queue.py's scripts.

The Redis side of server/jobs/queue_worker.py: claiming a job (waiting while
another live worker holds it), its spec, progress with the lease renewed, the
cancel flag, the final state (retried while Redis is away), and handing the
job back to the queue. While Redis is away mid-job the job runs on and its
progress waits, tried again each second.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery.exceptions import Reject  # type: ignore[import-untyped]
from celery.worker import state as celery_state  # type: ignore[import-untyped]

from server import metrics
from server.jobs import queue
from server.jobs.model import JobSpec

logger = logging.getLogger(__name__)


class ClaimStatus(enum.StrEnum):
    CLAIMED = "claimed"
    EXHAUSTED = "exhausted"  # it has started STYLIZE_JOB_MAX_ATTEMPTS times already
    FINAL = "final"
    MISSING = "missing"
    CANCELLED = "cancelled"
    BUSY = "busy"  # another live worker holds its lease


class Lease(enum.IntEnum):
    """What a progress write (or a look at the cancel flag) says about the job."""

    GONE = -1
    NOT_OURS = 0  # ended, expired, or taken over
    OURS = 1
    CANCELLED = 2  # ours, and CancelJob asked


@dataclass
class Claim:
    status: ClaimStatus
    attempt: int = 0
    previous_state: str = ""
    previous_worker: str = ""
    previous_iteration: int = 0
    last_error: str = ""


def shutting_down() -> bool:
    """Celery's warm (SIGTERM) or cold shutdown has begun."""
    return celery_state.should_stop is not None or celery_state.should_terminate is not None


class JobLedger:
    def __init__(self, url: str, *, max_attempts: int, retention_seconds: float, visibility_timeout_s: float) -> None:
        self.url = queue.redact(url)
        self.max_attempts = max_attempts
        self.retention_seconds = retention_seconds
        self.visibility_timeout_s = visibility_timeout_s
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=10.0)
        self._claim = self.redis.register_script(queue.CLAIM)
        self._update = self.redis.register_script(queue.UPDATE)
        self._finish = self.redis.register_script(queue.FINISH)
        self._requeue = self.redis.register_script(queue.REQUEUE)
        self._retry_at = 0.0  # while Redis is away mid-job: when to try it again

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
                        self.max_attempts,
                        queue.LIVE_TTL_SECONDS,
                        queue.UPDATES_CHANNEL,
                        job_id,
                    ],
                )
            ]
            status = ClaimStatus(reply[0])
            if status is not ClaimStatus.BUSY:
                if len(reply) == 1:
                    return Claim(status)
                return Claim(status, int(reply[1]), reply[2], reply[3], int(float(reply[4])), reply[5])
            # A dead holder's lease lapses within LEASE_SECONDS; a holder that keeps it longer is alive.
            if not warned and time.monotonic() - busy_since > queue.LEASE_SECONDS + 1:
                warned = True
                metrics.WORKER_DUPLICATES.inc()
                logger.warning(
                    "job %s was delivered again while %s still runs it: waiting for that run to end. It has run "
                    "longer than STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS=%g; raise that above the longest job",
                    job_id,
                    reply[1],
                    self.visibility_timeout_s,
                )
            if shutting_down():
                raise Reject(f"job {job_id} handed back: this worker shuts down", requeue=True)
            time.sleep(0.5)

    def spec(self, job_id: str) -> JobSpec | None:
        data = self.redis.hget(queue.record_key(job_id), "spec")
        return queue.decode_spec(data) if isinstance(data, bytes) and data else None

    def update(self, job_id: str, holder: str, fields: dict[str, Any]) -> Lease | None:
        """Write progress (may be none) and renew the lease; None: Redis is away (the job runs on)."""
        args: list[Any] = [holder, int(queue.LEASE_SECONDS * 1000), queue.LIVE_TTL_SECONDS]
        args += [queue.UPDATES_CHANNEL, job_id, *(item for pair in fields.items() for item in pair)]
        if time.monotonic() < self._retry_at:
            return None
        try:
            status = Lease(int(self._update(keys=[queue.record_key(job_id), queue.lease_key(job_id)], args=args)))
        except (redis.RedisError, OSError) as exc:
            self._away(job_id, exc)
            return None
        if self._retry_at:
            logger.info("job %s: the job queue is reachable again; progress written", job_id)
            self._retry_at = 0.0
        return status

    def cancel_requested(self, job_id: str) -> Lease | None:
        if time.monotonic() < self._retry_at:
            return None
        try:
            return Lease.CANCELLED if self.redis.hget(queue.record_key(job_id), "cancel") == b"1" else Lease.OURS
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
        retention = max(1, round(self.retention_seconds))
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
