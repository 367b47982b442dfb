"""Gatys optimisation jobs: the job services the API talks to, the queue worker, and the job process.

One entry module per process:
  local.py         the API process's local pool (LocalJobService); distributed.py when STYLIZE_QUEUE is set
  worker.py        `make worker`: the queue worker process (a Celery consumer; imports no torch)
  job_process.py   the job process, spawned by either (torch loads in it, through gatys_runner.py)

The rest, each one idea:
  model.py         torch-free job records, spec, states and the job process's messages
  policy.py        the one job policy: entry checks, supervision, health, what a death means; the constants
  watch.py         WatchJob's behaviour, for both services
  service.py       the JobService interface (and the disabled one)
  store.py         the local pool's records, retention and job metrics
  process.py       a job process as its parent sees it (JobProcess; the pool's PooledProcess)
  gatys_runner.py  the optimiser inside the job process (the only module here that imports torch)
  queue.py         the distributed queue's shared parts: Celery app, Redis keys, Lua scripts
  queue_worker.py  a queue worker's jobs: claim, drive the job process, report, finish
  queue_ledger.py  a queue worker's reads and writes of a job's Redis hash
  convert.py       OptimizationRequest -> JobSpec, JobRecord -> Job
"""
