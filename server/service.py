"""What both front doors call: the gRPC servicer (server/servicer.py) and the HTTP API (server/http/).

One implementation of every rule: requests arrive as the API's messages (the
HTTP door builds the same `StylizeRequest` and `OptimizationRequest` from its
query strings, forms and JSON), are validated by server/validation.py and
server/jobs/convert.py, admitted by the same `Admission`, run on the same
`Engine`, and counted by `accounted`, which maps every exception through
`server.errors.status_for` to a gRPC status code. Each door only turns that code
into its own answer (a gRPC status; an HTTP status by the standard mapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from core.codec import OutputFormat
from server import metrics, validation
from server.admission import Admission
from server.errors import Draining, status_for
from server.jobs import convert
from server.jobs.model import JobRecord
from server.jobs.service import JobService
from server.pipeline import Engine, StylizeResult, check_family
from server.registry import ModelRegistry
from stylize.v1 import stylize_pb2 as pb

logger = logging.getLogger(__name__)

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
    protocol: str  # "grpc" | "http": the metrics' `protocol` label
    model: str = ""


class CallFailed(Exception):
    """A call ended with a gRPC status other than OK; the front door answers with it."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def new_request_id(given: str | None = None) -> str:
    return given or uuid.uuid4().hex[:16]


class StylizeService:
    def __init__(
        self,
        registry: ModelRegistry,
        admission: Admission,
        executor: ThreadPoolExecutor,
        jobs: JobService,
        engine: Engine,
    ) -> None:
        self.registry = registry
        self.admission = admission
        self.executor = executor
        self.jobs = jobs
        self.engine = engine
        self.draining = False
        self.in_flight = 0  # calls inside `accounted`, both front doors

    async def drain(self, timeout_s: float) -> None:
        """Refuse new calls (UNAVAILABLE) and wait until those in flight have finished, or `timeout_s` passed.

        The ports stay open meanwhile, so health answers NOT_SERVING and a new call hears why it is refused;
        stopping the gRPC server at once would cancel them instead.
        """
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def accounted(self, method: str, protocol: str, request_id: str) -> AsyncIterator[Call]:
        """Count, time and log one call; an exception leaves as CallFailed with its status (unary and streams)."""
        call = Call(method=method, request_id=request_id, protocol=protocol)
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        metrics.IN_FLIGHT.labels(method, protocol).inc()
        self.in_flight += 1
        try:
            if self.draining:
                raise Draining("the server is shutting down; retry on another replica")
            yield call
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller went away (or its deadline passed)
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
            raise CallFailed(code, message, call.request_id) from exc
        finally:
            elapsed = time.perf_counter() - started
            self.in_flight -= 1
            metrics.IN_FLIGHT.labels(method, protocol).dec()
            metrics.REQUESTS.labels(method, code.name, protocol).inc()
            metrics.REQUEST_SECONDS.labels(method, call.model, protocol).observe(elapsed)
            logger.debug("%s %s [%s] %s in %.1f ms", protocol, method, call.request_id, code.name, elapsed * 1e3)

    def list_models(self) -> pb.ListModelsResponse:
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

    async def stylize(self, request: pb.StylizeRequest, call: Call, deadline: float | None) -> pb.StylizeResponse:
        """One image through a model; `deadline` is a time.monotonic() value (None: no deadline)."""
        received = time.perf_counter()
        task = validation.stylize_task(request)
        model, version = self.registry.get(task.model, task.version)
        call.model = model.name
        check_family(task, model)  # before a slot is taken or a byte decoded
        async with self.admission.slot(deadline) as waited:
            run = functools.partial(self.engine.run, task, model, version)
            result: StylizeResult = await asyncio.get_running_loop().run_in_executor(self.executor, run)
        t = result.timings
        stages = [("decode", t.decode_seconds), ("inference", t.inference_seconds), ("encode", t.encode_seconds)]
        if model.spec.family == "arbitrary":  # the only family with a style encoder
            stages.append(("style", t.style_seconds))
        for stage, seconds in stages:
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
                style_seconds=t.style_seconds,
                inference_seconds=t.inference_seconds,
                encode_seconds=t.encode_seconds,
                total_seconds=time.perf_counter() - received,
            ),
        )

    # Gatys jobs: the job service runs them (server/jobs/); convert.py validates and converts.
    async def submit_job(self, request: pb.OptimizationRequest, call: Call) -> JobRecord:
        spec = convert.job_spec(request, self.jobs.limits, self.jobs.optimizer_info())
        record = await self.jobs.submit(spec)
        logger.info("%s [%s] job %s, %d iterations", call.method, call.request_id, record.id, record.iterations)
        return record

    async def watch_job(self, job_id: str, protocol: str, request_id: str) -> AsyncIterator[JobRecord]:
        """The job's updates until it ends, the whole stream accounted as one WatchJob call."""
        async with self.accounted("WatchJob", protocol, request_id):
            async for record in self.jobs.watch(job_id):
                yield record
