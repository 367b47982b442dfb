"""The job process: spawned by the local pool or by a queue worker, it runs one Gatys job at a time.

    multiprocessing spawn target: server.jobs.job_process.main(conn, settings)

The parent pickles a reference to `main`, so this module stays free of torch:
torch and training/ load in `main`, in the job process only (server/jobs/gatys_runner.py).
Messages both ways are server/jobs/model.py's: RunJob, CancelJob and Stop in;
Ready or StartFailed, then JobProgress and one JobFinished per job out.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from server.jobs.model import CancelJob, JobProcessSettings, Ready, RunJob, StartFailed, Stop

if TYPE_CHECKING:
    from server.jobs.gatys_runner import GatysRunner

logger = logging.getLogger(__name__)


def main(conn: Connection, settings: JobProcessSettings) -> None:
    try:
        from server.jobs.gatys_runner import GatysRunner  # torch and training/ load here, in the job process
    except ImportError as exc:  # an API-only install (the `serve` extra): say what to do
        conn.send(
            StartFailed(
                f"{exc}: Gatys workers need PyTorch (pip install -e '.[torch]'), or set STYLIZE_LOCAL_WORKERS=0"
            )
        )
        raise SystemExit(1) from None
    serve(conn, settings, GatysRunner())


def serve(conn: Connection, settings: JobProcessSettings, runner: GatysRunner) -> None:
    """Initialise, report Ready (or StartFailed), then run jobs until Stop or EOF."""
    # Ctrl-C in a terminal reaches the whole process group; its parent decides when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
    )
    try:
        info = runner.initialize(settings)
    except Exception as exc:
        logger.error("the job process failed to start: %s", exc)
        conn.send(StartFailed(error=str(exc)))
        sys.exit(1)
    conn.send(Ready(host=socket.gethostname(), pid=os.getpid(), info=info))

    stopping = False
    current = ""

    def cancelled() -> bool:
        """Checked every iteration: a CancelJob for the running job, Stop, or a vanished parent."""
        nonlocal stopping
        try:
            while conn.poll():
                message = conn.recv()
                if isinstance(message, Stop):
                    stopping = True
                    return True
                if isinstance(message, CancelJob) and message.job_id == current:
                    return True
        except (EOFError, OSError):
            stopping = True
            return True
        return False

    while not stopping:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if isinstance(message, Stop):
            break
        if isinstance(message, RunJob):
            current = message.job_id
            finished = runner.execute(message, conn.send, cancelled)
            current = ""
            try:
                conn.send(finished)
            except (BrokenPipeError, OSError):
                break
        # A CancelJob between jobs is for a job that already finished: nothing to do.
    runner.finalize()
