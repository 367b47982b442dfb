"""Admission control for Stylize: a fixed number of inference slots and a bounded wait for them.

A call beyond `max_concurrent + max_queue` is refused at once with QueueFull
(RESOURCE_EXHAUSTED), so memory stays bounded by the admitted calls; a call
whose deadline passes while it waits is dropped before inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from server import metrics
from server.errors import DeadlineExpired, QueueFull


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[float]:
        """Hold an inference slot; yields the seconds spent waiting for it.

        `deadline` is a time.monotonic() value after which the work is useless.
        """
        if self._slots.locked() and self._waiting >= self.max_queue:
            metrics.REJECTED.labels(reason="queue_full").inc()
            raise QueueFull(
                f"the server is busy: {self.max_concurrent} calls running and {self._waiting} waiting "
                f"(STYLIZE_MAX_QUEUE={self.max_queue}); retry with backoff"
            )
        started = time.monotonic()
        self._waiting += 1
        metrics.QUEUED.inc()
        try:
            timeout = None if deadline is None else max(0.0, deadline - started)
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            metrics.REJECTED.labels(reason="deadline").inc()
            raise DeadlineExpired("the call's deadline passed while it waited for an inference slot") from None
        except asyncio.CancelledError:
            # gRPC cancels the handler when the caller's deadline passes or the caller goes away;
            # either way the call leaves before any inference.
            expired = deadline is not None and time.monotonic() >= deadline - 0.05
            metrics.REJECTED.labels(reason="deadline" if expired else "cancelled").inc()
            raise
        finally:
            self._waiting -= 1
            metrics.QUEUED.dec()
        waited = time.monotonic() - started
        metrics.QUEUE_WAIT_SECONDS.observe(waited)
        try:
            yield waited
        finally:
            self._slots.release()
