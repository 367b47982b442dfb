"""The distributed queue's shared parts: the Celery app, a job's Redis keys, and the scripts that change them.

Both sides import this torch-free module: the API replicas (server/jobs/distributed.py)
and the queue workers (server/jobs/worker.py, queue_worker.py). Celery carries only the job id;
everything else about a job lives in one Redis hash, `stylize:job:<id>`:

    state, iterations, iteration, stage, losses   what GetJob and WatchJob return
    created_at, queued_at, started_at, finished_at
    worker, attempt, last_error                   host:pid of the job process; attempts so far; why the last ended
    preview, preview_iteration, result, error     bytes (preview, result) and text
    spec                                          the request's images and options, dropped when the job ends
    cancel                                        "1" once CancelJob asked; the worker reads it every iteration
    version                                       bumped on every change; watchers compare it

Beside it: `stylize:job:<id>:lease`, the running worker's claim (a short TTL it
renews, so a second delivery of the same job waits instead of running it twice),
the sorted sets `stylize:queued` and `stylize:running` (job id by time, for the
queue metrics), and one pub/sub channel on which every change publishes the job
id. Every change goes through a Lua script below, so a state moves only once
(queued -> running -> final) however many replicas and workers race for it.
"""

from __future__ import annotations

import json
import logging
import urllib.parse

from celery import Celery  # type: ignore[import-untyped]
from redis.typing import EncodableT, FieldT

from server.jobs.model import JobRecord, JobSpec, JobState, LossTerms, OptimizerInfo

logger = logging.getLogger(__name__)

QUEUE_NAME = "stylize.gatys"  # the Celery queue (a Redis list of that name)
TASK_NAME = "stylize.run_gatys_job"  # sent by name: the API never imports the task's module
PREFIX = "stylize:"
QUEUED_KEY = PREFIX + "queued"  # job id -> when it (re)entered the queue
RUNNING_KEY = PREFIX + "running"  # job id -> when its current attempt started
OPTIMIZER_KEY = PREFIX + "optimizer"  # OptimizerInfo as JSON, written by every worker
WORKERS_KEY = PREFIX + "workers"  # worker host:pid -> last heartbeat
UPDATES_CHANNEL = PREFIX + "job-updates"  # every change publishes the job id

# An unfinished job's keys outlive any sane wait; they only stop a job abandoned by every worker
# (its message lost with an unpersisted Redis) from staying in Redis for ever.
LIVE_TTL_SECONDS = 7 * 24 * 3600
LEASE_SECONDS = 6.0  # a running job's claim; its worker renews it every LEASE_RENEW_SECONDS
LEASE_RENEW_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0  # how often a queue worker says it is alive and what its optimiser accepts
WORKER_SEEN_SECONDS = 30.0  # a worker without a heartbeat this long no longer counts as connected
HEALTH_CHECK_SECONDS = 1.0  # how often an API replica looks at Redis (health, queue metrics)

# The fields GetJob and WatchJob read; preview and result are read apart, when they are wanted.
RECORD_FIELDS = (
    "state",
    "iterations",
    "created_at",
    "iteration",
    "stage",
    "losses",
    "preview_iteration",
    "error",
    "worker",
    "attempt",
    "started_at",
    "finished_at",
    "version",
)


def record_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:lease"


