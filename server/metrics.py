"""Every Prometheus metric the API process exports, declared in one place.

Names follow Prometheus practice: the `stylize_` prefix, base units, `_total`
on counters, histograms with buckets at the latencies that matter, and few,
bounded labels (method, model, code name; never a request or job id).

Every labelled counter whose label values are known exists at 0 from the first scrape
(Prometheus' instrumentation practice, "avoid missing metrics"; go-grpc-prometheus does
the same for every method and code): `rate()` then sees the first event instead of a
series appearing at 1, and a ratio alert has its denominator before anything failed.
Fixed values are created here; the API's methods at start-up (`start_at_zero`) and each
model as it loads (server/main.py's record_models).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from server.gpu import GpuMemoryCollector

# Milliseconds for small images on a GPU up to tens of seconds for large ones on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# 128^2 .. 4096^2 pixels.
PIXEL_BUCKETS = tuple(float(side * side) for side in (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096))

# `protocol` is the front door, grpc or http (server/http/); `code` is the gRPC status code name for both.
REQUESTS = Counter(
    "stylize_requests", "Calls finished, by method, status code and protocol", ["method", "code", "protocol"]
)
REQUEST_SECONDS = Histogram(
    "stylize_request_duration_seconds",
    "Time from receiving a call to answering it",
    ["method", "model", "protocol"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("stylize_requests_in_flight", "Calls being handled now", ["method", "protocol"])
QUEUED = Gauge("stylize_requests_queued", "Stylize calls admitted and waiting for an inference slot")
QUEUE_WAIT_SECONDS = Histogram(
    "stylize_queue_wait_seconds", "Time a Stylize call waited for an inference slot", buckets=LATENCY_BUCKETS
)
REJECTED = Counter("stylize_requests_rejected", "Calls refused before any work, by reason", ["reason"])
# server/admission.py (queue_full, deadline, cancelled), server/jobs/ (jobs_queue_full), server/auth.py via main.py.
REJECTION_REASONS = (
    "queue_full",
    "deadline",
    "cancelled",
    "jobs_queue_full",
    "auth_missing",
    "auth_invalid",
    "too_many_requests",  # the HTTP port's open-request limit (server/http/guard.py)
    "too_large",  # an HTTP body over the message limit
)
PROTOCOLS = ("grpc", "http")
STATUS_CODES = tuple(code.name for code in grpc.StatusCode)
STAGE_SECONDS = Histogram(
    "stylize_stage_duration_seconds",
    "Time in each stage of a Stylize call: decode, style (the arbitrary family's style encoder), inference, encode",
    ["stage", "model"],
    buckets=LATENCY_BUCKETS,
)
IMAGE_PIXELS = Histogram("stylize_image_pixels", "Pixels of the images run through a network", buckets=PIXEL_BUCKETS)

MODEL_INFO = Gauge("stylize_model_info", "Loaded model versions (value 1)", ["model", "version", "family"])
MODEL_PROVIDER = Gauge("stylize_model_provider", "Execution provider in use per model (value 1)", ["model", "provider"])
MODEL_PRECISION = Gauge(
    "stylize_model_precision",
    "Precision of each graph served per model, fp32, fp16 or int8 (value 1)",
    ["model", "graph", "precision"],
)
MODEL_WARMUP_SECONDS = Gauge("stylize_model_warmup_seconds", "Warm-up time per model version", ["model", "version"])
MODEL_LOAD_FAILURES = Gauge(
    "stylize_model_load_failed", "Models in the repository that failed to load (value 1)", ["model"]
)

# Gatys jobs, recorded by the API process from the workers' updates (no multiprocess mode needed).
# Job durations: seconds for a tiny image on a GPU up to the default 30-minute time budget.
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0)
JOBS_SUBMITTED = Counter("stylize_jobs_submitted", "Gatys jobs accepted")
JOBS_FINISHED = Counter("stylize_jobs_finished", "Gatys jobs ended, by final state", ["state"])
JOB_FINAL_STATES = ("succeeded", "failed", "cancelled")  # server/jobs/model.py's JobState.final
JOBS_QUEUED = Gauge("stylize_jobs_queued", "Gatys jobs waiting for a worker")
JOBS_RUNNING = Gauge("stylize_jobs_running", "Gatys jobs running on a worker")
JOB_SECONDS = Histogram(
    "stylize_job_duration_seconds", "Running time of Gatys jobs, start to final state", buckets=JOB_BUCKETS
)
# A histogram (one observation per job that ran) rather than a gauge: it aggregates across replicas and
# shows the spread between small and large jobs; rate(_sum)/rate(_count) is the mean.
JOB_ITERATIONS_PER_SECOND = Histogram(
    "stylize_job_iterations_per_second",
    "Optimisation speed of each finished Gatys job",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0),
)
WORKER_RESTARTS = Counter("stylize_worker_restarts", "Gatys worker processes replaced after dying")

# The serving engine.
STYLE_CACHE = Counter(
    "stylize_style_cache_requests", "Arbitrary-style statistics looked up in the cache, by result", ["result"]
)
STYLE_CACHE_RESULTS = ("hit", "miss")
TILED = Counter("stylize_tiled_requests", "Stylize calls beyond the pixel budget, run tiled", ["model"])
BATCH_SIZE = Histogram(
    "stylize_batch_size", "Images per inference (dynamic batching joins same-size calls)", buckets=(1, 2, 4, 8, 16)
)

# StylizeVideo streams (each frame also passes admission, so QUEUED and REJECTED count frames too).
VIDEO_STREAMS = Gauge("stylize_video_streams_open", "StylizeVideo streams open now")
VIDEO_FRAMES = Counter("stylize_video_frames", "Video frames stylised and sent back", ["model"])
VIDEO_FRAME_SECONDS = Histogram(
    "stylize_video_frame_duration_seconds",
    "Time from receiving a video frame to sending its stylised frame, queue and temporal blending included",
    ["model"],
    buckets=LATENCY_BUCKETS,
)

# Hardware.
CUDA_DEVICES = Gauge("stylize_cuda_devices", "CUDA devices the driver reports (0 without a GPU)")
REGISTRY.register(GpuMemoryCollector())

# The job queue, for autoscaling and alerts. Both job services set these; with the distributed queue every
# API replica reports the same global values (read from Redis every second): aggregate them with max().
JOBS_OLDEST_QUEUED_SECONDS = Gauge(
    "stylize_jobs_oldest_queued_seconds", "Age of the oldest Gatys job waiting for a worker (0: none waits)"
)
QUEUE_WORKERS = Gauge(
    "stylize_job_queue_workers", "Gatys workers with a heartbeat on the distributed queue in the last 30 s"
)

# A queue worker's own /metrics (`make worker`, STYLIZE_WORKER_METRICS_PORT), in a registry of its own: a
# worker on another host has no API process to report through, and no API replica owns a job, so each job is
# counted once, by the worker that ended it. The job metrics keep the API's names, so dashboards and alerts
# read the same series whichever job service runs (the scrape job, stylize-api or stylize-worker, tells apart).
WORKER_REGISTRY = CollectorRegistry()
WORKER_JOBS_FINISHED = Counter(
    "stylize_jobs_finished", "Gatys jobs ended by this worker, by final state", ["state"], registry=WORKER_REGISTRY
)
WORKER_JOB_SECONDS = Histogram(
    "stylize_job_duration_seconds",
    "Running time of this worker's attempt at each Gatys job, start to final state",
    buckets=JOB_BUCKETS,
    registry=WORKER_REGISTRY,
)
WORKER_JOB_ITERATIONS_PER_SECOND = Histogram(
    "stylize_job_iterations_per_second",
    "Optimisation speed of each Gatys job this worker finished",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0),
    registry=WORKER_REGISTRY,
)
WORKER_BUSY = Gauge("stylize_worker_busy", "1 while this worker runs a job, else 0", registry=WORKER_REGISTRY)
WORKER_JOB_PROCESS_RESTARTS = Counter(
    "stylize_worker_restarts", "Job processes of this worker replaced after dying", registry=WORKER_REGISTRY
)
WORKER_REQUEUED = Counter(
    "stylize_worker_jobs_requeued",
    "Jobs this worker handed back to the queue: worker_died (its job process died), shutdown (SIGTERM)",
    ["reason"],
    registry=WORKER_REGISTRY,
)
REQUEUE_REASONS = ("worker_died", "shutdown")
WORKER_DUPLICATES = Counter(
    "stylize_worker_duplicate_deliveries",
    "Deliveries of a job another worker still ran: a visibility timeout shorter than the job",
    registry=WORKER_REGISTRY,
)
WORKER_REGISTRY.register(GpuMemoryCollector())


def _at_zero(counter: Counter, values: Iterable[str]) -> None:
    for value in values:
        counter.labels(value)


_at_zero(REJECTED, REJECTION_REASONS)
_at_zero(JOBS_FINISHED, JOB_FINAL_STATES)
_at_zero(STYLE_CACHE, STYLE_CACHE_RESULTS)
_at_zero(WORKER_JOBS_FINISHED, JOB_FINAL_STATES)
_at_zero(WORKER_REQUEUED, REQUEUE_REASONS)


def start_at_zero(methods: Iterable[str]) -> None:
    """Every status code of every method on both front doors at 0, before the first call (`serve()`, once)."""
    for method in methods:
        for protocol in PROTOCOLS:
            for code in STATUS_CODES:
                REQUESTS.labels(method, code, protocol)
