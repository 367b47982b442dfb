"""One worker process as its parent sees it: spawned, joined by a pipe, read, killed, ended.

The process starts with multiprocessing's *spawn* context: a fresh interpreter,
so it inherits no gRPC threads and may use CUDA. A duplex pipe joins it to its
parent, and the pipe's end-of-file says that the process has gone, however it
went. Two parents drive it: the API process's local pool (WorkerProcess: a reader
thread hands its messages to the event loop) and a distributed-queue worker
(JobProcess: blocking calls from the one thread that runs the job).
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

from server.jobs.entry import run_worker
from server.jobs.model import JobRecord, OptimizerInfo, Ready, StartFailed, Stop, WorkerConfig

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


class WorkerProcess:
    """A spawned worker, what it is doing, and the messages it sends (to `on_message`, then `on_exit`)."""

    def __init__(
        self,
        index: int,
        config: WorkerConfig,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerProcess, object], None],
        on_exit: Callable[[WorkerProcess], None],
    ) -> None:
        self.loop = loop
        self.on_message = on_message
        self.on_exit = on_exit
        parent, child = SPAWN.Pipe(duplex=True)
        self.process = SPAWN.Process(
            target=run_worker, args=(child, config), name=f"stylize-worker-{index}", daemon=True
        )
        self.process.start()
        child.close()  # only the worker holds its end now, so its exit reaches us as end-of-file
        self.conn = parent
        self.name = f"worker {index} (pid {self.process.pid}, starting)"  # host:pid once ready
        self.state = "starting"  # starting | idle | busy | stopping | dead
        self.started = loop.time()
        self.job: JobRecord | None = None
        self.job_started = 0.0
        self.cancel_sent = 0.0
        self.start_error = ""
        self.kill_reason = ""  # why we killed it, if we did
        self._send_lock = asyncio.Lock()
        threading.Thread(target=self._read, name=f"worker-reader-{index}", daemon=True).start()

    def _read(self) -> None:
        """Reader thread: every message to the event loop, then the end of the worker."""
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

    async def send(self, message: object) -> None:
        """In order, off the event loop (a job's images can be megabytes); a dead worker's exit says the rest."""
        async with self._send_lock:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.conn.send, message)

    def kill(self, reason: str) -> None:
        if self.kill_reason:
            return
        self.kill_reason = reason
        logger.warning("killing worker %s: %s", self.name, reason)
        self.process.kill()

    async def join(self) -> int | None:
        """Its exit code (negative: the signal), once it has gone."""
        await asyncio.to_thread(self.process.join, 10.0)
        self.conn.close()
        return self.process.exitcode

    def end(self) -> None:
        """Blocking: wait for it to exit after Stop, then terminate, then kill."""
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class StartError(Exception):
    """The job process could not start (missing weights, no CUDA): the message says why."""


class JobProcess:
    """The spawned GatysWorker, driven from this process's thread: send a job, read its messages."""

    def __init__(self, config: WorkerConfig, start_timeout_s: float) -> None:
        parent, child = SPAWN.Pipe(duplex=True)
        self.process = SPAWN.Process(target=run_worker, args=(child, config), name="stylize-job-process", daemon=True)
        self.process.start()
        child.close()  # only the job process holds its end now: its exit reaches us as end-of-file
        self.conn = parent
        self.kill_reason = ""
        started = time.monotonic()
        if not self.conn.poll(start_timeout_s):
            self.kill("did not start in time")
            raise StartError(
                f"the job process did not report ready within {start_timeout_s:g} s "
                "(STYLIZE_WORKER_START_TIMEOUT_SECONDS)"
            )
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            raise StartError(f"the job process exited while starting ({self.exit_description()})") from None
        if isinstance(message, StartFailed):
            self.process.join(5.0)
            raise StartError(message.error)
        assert isinstance(message, Ready)
        self.name = f"{message.host}:{message.pid}"
        self.info: OptimizerInfo = message.info
        logger.info(
            "job process %s ready (%s, %s, loss weights %s) in %.1f s",
            self.name,
            message.info.device,
            message.info.defaults["precision"],
            message.info.loss_weights,
            time.monotonic() - started,
        )

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
        try:
            self.conn.send(message)
        except OSError:  # gone: the next receive says so
            pass

    def kill(self, reason: str) -> None:
        if not self.kill_reason:
            self.kill_reason = reason
            logger.warning("killing job process %s: %s", getattr(self, "name", self.process.pid), reason)
            self.process.kill()

    def exit_description(self) -> str:
        self.process.join(10.0)
        return describe_exit(self.process.exitcode)

    def stop(self) -> None:
        self.send(Stop())
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
