"""`make worker`: a worker of the distributed queue, in the foreground: the queue worker process's entry.

    STYLIZE_QUEUE=redis://redis:6379/0 make worker   # keras-vgg16 loss weights by default (make weights)
    python -m server.jobs.worker --help   # its settings only (server/config.py, WorkerConfig)

A Celery consumer that takes Gatys jobs from Redis one at a time, on any host,
and runs each in its job process (server/jobs/queue_worker.py says how). This
process never imports torch: only the job process it spawns does
(tests/test_import_boundary.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from server.config import WorkerConfig, load_worker_config

logger = logging.getLogger(__name__)


def run(config: WorkerConfig) -> None:
    """Start the job process, then consume the queue until SIGTERM (or SIGINT)."""
    # Celery, Redis and prometheus-client: the `queue` extra.
    from prometheus_client import start_http_server

    from server import metrics
    from server.jobs import queue
    from server.jobs.process import StartError
    from server.jobs.queue_ledger import JobLedger
    from server.jobs.queue_worker import QueueWorker

    ledger = JobLedger(
        config.queue,
        max_attempts=config.job_max_attempts,
        retention_seconds=config.job_retention_seconds,
        visibility_timeout_s=config.queue_visibility_timeout_seconds,
    )
    worker = QueueWorker(
        ledger,
        config.job_process(threads=config.worker_threads or os.cpu_count() or 1),
        start_timeout_s=config.worker_start_timeout_seconds,
        update_s=config.job_update_interval_seconds,
    )
    logger.info("queue worker %s: jobs from %s", worker.name, ledger.url)
    queue.warn_visibility(config.queue_visibility_timeout_seconds, config.job_time_budget_seconds)
    try:
        worker.job_process()  # before taking any job: a worker that cannot run one takes none
    except StartError as exc:
        raise SystemExit(f"stylize worker: the job process cannot start: {exc}") from None
    if config.worker_metrics_port:
        start_http_server(config.worker_metrics_port, addr=config.metrics_host, registry=metrics.WORKER_REGISTRY)
        logger.info("metrics on http://%s:%d/metrics", config.metrics_host, config.worker_metrics_port)
    threading.Thread(target=worker.heartbeat, name="queue-heartbeat", daemon=True).start()

    app = queue.celery_app(config.queue, config.queue_visibility_timeout_seconds)

    def run_gatys_job(job_id: str) -> None:
        worker.run_job(job_id)

    app.task(name=queue.TASK_NAME)(run_gatys_job)
    celery_worker = app.Worker(
        hostname=f"stylize@{worker.name}",
        loglevel=config.log_level,
        quiet=True,
        without_mingle=True,  # no start-up chatter between workers: jobs need none of it
        without_gossip=True,
        without_heartbeat=True,
    )
    try:
        celery_worker.start()
    finally:
        worker.close()
        logger.info("queue worker %s stopped", worker.name)
    raise SystemExit(celery_worker.exitcode or 0)


def main() -> None:
    config = load_worker_config()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
    )
    if not config.queue:
        sys.exit(
            "stylize worker: set STYLIZE_QUEUE=redis://host:port/db, the queue the API replicas submit to. "
            "Without a queue the API process runs its own workers: STYLIZE_LOCAL_WORKERS=N python -m server"
        )
    run(config)


if __name__ == "__main__":
    main()
