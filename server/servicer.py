"""The StyleTransfer gRPC servicer: converts messages to domain calls and domain errors to status codes.

Each method runs inside `_accounted` (through `_call` for unary methods), which
counts it, times it, logs it with a request id and maps exceptions through
`server.errors.status_for`; WatchJob and StylizeVideo (server/video.py) stream inside it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from server import metrics, validation
from server.admission import Admission
from server.codec import OutputFormat
from server.config import ServerConfig
from server.errors import Draining, status_for
from server.jobs import convert
from server.jobs.service import JobService
from server.pipeline import Engine, StylizeResult
from server.registry import ModelRegistry
from server.video import VideoService
from stylize.v1 import stylize_pb2 as pb
from stylize.v1 import stylize_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

FAMILIES = {
    "per_style": pb.MODEL_FAMILY_PER_STYLE,
    "multi_style": pb.MODEL_FAMILY_MULTI_STYLE,
    "arbitrary": pb.MODEL_FAMILY_ARBITRARY,
}


@dataclass
class Call:
    """What the metrics and the log need to know about one call."""

    method: str
    request_id: str
    model: str = ""


class StyleTransferServicer(stylize_pb2_grpc.StyleTransferServicer):
    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        admission: Admission,
        executor: ThreadPoolExecutor,
        jobs: JobService,
        engine: Engine,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.engine = engine
        self.registry = registry
        self.admission = admission
        self.executor = executor
        self.draining = False
        self.video = VideoService(registry, engine, admission, executor)

    @contextlib.asynccontextmanager
    async def _accounted(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Call]:
        """Count, time and log one call; map its exception to a status (unary and streaming alike)."""
        metadata = dict(context.invocation_metadata() or ())
        call = Call(method=method, request_id=str(metadata.get("x-request-id") or uuid.uuid4().hex[:16]))
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        metrics.IN_FLIGHT.labels(method).inc()
        try:
            if self.draining:
                raise Draining("the server is shutting down; retry on another replica")
            yield call
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            mapped = status_for(exc)
            if mapped is None:
                code = grpc.StatusCode.INTERNAL
                logger.exception("%s [%s] failed", method, call.request_id)
                message = f"internal error (request id {call.request_id}); the server log has the details"
            else:
                code, message = mapped
                logger.info("%s [%s] %s: %s", method, call.request_id, code.name, message)
            await context.abort(code, message)
            raise  # unreachable: abort raises
        finally:
            elapsed = time.perf_counter() - started
            metrics.IN_FLIGHT.labels(method).dec()
            metrics.REQUESTS.labels(method, code.name).inc()
            metrics.REQUEST_SECONDS.labels(method, call.model).observe(elapsed)
            logger.debug("%s [%s] %s in %.1f ms", method, call.request_id, code.name, elapsed * 1e3)

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], handler: Callable[[Call], Awaitable[T]]
    ) -> T:
        async with self._accounted(method, context) as call:
            return await handler(call)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        async def handle(call: Call) -> pb.ListModelsResponse:
            response = pb.ListModelsResponse()
            for model in self.registry.models():
                newest = model.newest
                response.models.append(
                    pb.ModelInfo(
                        name=model.name,
                        family=FAMILIES[model.spec.family],
                        styles=model.spec.styles,
                        versions=sorted(model.versions),
                        provider=newest.provider,
                        preset=model.spec.preset,
                        description=model.spec.description,
                        loss_weights=model.spec.loss_weights(newest.version),
                        precision=newest.precision,
                    )
                )
            for name, reason in sorted(self.registry.failures.items()):
                response.failed.append(pb.FailedModel(name=name, reason=reason))
            return response

        return await self._call("ListModels", context, handle)

    async def Stylize(
        self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StylizeResponse:
        async def handle(call: Call) -> pb.StylizeResponse:
            received = time.perf_counter()
            task = validation.stylize_task(request)
            model, version = self.registry.get(task.model, task.version)
            call.model = model.name
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            async with self.admission.slot(deadline) as waited:
                run = functools.partial(self.engine.run, task, model, version)
                result: StylizeResult = await asyncio.get_running_loop().run_in_executor(self.executor, run)
            t = result.timings
            for stage, seconds in (
                ("decode", t.decode_seconds),
                ("inference", t.inference_seconds),
                ("encode", t.encode_seconds),
            ):
                metrics.STAGE_SECONDS.labels(stage, model.name).observe(seconds)
            metrics.IMAGE_PIXELS.observe(result.pixels)
            if task.output_format is OutputFormat.RAW:
                image = pb.Image(raw=pb.RawImage(width=result.width, height=result.height, rgb=result.data))
            else:
                image = pb.Image(data=result.data)
            return pb.StylizeResponse(
                image=image,
                model=model.name,
                version=version.version,
                provider=version.provider,
                width=result.width,
                height=result.height,
                timings=pb.Timings(
                    queue_seconds=waited,
                    decode_seconds=t.decode_seconds,
                    inference_seconds=t.inference_seconds,
                    encode_seconds=t.encode_seconds,
                    total_seconds=time.perf_counter() - received,
                ),
            )

        return await self._call("Stylize", context, handle)

    # Gatys jobs: the job service runs them (server/jobs/); these only convert.
    async def SubmitOptimization(
        self, request: pb.OptimizationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def handle(call: Call) -> pb.Job:
            spec = convert.job_spec(request, self.jobs.limits, self.jobs.optimizer_info())
            record = await self.jobs.submit(spec)
            logger.info("SubmitOptimization [%s] job %s, %d iterations", call.request_id, record.id, record.iterations)
            return convert.job_message(record)

        return await self._call("SubmitOptimization", context, handle)

    async def GetJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Job:
        async def handle(call: Call) -> pb.Job:
            return convert.job_message(await self.jobs.get(request.id))

        return await self._call("GetJob", context, handle)

    async def CancelJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Job:
        async def handle(call: Call) -> pb.Job:
            return convert.job_message(await self.jobs.cancel(request.id))

        return await self._call("CancelJob", context, handle)

    async def WatchJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.Job]:
        async with self._accounted("WatchJob", context):
            async for record in self.jobs.watch(request.id):
                yield convert.job_message(record)

    async def StylizeVideo(
        self, requests: AsyncIterator[pb.VideoRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.VideoFrame]:
        async with self._accounted("StylizeVideo", context) as call:
            async for frame in self.video.stream(requests, call, context.time_remaining()):
                yield frame