def redact(url: str) -> str:
    """The queue URL for messages and logs, without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def warn_visibility(visibility_timeout_s: float, time_budget_s: float) -> None:
    """Both sides say it at start: a visibility timeout shorter than the time budget delivers a job twice."""
    if visibility_timeout_s < time_budget_s:
        logger.warning(
            "STYLIZE_QUEUE_VISIBILITY_TIMEOUT_SECONDS=%g is shorter than STYLIZE_JOB_TIME_BUDGET_SECONDS=%g: a job "
            "running longer is delivered to a second worker, which waits for the first",
            visibility_timeout_s,
            time_budget_s,
        )


def celery_app(url: str, visibility_timeout_s: float) -> Celery:
    """The Celery app both sides share: the API only sends with it, `make worker` consumes with it."""
    app = Celery("stylize", broker=url, set_as_current=False)
    visibility = visibility_timeout_s
    app.conf.update(
        task_default_queue=QUEUE_NAME,
        task_serializer="json",  # the message is a job id; never pickle from a broker
        accept_content=["json"],
        task_ignore_result=True,  # results travel through the job's hash, not a result backend
        result_backend=None,
        # At-least-once: the message is acknowledged only after the job's final state is written, so a
        # worker that dies with it leaves it unacknowledged and Redis hands it out again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job per worker process and nothing held in reserve: a second job waits in Redis, where any
        # idle worker can take it, not behind a busy one.
        worker_concurrency=1,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        # "solo": the Celery process is only the consumer; the job runs in the supervised job process it
        # starts itself (server/jobs/queue_worker.py), which is how a killed job process is requeued at once.
        worker_pool="solo",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        # Acknowledging in Redis is a write to its unacked keys, not tied to the connection a message came on:
        # a job that outlives a broker reconnect still finishes and is acknowledged, so it is not cancelled.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis however long it is away
        broker_connection_timeout=2.0,
        # Submissions fail fast (UNAVAILABLE) rather than hang while Redis is away.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1},
        broker_transport_options={
            # An unacknowledged message goes back on the queue this long after it was delivered: the
            # redelivery of a job whose whole worker vanished. Longer than any job (see server/config.py).
            "visibility_timeout": visibility,
            # Look for such messages often enough for the timeout to mean what it says.
            "unacked_restore_interval": max(1, min(10, int(visibility // 4))),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2.0,
            "socket_timeout": 10.0,
        },
    )
    return app


# Specs and optimizer info: JSON and raw bytes, never pickle (anyone who can write Redis could run code).


def encode_spec(spec: JobSpec) -> bytes:
    images = [spec.content, *spec.styles, *([spec.init_image] if spec.init_image is not None else [])]
    header = {
        "options": spec.options,
        "iterations": spec.iterations,
        "output_format": spec.output_format,
        "time_budget_seconds": spec.time_budget_seconds,
        "styles": len(spec.styles),
        "init_image": spec.init_image is not None,
        "lengths": [len(image) for image in images],
    }
    return json.dumps(header).encode() + b"\n" + b"".join(images)


def decode_spec(data: bytes) -> JobSpec:
    head, _, body = data.partition(b"\n")
    header = json.loads(head)
    images, offset = [], 0
    for length in header["lengths"]:
        images.append(body[offset : offset + length])
        offset += length
    styles = header["styles"]
    return JobSpec(
        content=images[0],
        styles=tuple(images[1 : 1 + styles]),
        init_image=images[1 + styles] if header["init_image"] else None,
        # JSON has no tuples: GatysConfig's sequence settings are tuples.
        options={k: tuple(v) if isinstance(v, list) else v for k, v in header["options"].items()},
        iterations=int(header["iterations"]),
        output_format=str(header["output_format"]),
        time_budget_seconds=float(header["time_budget_seconds"]),
    )


def encode_info(info: OptimizerInfo) -> bytes:
    return json.dumps(
        {"defaults": info.defaults, "layers": info.layers, "loss_weights": info.loss_weights, "device": info.device}
    ).encode()


def decode_info(data: bytes) -> OptimizerInfo:
    raw = json.loads(data)
    return OptimizerInfo(
        defaults={k: tuple(v) if isinstance(v, list) else v for k, v in raw["defaults"].items()},
        layers={arch: tuple(names) for arch, names in raw["layers"].items()},
        loss_weights=str(raw["loss_weights"]),
        device=str(raw["device"]),
    )


def encode_losses(losses: LossTerms) -> str:
    return json.dumps([losses.content, losses.style, losses.tv, losses.total])


def new_record_fields(record: JobRecord, spec: JobSpec) -> dict[FieldT, EncodableT]:
    """The hash of a job just submitted."""
    return {
        "state": JobState.QUEUED.value,
        "iterations": record.iterations,
        "created_at": repr(record.created_at),
        "queued_at": repr(record.created_at),
        "attempt": 0,
        "version": 1,
        "spec": encode_spec(spec),
    }


def record_from_fields(
    job_id: str, values: list[bytes | None], preview: bytes | None = b"", result: bytes | None = b""
) -> JobRecord:
    """A JobRecord from HMGET of RECORD_FIELDS, with the preview and result when they were read."""
    raw = dict(zip(RECORD_FIELDS, values, strict=True))

    def text(name: str) -> str:
        value = raw.get(name)
        return value.decode() if value else ""

    def number(name: str) -> float:
        return float(text(name) or 0)

    losses = json.loads(text("losses")) if text("losses") else [0.0] * 4
    return JobRecord(
        id=job_id,
        spec=None,
        iterations=int(number("iterations")),
        created_at=number("created_at"),
        state=JobState(text("state")),
        iteration=int(number("iteration")),
        stage=int(number("stage")),
        losses=LossTerms(*losses),
        preview_iteration=int(number("preview_iteration")),
        error=text("error"),
        worker=text("worker"),
        attempt=int(number("attempt")),
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        version=int(number("version")),
        preview=preview or b"",
        result=result or b"",
    )


# The scripts. Every one checks the state it expects first, so a late or duplicate caller changes nothing.
# Each publishes the job id on UPDATES_CHANNEL when it changed the job; values come back as bytes.

_FINAL = "local function final(s) return s == 'succeeded' or s == 'failed' or s == 'cancelled' end\n"

# KEYS: record, lease, queued, running. ARGV: holder, now, lease ms, max attempts, ttl, channel, job id.
# -> {'missing'} | {'final'} | {'busy', holder} | {'cancelled'} | {'exhausted' | 'claimed', attempt, previous
#    state, previous worker, previous iteration, last error}
CLAIM = (
    _FINAL
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local state = redis.call('HGET', KEYS[1], 'state')
if final(state) then return {'final'} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy', holder} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {'cancelled'} end
local prev = redis.call('HMGET', KEYS[1], 'worker', 'iteration', 'last_error')
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local told = {tostring(attempt), state, prev[1] or '', prev[2] or '0', prev[3] or ''}
if attempt >= tonumber(ARGV[4]) then return {'exhausted', unpack(told)} end
told[1] = tostring(attempt + 1)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'attempt', attempt + 1, 'started_at', ARGV[2],
  'iteration', 0, 'stage', 0, 'losses', '', 'preview', '', 'preview_iteration', 0)
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[7])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {'claimed', unpack(told)}
"""
)

