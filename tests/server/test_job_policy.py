"""The one job policy (server/jobs/policy.py) and WatchJob's one behaviour (server/jobs/watch.py), tested once.

Both the local pool and the queue worker use these; tests/server/test_jobs.py and
test_distributed.py check them end to end through each transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from server.errors import Draining, QueueFull, ServiceUnavailable
from server.jobs import policy
from server.jobs.model import JobRecord, JobState, StopReason
from server.jobs.watch import watch_updates


def test_entry_checks_say_why_in_order() -> None:
    with pytest.raises(Draining, match="another replica"):
        policy.check_entry(stopping=True, healthy=False, unavailable_reason="starting")
    with pytest.raises(ServiceUnavailable, match="starting"):
        policy.check_entry(stopping=False, healthy=False, unavailable_reason="starting")
    policy.check_entry(stopping=False, healthy=True, unavailable_reason="")
    policy.check_room(1, 2, waits_for="a worker")
    with pytest.raises(QueueFull, match=r"2 jobs wait for a worker \(STYLIZE_MAX_JOBS_QUEUED=2\)"):
        policy.check_room(2, 2, waits_for="a worker")


def test_health_is_reported_on_change_only() -> None:
    seen: list[bool] = []
    report = policy.HealthReport()
    for healthy in (False, False, True, True, False):
        report.report(healthy, seen.append)
    assert seen == [False, True, False]


def test_supervision_sends_one_stop_and_kills_after_the_grace() -> None:
    grace = policy.KILL_AFTER_SECONDS
    watch = policy.Supervision(started=0.0, budget_s=10.0)
    assert watch.kill_reason(10.0 + grace) == ""  # within budget and grace
    assert watch.stop(StopReason.USER, 5.0) and not watch.stop(StopReason.SHUTDOWN, 6.0)
    assert watch.stop_reason is StopReason.USER  # the first reason stands
    assert watch.kill_reason(5.0 + grace) == ""
    assert "did not within" in watch.kill_reason(5.0 + grace + 0.1)

    overrun = policy.Supervision(started=0.0, budget_s=10.0)
    assert "time budget of 10 s" in overrun.kill_reason(10.0 + grace + 0.1)
    assert overrun.stop_reason is StopReason.BUDGET


def test_a_stopped_job_ends_as_its_reason_says() -> None:
    assert policy.stopped_outcome(StopReason.USER, "", 3, 9) == (JobState.CANCELLED, "cancelled at iteration 3 of 9")
    assert policy.stopped_outcome(StopReason.USER, "killed", 3, 9) == (JobState.CANCELLED, "killed")
    state, error = policy.stopped_outcome(StopReason.SHUTDOWN, "", 3, 9)
    assert state is JobState.FAILED and "shut down while the job ran" in error
    assert policy.stopped_outcome(StopReason.BUDGET, "past budget", 3, 9) == (JobState.FAILED, "past budget")


def test_a_dead_job_process_fails_the_local_job_and_the_queue_retries() -> None:
    """The one difference between the transports, as policy."""
    local = policy.LOCAL_POOL_RETRIES
    assert not local.retries(1)
    assert "not retried" in local.died_error("h:1", "killed by SIGKILL", 4, 9, attempt=1)
    queue = policy.RetryPolicy(max_attempts=2)
    assert queue.retries(1) and not queue.retries(2)
    assert "STYLIZE_JOB_MAX_ATTEMPTS" not in queue.died_error("h:1", "exit code 1", 4, 9, attempt=1)
    assert "STYLIZE_JOB_MAX_ATTEMPTS=2" in queue.died_error("h:1", "exit code 1", 4, 9, attempt=2)


class Source:
    """An in-memory job the watch reads: changed by the test, each change waking the watcher."""

    def __init__(self) -> None:
        self.record = JobRecord(id="j", spec=None, iterations=10, created_at=0.0)
        self.changed = asyncio.Event()

    def change(self, **fields: object) -> None:
        self.record = dataclasses.replace(self.record, version=self.record.version + 1, **fields)  # type: ignore[arg-type]
        self.changed.set()

    async def read(self, preview_after: int | None) -> JobRecord:
        newer = preview_after is None or self.record.preview_iteration > preview_after
        return dataclasses.replace(self.record, preview=self.record.preview if newer else b"")

    async def wait_change(self, seen: int, timeout_s: float) -> None:
        if self.record.version == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        self.changed.clear()


def test_watch_coalesces_within_the_interval_and_never_holds_back_the_final_state() -> None:
    async def scenario() -> tuple[list[JobRecord], float]:
        source = Source()
        stream = watch_updates(source.read, source.wait_change, interval_s=30.0)
        first = await anext(stream)
        source.change(state=JobState.RUNNING, iteration=1)
        second = await anext(stream)  # the first change goes at once
        loop = asyncio.get_running_loop()
        started = loop.time()
        source.change(iteration=2, preview=b"p2", preview_iteration=2)
        source.change(iteration=3)
        source.change(state=JobState.SUCCEEDED, iteration=4)  # within the 30 s interval
        rest = [record async for record in stream]
        return [first, second, *rest], loop.time() - started

    updates, waited = asyncio.run(scenario())
    assert [u.iteration for u in updates] == [0, 1, 4]  # 2 and 3 coalesced into the final state
    assert updates[-1].state is JobState.SUCCEEDED and waited < 5.0  # not held to the end of the interval
    assert updates[-1].preview == b"p2"  # the preview rides on the first message after it arrived


def test_watch_holds_a_change_within_the_interval_until_the_interval_ends() -> None:
    async def scenario() -> tuple[list[int], float]:
        source = Source()
        stream = watch_updates(source.read, source.wait_change, interval_s=0.3)
        await anext(stream)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        source.change(state=JobState.RUNNING, iteration=1)
        source.change(iteration=2)
        update = await anext(stream)
        return [update.iteration], loop.time() - sent

    iterations, waited = asyncio.run(scenario())
    assert iterations == [2] and waited >= 0.3  # both changes in one message, at the end of the interval
