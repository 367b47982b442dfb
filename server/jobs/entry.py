"""The function a spawned worker process starts in: a torch-free name the API process can hand to multiprocessing.

The API process pickles a reference to `run_worker`, so this module must stay
free of torch; the import below runs in the worker process only.
"""

from __future__ import annotations

from multiprocessing.connection import Connection

from server.jobs.model import StartFailed, WorkerConfig


def run_worker(conn: Connection, config: WorkerConfig) -> None:
    try:
        from server.jobs import worker  # torch and training/ load here, in the worker process
    except ImportError as exc:  # an API-only install (the `serve` extra): say what to do
        conn.send(
            StartFailed(
                f"{exc}: Gatys workers need PyTorch (pip install -e '.[torch]'), or set STYLIZE_LOCAL_WORKERS=0"
            )
        )
        raise SystemExit(1) from None
    worker.serve(conn, config)
