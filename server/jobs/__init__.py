"""Gatys optimisation jobs: the queue, the worker processes and the job service the API talks to."""
