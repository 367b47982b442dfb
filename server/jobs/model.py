"""Gatys jobs as plain data: states, the validated spec, the record the API keeps, and the job process's messages.

Torch-free and protobuf-free: the API process, the queue worker and the job
process all share these types, and everything here pickles (the distributed
queue stores them in Redis as JSON and bytes instead).

Names, one per concept:
  job process   the spawned process that runs Gatys with torch (job_process.py; GatysRunner inside it)
  JobProcess    its handle in the parent (process.py): the local pool's PooledProcess, the queue worker's
  queue worker  `make worker`: a Celery consumer that drives one job process (worker.py, queue_worker.py)
  local pool    the API process's own job processes (local.py)
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ProcessState(enum.StrEnum):
    """A job process as the local pool sees it."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    DEAD = "dead"


class StopReason(enum.StrEnum):
    """Why a job is stopped before its end (server/jobs/policy.py says what each leads to)."""

    USER = "user"  # CancelJob
    SHUTDOWN = "shutdown"  # the process that supervises the job stops
    BUDGET = "budget"  # past its time budget and the grace after it
    LOST = "lost"  # queue worker: the job is no longer this worker's (ended, expired, taken over)


@dataclass(frozen=True)
class JobLimits:
    """What one job may ask for, from the server's configuration."""

    max_side: int
    max_iterations: int
    max_time_budget_seconds: float
    max_pixels: int  # of each input image, checked before decoding


@dataclass(frozen=True)
class OptimizerInfo:
    """What the workers' optimiser accepts; a worker reports it when ready, so the API never imports training/."""

    defaults: dict[str, Any]  # training.gatys.GatysConfig's defaults, by field
    layers: dict[str, tuple[str, ...]]  # loss network -> its layer names, in order
    loss_weights: str  # the workers' weights: "keras-vgg16:<sha256 prefix>", "imagenet:<prefix>" or "random:SEED"
    device: str  # "cpu" | "cuda"


@dataclass(frozen=True)
class JobSpec:
    """A validated optimisation request: encoded images plus the optimiser's settings."""

    content: bytes
    styles: tuple[bytes, ...]
    init_image: bytes | None
    options: dict[str, Any]  # GatysConfig keyword arguments; the rest take its defaults
    iterations: int  # planned in all, across the stages
    output_format: str  # "png" | "jpeg"
    time_budget_seconds: float


@dataclass(frozen=True)
class LossTerms:
    content: float = 0.0
    style: float = 0.0
    tv: float = 0.0
    total: float = 0.0


@dataclass
class JobRecord:
    """A job as the API process knows it; only the event loop thread changes it (see JobStore)."""

    id: str
    spec: JobSpec | None  # dropped once the job ends: the images are no longer needed
    iterations: int
    created_at: float  # time.time()
    state: JobState = JobState.QUEUED
    iteration: int = 0
    stage: int = 0
    losses: LossTerms = LossTerms()
    preview: bytes = b""  # the latest preview, encoded
    preview_iteration: int = 0
    result: bytes = b""
    error: str = ""
    worker: str = ""  # host:pid
    attempt: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    queue_position: int = 0
    version: int = 0  # bumped on every change; watchers compare it
    # Set and replaced on every change, so a watcher waits on the event of the version it has seen.
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def snapshot(self, *, with_preview: bool = True) -> JobRecord:
        """A copy for a reader, without the spec (and the preview unless asked for)."""
        return dataclasses.replace(self, spec=None, preview=self.preview if with_preview else b"")


# Messages between a job process and its parent (the API process's local pool, or a queue worker).


@dataclass(frozen=True)
class JobProcessSettings:
    """What a job process needs to start: picklable, so it crosses the spawn boundary."""

    loss_weights: str
    device: str  # "auto" | "cpu" | "cuda"
    precision: str  # "fp32" | "bf16": GatysConfig.precision of every job
    threads: int  # torch intra-op threads: the host's cores shared among the workers
    max_pixels: int
    log_level: str


@dataclass(frozen=True)
class Ready:
    host: str
    pid: int
    info: OptimizerInfo


@dataclass(frozen=True)
class StartFailed:
    error: str


@dataclass(frozen=True)
class RunJob:
    job_id: str
    spec: JobSpec


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    iteration: int
    stage: int
    losses: LossTerms
    preview: bytes = b""


@dataclass(frozen=True)
class JobFinished:
    job_id: str
    state: JobState
    iteration: int
    result: bytes = b""
    error: str = ""