# Progress, and the lease renewed. KEYS: record, lease. ARGV: holder, lease ms, ttl, channel, job id, field,
# value, ... -> -1 record gone, 0 no longer ours (ended, or another worker holds it), 1 ours, 2 ours and cancelled.
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local lease = redis.call('GET', KEYS[2])
local mine = lease == ARGV[1] or (not lease and redis.call('HGET', KEYS[1], 'worker') == ARGV[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or not mine then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if #ARGV > 5 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 2 end
return 1
"""

# The final state. KEYS: record, lease, queued, running. ARGV: holder ('' from an API replica), now, ttl,
# channel, job id, field, value, ... -> -1 record gone, 0 already final or another worker's, 1 done.
FINISH = (
    _FINAL
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if final(redis.call('HGET', KEYS[1], 'state')) then return 0 end
local lease = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and lease and lease ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'finished_at', ARGV[2], unpack(ARGV, 6))
redis.call('HDEL', KEYS[1], 'spec', 'cancel')
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
if lease and lease == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""
)

# A running job back to the queue, to start again from iteration 0. KEYS: record, lease, queued, running.
# ARGV: holder, now, ttl, channel, job id, why, '1' to give the attempt back (a shutdown is not the job's fault).
REQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local lease = redis.call('GET', KEYS[2])
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or (lease and lease ~= ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'worker', '', 'iteration', 0, 'stage', 0, 'losses', '',
  'preview', '', 'preview_iteration', 0, 'started_at', 0, 'queued_at', ARGV[2], 'last_error', ARGV[6])
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'attempt', -1) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# CancelJob. KEYS: record, queued. ARGV: now, ttl, channel, job id, error.
# -> 'missing' | 'final' | 'cancelled' (it was queued: it never starts) | 'running' (its worker was told)
CANCEL = (
    _FINAL
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local state = redis.call('HGET', KEYS[1], 'state')
if final(state) then return 'final' end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', ARGV[5], 'finished_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'spec')
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 'running'
"""
)
