"""The one job policy: what both transports do the same way, and the few things they do differently, said once.

The local pool (server/jobs/local.py) and the queue worker (server/jobs/queue_worker.py)
are two adapters over this module: neither carries its own copy of a check,
a limit, a message or a timeout.

Shared:
- entry checks (`check_entry`, `check_room`): draining, unhealthy, queue full, each with its status and reason;
- health reporting (`HealthReport`): the callback fires on a change only;
- supervision of a running job (`Supervision`): a stop (cancel, shutdown) is sent once, and a job process
  that has not stopped KILL_AFTER_SECONDS after it, or after its time budget, is killed;
- what a stopped job ends as (`stopped_outcome`), and the job process's start-up timeout (`start_timeout_error`).

Different, as policy (`RetryPolicy`, `LOCAL_POOL_RETRIES`):
- a job whose job process died: the local pool fails it (max_attempts 1): a job that killed one process (out of
  memory at a large size, a crash in native code on its input) would most likely kill the next, so retrying
  costs a second process and doubles the wait for a failure the caller must act on anyway. The queue runs it
  again, up to STYLIZE_JOB_MAX_ATTEMPTS times: there a death is as often a host lost or a node drained as the
  job's own fault, and another host may well finish it.
- shutdown: the local pool fails its running jobs (they die with the API process: `shutdown_error`); a queue
  worker hands its job back to the queue without counting the attempt (the job lives on in Redis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server import metrics
from server.errors import Draining, QueueFull, ServiceUnavailable
from server.jobs.model import JobState, StopReason

CANCEL_WAIT_SECONDS = 10.0  # CancelJob answers once the job has stopped, or after this long
KILL_AFTER_SECONDS = 30.0  # a job process that ignores a stop, or overruns its budget, this long is killed
SUPERVISE_SECONDS = 0.5  # how often the local pool looks at its job processes
POLL_SECONDS = 0.2  # how often a queue worker looks up from its job process when no message comes
WATCH_POLL_SECONDS = 2.0  # a watcher re-reads at least this often, in case a notice was lost
DRAINING = "the server is shutting down; submit the job to another replica"


def check_entry(*, stopping: bool, healthy: bool, unavailable_reason: str) -> None:
    """A job may be submitted: not while draining (another replica can take it), not while unhealthy."""
    if stopping:
        raise Draining(DRAINING)
    if not healthy:
        raise ServiceUnavailable(unavailable_reason)


def check_room(waiting: int, max_queued: int, *, waits_for: str) -> None:
    """The queue has room: at most `max_queued` jobs wait (STYLIZE_MAX_JOBS_QUEUED)."""
    if waiting >= max_queued:
        metrics.REJECTED.labels(reason="jobs_queue_full").inc()
        raise QueueFull(
            f"the job queue is full: {waiting} jobs wait for {waits_for} "
            f"(STYLIZE_MAX_JOBS_QUEUED={max_queued}); retry later, or add workers"
        )


class HealthReport:
    """Calls `on_change(healthy)` when the health it is told differs from the last it passed on."""

    def __init__(self) -> None:
        self._last: bool | None = None

    def report(self, healthy: bool, on_change: Callable[[bool], None] | None) -> None:
        if healthy != self._last and on_change is not None:
            self._last = healthy
            on_change(healthy)


def start_timeout_error(timeout_s: float) -> str:
    return f"the job process did not report ready within {timeout_s:g} s (STYLIZE_WORKER_START_TIMEOUT_SECONDS)"


@dataclass
class Supervision:
    """One running job's clock: its time budget, and a stop that must be obeyed within KILL_AFTER_SECONDS."""

    started: float  # monotonic seconds (time.monotonic or the event loop's clock)
    budget_s: float
    stop_reason: StopReason | None = None
    stop_sent: float = 0.0

    def stop(self, reason: StopReason, now: float) -> bool:
        """Record the first reason to stop; True when a CancelJob should go to the job process now."""
        self.stop_reason = self.stop_reason or reason
        if self.stop_sent:
            return False
        self.stop_sent = now
        return True

    def kill_reason(self, now: float) -> str:
        """Why the job process must be killed now, or "" while it may run on."""
        if self.stop_sent and now - self.stop_sent > KILL_AFTER_SECONDS:
            return f"asked to stop ({self.stop_reason}); the job process did not within {KILL_AFTER_SECONDS:g} s"
        if now - self.started > self.budget_s + KILL_AFTER_SECONDS:
            self.stop_reason = self.stop_reason or StopReason.BUDGET
            return f"the job ran past its time budget of {self.budget_s:g} s and its job process did not stop"
        return ""


def cancelled_error(iteration: int, iterations: int) -> str:
    return f"cancelled at iteration {iteration} of {iterations}"


def shutdown_error(iteration: int, iterations: int) -> str:
    return f"the server shut down while the job ran (at iteration {iteration} of {iterations}); submit it again"


def stopped_outcome(reason: StopReason, kill_reason: str, iteration: int, iterations: int) -> tuple[JobState, str]:
    """A job whose job process was killed after it was told to stop: cancelled by the user, or failed."""
    if reason is StopReason.USER:
        return JobState.CANCELLED, kill_reason or cancelled_error(iteration, iterations)
    if reason is StopReason.SHUTDOWN:
        return JobState.FAILED, shutdown_error(iteration, iterations)
    return JobState.FAILED, kill_reason or f"stopped ({reason}) at iteration {iteration} of {iterations}"


@dataclass(frozen=True)
class RetryPolicy:
    """What a job whose job process died becomes: run again while it has attempts left, else FAILED."""

    max_attempts: int

    def retries(self, attempt: int) -> bool:
        return attempt < self.max_attempts

    def died_error(self, process: str, how: str, iteration: int, iterations: int, attempt: int) -> str:
        error = f"the worker process {process} running this job died ({how}) at iteration {iteration} of {iterations}"
        if self.max_attempts == 1:
            return error + (
                "; the job was not retried, since a job that brings down its worker would likely bring down "
                "the next: submit it again, perhaps smaller"
            )
        if self.retries(attempt):
            return error
        return error + (
            f"; the job had started {attempt} times, as many as STYLIZE_JOB_MAX_ATTEMPTS={self.max_attempts} allows"
        )


LOCAL_POOL_RETRIES = RetryPolicy(max_attempts=1)
