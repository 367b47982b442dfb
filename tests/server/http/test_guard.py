"""The Guard middleware alone, in-process over ASGI: the open-request limit (429) and a streamed body over the limit.

The rest of the Guard (tokens, a declared length over the limit) is tested through the real server in
test_api.py and tests/server/test_auth.py; holding N requests open there would take N slow inferences.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from starlette.types import Receive, Scope, Send

from server.errors import MessageTooLarge
from server.http.guard import Guard


def test_requests_beyond_the_open_limit_are_429_until_one_ends() -> None:
    asyncio.run(open_limit())


def test_a_streamed_body_over_the_limit_raises_message_too_large() -> None:
    asyncio.run(streamed_body())


async def open_limit() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    guard = Guard(slow, max_open=2, max_body_bytes=1000, digests=[])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test") as client:
        held = [asyncio.create_task(client.get("/v1/models")) for _ in range(2)]
        while guard.open < 2:
            await asyncio.sleep(0)
        refused = await client.get("/v1/models")
        assert refused.status_code == 429 and refused.json()["code"] == "RESOURCE_EXHAUSTED"
        assert "STYLIZE_MAX_RPCS" in refused.json()["message"]
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await client.get("/v1/models")).status_code == 200


async def streamed_body() -> None:
    raised: list[BaseException] = []

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except MessageTooLarge as exc:
            raised.append(exc)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 600

    guard = Guard(reader, max_open=4, max_body_bytes=1000, digests=[])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test") as client:
        await client.post("/v1/stylize", content=chunks())
    assert raised and "limit of 1000 bytes" in str(raised[0])
