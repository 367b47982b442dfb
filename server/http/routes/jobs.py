"""Gatys jobs: POST /v1/jobs, GET /v1/jobs/{id}, its events (Server-Sent Events), result and preview; DELETE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from server.errors import NotReady
from server.http import forms
from server.http.calls import failure_response, request_id_of, run_call, service_of
from server.jobs import convert
from server.jobs.model import JobRecord, JobState
from server.service import Call, CallFailed
from stylize.v1 import stylize_pb2 as pb

router = APIRouter(tags=["jobs"])
T = TypeVar("T")

FORM_BODY = {
    "requestBody": {
        "required": True,
        "description": "A form: `content` file, `style` files, optional `init_image` file, and `options`, the "
        'other OptimizationRequest fields in proto3 JSON (e.g. {"iterations": 200, "previewEvery": 20}); '
        "or the whole OptimizationRequest in proto3 JSON (images as base64).",
        "content": {"multipart/form-data": {"schema": {"type": "object"}}, "application/json": {"schema": {}}},
    }
}


def job_json(record: JobRecord) -> dict[str, object]:
    """The Job message in proto3 JSON, with URLs in place of the preview and result images."""
    message = convert.job_message(record)
    message.ClearField("preview")
    message.ClearField("result")
    body = forms.to_json(message)
    if record.preview:
        body["previewUrl"] = f"/v1/jobs/{record.id}/preview?iteration={record.preview_iteration}"
    if record.state is JobState.SUCCEEDED:
        body["resultUrl"] = f"/v1/jobs/{record.id}/result"
    return body


def image(data: bytes) -> Response:
    kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return Response(data, media_type=kind, headers={"cache-control": "no-store"})


@router.post("/v1/jobs", summary="Queue a Gatys optimisation", status_code=201, openapi_extra=FORM_BODY)
async def submit(request: Request) -> Response:
    async def handle(call: Call) -> Response:
        if forms.media_type(request) == "application/json":
            message = pb.OptimizationRequest()
            forms.parse_json(await request.body(), message, "the body")
        else:
            message = forms.optimization_request(*await forms.read_form(request))
        record = await service_of(request).submit_job(message, call)
        return JSONResponse(job_json(record), status_code=201, headers={"location": f"/v1/jobs/{record.id}"})

    return await run_call(request, "SubmitOptimization", handle)


@router.get("/v1/jobs/{job_id}", summary="The job now")
async def get(job_id: str, request: Request) -> Response:
    async def handle(call: Call) -> Response:
        return JSONResponse(job_json(await service_of(request).jobs.get(job_id)))

    return await run_call(request, "GetJob", handle)


@router.delete("/v1/jobs/{job_id}", summary="Cancel the job: a queued one never starts, a running one stops")
async def cancel(job_id: str, request: Request) -> Response:
    async def handle(call: Call) -> Response:
        return JSONResponse(job_json(await service_of(request).jobs.cancel(job_id)))

    return await run_call(request, "CancelJob", handle)


@router.get("/v1/jobs/{job_id}/result", summary="The result image, once the job SUCCEEDED")
async def result(job_id: str, request: Request) -> Response:
    async def handle(call: Call) -> Response:
        record = await service_of(request).jobs.get(job_id)
        if record.state is not JobState.SUCCEEDED:
            reason = f": {record.error}" if record.error else ""
            raise NotReady(f"job {job_id} is {record.state.name}{reason}; a result exists once it has SUCCEEDED")
        return image(record.result)

    return await run_call(request, "GetJobResult", handle)


@router.get("/v1/jobs/{job_id}/preview", summary="The job's newest preview image")
async def preview(job_id: str, request: Request) -> Response:
    async def handle(call: Call) -> Response:
        record = await service_of(request).jobs.get(job_id)
        if not record.preview:
            raise NotReady(f"job {job_id} has no preview yet (ask for them with options.previewEvery)")
        return image(record.preview)

    return await run_call(request, "GetJobPreview", handle)


def event(name: str, body: object) -> str:
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic


async def with_keepalives(updates: AsyncIterator[T], seconds: float) -> AsyncIterator[T | None]:
    """`updates`, with None wherever `seconds` pass without one (a queued job sends nothing for minutes)."""
    if seconds <= 0:
        async for update in updates:
            yield update
        return
    pending: asyncio.Future[T] = asyncio.ensure_future(anext(updates))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=seconds)
            if not done:
                yield None
                continue
            try:
                update = pending.result()
            except StopAsyncIteration:
                return
            yield update
            pending = asyncio.ensure_future(anext(updates))
    finally:
        pending.cancel()  # the client went away mid-wait: stop waiting on the job


@router.get(
    "/v1/jobs/{job_id}/events",
    summary="The job's updates as Server-Sent Events (`job` events, WatchJob's messages), until it ends",
    response_class=StreamingResponse,
)
async def events(job_id: str, request: Request) -> Response:
    request_id = request_id_of(request)
    updates = service_of(request).watch_job(job_id, "http", request_id)
    try:
        first = await anext(updates)  # an unknown job is a 404, not an empty stream
    except CallFailed as failed:
        return failure_response(failed)

    async def stream() -> AsyncIterator[str]:
        yield event("job", job_json(first))
        try:
            async for record in with_keepalives(updates, request.app.state.keepalive_seconds):
                yield KEEPALIVE if record is None else event("job", job_json(record))
        except CallFailed as failed:
            yield event("error", {"code": failed.code.name, "message": failed.message})

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no", "x-request-id": request_id}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
