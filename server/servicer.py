"""The StyleTransfer gRPC servicer: converts messages to the shared service's calls and its errors to statuses.

Each method runs inside `_accounted`, which wraps `StylizeService.accounted`
(count, time, log with a request id, map exceptions through
`server.errors.status_for`) and aborts the call with the status it chose;
StylizeVideo streams inside it (server/video.py).
The HTTP API (server/http/) is the other front door to the same service.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.jobs import convert
from server.service import FAMILIES, Call, CallFailed, StylizeService, new_request_id
from server.video import VideoService
from stylize.v1 import stylize_pb2 as pb
from stylize.v1 import stylize_pb2_grpc

__all__ = ["FAMILIES", "StyleTransferServicer"]


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    metadata = dict(context.invocation_metadata() or ())
    request_id = new_request_id(str(metadata.get("x-request-id") or ""))
    context.set_trailing_metadata((("x-request-id", request_id),))
    return request_id


class StyleTransferServicer(stylize_pb2_grpc.StyleTransferServicer):
    def __init__(self, service: StylizeService) -> None:
        self.service = service
        self.video = VideoService(service.registry, service.engine, service.admission, service.executor)

    @contextlib.asynccontextmanager
    async def _accounted(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Call]:
        try:
            async with self.service.accounted(method, "grpc", _request_id(context)) as call:
                yield call
        except CallFailed as failed:
            await context.abort(failed.code, failed.message)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        async with self._accounted("ListModels", context):
            return self.service.list_models()
        raise AssertionError("unreachable: abort raises")

    async def Stylize(
        self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StylizeResponse:
        async with self._accounted("Stylize", context) as call:
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            return await self.service.stylize(request, call, deadline)
        raise AssertionError("unreachable: abort raises")

    async def SubmitOptimization(
        self, request: pb.OptimizationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async with self._accounted("SubmitOptimization", context) as call:
            return convert.job_message(await self.service.submit_job(request, call))
        raise AssertionError("unreachable: abort raises")

    async def GetJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Job:
        async with self._accounted("GetJob", context):
            return convert.job_message(await self.service.jobs.get(request.id))
        raise AssertionError("unreachable: abort raises")

    async def CancelJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Job:
        async with self._accounted("CancelJob", context):
            return convert.job_message(await self.service.jobs.cancel(request.id))
        raise AssertionError("unreachable: abort raises")

    async def WatchJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.Job]:
        try:
            async for record in self.service.watch_job(request.id, "grpc", _request_id(context)):
                yield convert.job_message(record)
        except CallFailed as failed:
            await context.abort(failed.code, failed.message)

    async def StylizeVideo(
        self, requests: AsyncIterator[pb.VideoRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.VideoFrame]:
        async with self._accounted("StylizeVideo", context) as call:
            async for frame in self.video.stream(requests, call, context.time_remaining()):
                yield frame
