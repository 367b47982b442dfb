"""A job process as its parent sees it: spawned, joined by a pipe, read, killed, ended.

The process starts with multiprocessing's *spawn* context: a fresh interpreter,
so it inherits no gRPC threads and may use CUDA. A duplex pipe joins it to its
parent, and the pipe's end-of-file says that the process has gone, however it
went. Two parents drive it: a queue worker (JobProcess: blocking calls from the
one thread that runs the job) and the API process's local pool (PooledProcess:
a reader thread hands its messages to the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable

from server.jobs import job_process
from server.jobs.model import JobProcessSettings, JobRecord, OptimizerInfo, ProcessState, Ready, StartFailed, Stop
from server.jobs.policy import Supervision, start_timeout_error

logger = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        name = signal.Signals(-code).name
        hint = ": the out-of-memory killer or an operator ended it" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class StartError(Exception):
    """The job process could not start (missing weights, no CUDA): the message says why."""


class JobProcess:
    """A spawned job process (server/jobs/job_process.py) and the parent's end of its pipe."""

    def __init__(self, settings: JobProcessSettings, name: str = "stylize-job-process") -> None:
        parent, child = SPAWN.Pipe(duplex=True)
        self.process = SPAWN.Process(target=job_process.main, args=(child, settings), name=name, daemon=True)
        self.process.start()
        child.close()  # only the job process holds its end now: its exit reaches us as end-of-file
        self.conn = parent
        self.name = f"{name} (pid {self.process.pid}, starting)"  # host:pid once ready
        self.kill_reason = ""  # why we killed it, if we did
        self.info: OptimizerInfo | None = None

    def ready(self, message: Ready) -> None:
        self.name = f"{message.host}:{message.pid}"
        self.info = message.info

    def wait_ready(self, start_timeout_s: float) -> OptimizerInfo:
        """Blocking: its Ready, or StartError saying why it did not come."""
        started = time.monotonic()
        if not self.conn.poll(start_timeout_s):
            self.kill("did not start in time")
            raise StartError(start_timeout_error(start_timeout_s))
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            raise StartError(f"the job process exited while starting ({self.exit_description()})") from None
        if isinstance(message, StartFailed):
            self.process.join(5.0)
            raise StartError(message.error)
        assert isinstance(message, Ready)
        self.ready(message)
        log_ready(self.name, message.info, time.monotonic() - started)
        return message.info

    def receive(self, timeout_s: float) -> object | None:
        """The next message, or None after the timeout; EOFError once the process has gone."""
        try:
            if not self.conn.poll(timeout_s):
                return None
            message: object = self.conn.recv()
            return message
        except OSError:
            raise EOFError from None

    def send(self, message: object) -> None:
        with contextlib.suppress(OSError):  # gone: the next receive (or the reader thread) says so
            self.conn.send(message)

    def kill(self, reason: str) -> None:
        if not self.kill_reason:
            self.kill_reason = reason
            logger.warning("killing job process %s: %s", self.name, reason)
            self.process.kill()

    def exit_description(self) -> str:
        self.process.join(10.0)
        return describe_exit(self.process.exitcode)

    def end(self) -> None:
        """Blocking: wait for it to exit after Stop, then terminate, then kill."""
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def stop(self) -> None:
        self.send(Stop())
        self.end()
        self.conn.close()


def log_ready(name: str, info: OptimizerInfo, seconds: float) -> None:
    logger.info(
        "job process %s ready (%s, %s, loss weights %s) in %.1f s",
        name,
        info.device,
        info.defaults["precision"],
        info.loss_weights,
        seconds,
    )


class PooledProcess(JobProcess):
    """A job process of the local pool: its state, its job, and its messages posted to the event loop."""

    def __init__(
        self,
        index: int,
        settings: JobProcessSettings,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[PooledProcess, object], None],
        on_exit: Callable[[PooledProcess], None],
    ) -> None:
        super().__init__(settings, name=f"stylize-worker-{index}")
        self.loop = loop
        self.on_message = on_message
        self.on_exit = on_exit
        self.state = ProcessState.STARTING
        self.started = loop.time()
        self.job: JobRecord | None = None
        self.supervision: Supervision | None = None  # of the running job
        self.start_error = ""
        self._send_lock = asyncio.Lock()
        threading.Thread(target=self._read, name=f"worker-reader-{index}", daemon=True).start()

    def _read(self) -> None:
        """Reader thread: every message to the event loop, then the end of the process."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if not self._post(self.on_message, self, message):
                return
        self._post(self.on_exit, self)

    def _post(self, callback: Callable[..., None], *args: object) -> bool:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
            return True
        except RuntimeError:  # the event loop has closed: the server is gone
            return False

    async def send_async(self, message: object) -> None:
        """In order, off the event loop (a job's images can be megabytes); a dead process's exit says the rest."""
        async with self._send_lock:
            await asyncio.to_thread(self.send, message)

    async def join(self) -> int | None:
        """Its exit code (negative: the signal), once it has gone."""
        await asyncio.to_thread(self.process.join, 10.0)
        self.conn.close()
        return self.process.exitcode
