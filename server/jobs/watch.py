"""WatchJob, once for both job services: the job now, then its changes at most one per interval, then its end.

Changes within an interval coalesce into the newest; the final state is never
held back (a watcher learns at once that its job ended); a preview rides on the
first message after it arrived (the newest, when several did). Each service
gives two things: `read(preview_after)`, the record now (its preview only when
newer than `preview_after`; None: always), and `wait_change(seen_version,
timeout_s)`, which returns once the record may have moved past `seen_version`
or the timeout passed (reading again tells which).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from server.jobs.model import JobRecord
from server.jobs.policy import WATCH_POLL_SECONDS

Read = Callable[[int | None], Awaitable[JobRecord]]
WaitChange = Callable[[int, float], Awaitable[None]]


async def watch_updates(read: Read, wait_change: WaitChange, interval_s: float) -> AsyncIterator[JobRecord]:
    loop = asyncio.get_running_loop()
    record = await read(None)
    sent_preview = 0
    while True:
        sent_at, version = loop.time(), record.version
        if record.preview:
            sent_preview = record.preview_iteration
        yield record
        if record.state.final:
            return
        # 1. The next change.
        while record.version == version:
            await wait_change(version, WATCH_POLL_SECONDS)
            record = await read(sent_preview)
        # 2. Coalesce what follows within the interval, unless the job ends.
        while not record.state.final and (delay := sent_at + interval_s - loop.time()) > 0:
            await wait_change(record.version, delay)
            record = await read(sent_preview)
