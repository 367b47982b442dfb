"""Gatys optimisation jobs: the queue, the worker processes and the job service the API talks to.

model.py        torch-free job records, spec and worker messages
convert.py      OptimizationRequest -> JobSpec, JobRecord -> Job
store.py        the API process's records, watchers, retention and job metrics
service.py      the JobService interface (and the disabled one)
local.py        the embedded pool: queue, dispatch, cancellation, budgets, replacements, shutdown
distributed.py  the Redis-backed Celery queue as the API replicas see it (STYLIZE_QUEUE)
queue.py        the queue's shared parts: Celery app, a job's Redis keys, the Lua scripts that change them
queue_worker.py a worker of the distributed queue (`make worker`): claims, drives a job process, reports
process.py      one spawned worker process as its parent sees it (the local pool's, a queue worker's)
entry.py        the worker process's entry point (torch-free name for multiprocessing)
worker.py       the worker process itself (the only module here that imports torch), and `make worker`
"""
