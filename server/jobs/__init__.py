"""Gatys optimisation jobs: the queue, the worker processes and the job service the API talks to.

model.py    torch-free job records, spec and worker messages
convert.py  OptimizationRequest -> JobSpec, JobRecord -> Job
store.py    the API process's records, watchers, retention and job metrics
service.py  the JobService interface (and the disabled one)
local.py    the embedded pool: queue, dispatch, cancellation, budgets, replacements, shutdown
process.py  one spawned worker process as the API process sees it
entry.py    the worker process's entry point (torch-free name for multiprocessing)
worker.py   the worker process itself (the only module here that imports torch)
"""
