"""Every Prometheus metric the API process exports, declared in one place.

Names follow Prometheus practice: the `stylize_` prefix, base units, `_total`
on counters, histograms with buckets at the latencies that matter, and few,
bounded labels (method, model, code name; never a request or job id).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Milliseconds for small images on a GPU up to tens of seconds for large ones on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# 128^2 .. 4096^2 pixels.
PIXEL_BUCKETS = tuple(float(side * side) for side in (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096))

REQUESTS = Counter("stylize_requests", "gRPC calls finished, by method and status code", ["method", "code"])
REQUEST_SECONDS = Histogram(
    "stylize_request_duration_seconds",
    "Time from receiving a call to answering it",
    ["method", "model"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("stylize_requests_in_flight", "Calls being handled now", ["method"])
QUEUED = Gauge("stylize_requests_queued", "Stylize calls admitted and waiting for an inference slot")
QUEUE_WAIT_SECONDS = Histogram(
    "stylize_queue_wait_seconds", "Time a Stylize call waited for an inference slot", buckets=LATENCY_BUCKETS
)
REJECTED = Counter("stylize_requests_rejected", "Calls refused before any work, by reason", ["reason"])
STAGE_SECONDS = Histogram(
    "stylize_stage_duration_seconds",
    "Time in each stage of a Stylize call: decode, inference, encode",
    ["stage", "model"],
    buckets=LATENCY_BUCKETS,
)
IMAGE_PIXELS = Histogram("stylize_image_pixels", "Pixels of the images run through a network", buckets=PIXEL_BUCKETS)

MODEL_INFO = Gauge("stylize_model_info", "Loaded model versions (value 1)", ["model", "version", "family"])
MODEL_PROVIDER = Gauge("stylize_model_provider", "Execution provider in use per model (value 1)", ["model", "provider"])
MODEL_WARMUP_SECONDS = Gauge("stylize_model_warmup_seconds", "Warm-up time per model version", ["model", "version"])
MODEL_LOAD_FAILURES = Gauge(
    "stylize_model_load_failed", "Models in the repository that failed to load (value 1)", ["model"]
)
