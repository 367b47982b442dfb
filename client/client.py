"""A small Python client for the Stylize API.

    from client import StylizeClient
    with StylizeClient("127.0.0.1:50051") as stylize:
        print([m.name for m in stylize.list_models()])
        png = stylize.stylize(open("photo.jpg", "rb").read(), model="starry_night").image.data

Errors arrive as grpc.RpcError with the server's status code and message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stylize.v1 import stylize_pb2 as pb
from stylize.v1 import stylize_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 << 20  # the server's own limit decides; this only must not be lower
OUTPUT_FORMATS = {
    "png": pb.OUTPUT_FORMAT_PNG,
    "jpeg": pb.OUTPUT_FORMAT_JPEG,
    "jpg": pb.OUTPUT_FORMAT_JPEG,
    "raw": pb.OUTPUT_FORMAT_RAW_RGB,  # response.image.raw: width, height and RGB bytes, no decoding needed
}


class StylizeClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 120.0,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
    ) -> None:
        """`token` is sent as `authorization: Bearer <token>`; `tls_ca` (the server's CA, PEM) turns on
        TLS, and `tls_cert` with `tls_key` present a client certificate for mutual TLS."""
        self.target = target
        self.timeout_s = timeout_s
        self.metadata = tuple(metadata) + ((("authorization", f"Bearer {token}"),) if token else ())
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Calls spread over every address the target resolves to (a Kubernetes headless Service:
            # dns:///stylize-api.stylize.svc.cluster.local:50051), not all on the first one's connection.
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(tls_ca, private_key=tls_key, certificate_chain=tls_cert)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = stylize_pb2_grpc.StyleTransferStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> StylizeClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... for the whole server ('') or one service."""
        response = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s, metadata=self.metadata
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        """Block until the server answers health SERVING; raises grpc.FutureTimeoutError after timeout_s."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        for update in self.health_stub.Watch(
            health_pb2.HealthCheckRequest(), timeout=timeout_s, metadata=self.metadata
        ):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                return

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s, metadata=self.metadata).models)

    def stylize(
        self,
        content: bytes | pb.RawImage,
        model: str,
        *,
        output_format: str = "png",
        **options: Any,
    ) -> pb.StylizeResponse:
        """One image; `options` are those of `stylize_request` (styles, strength, max_side...)."""
        request = stylize_request(model, output_format=output_format, **options)
        request.content.CopyFrom(image_message(content))
        return self.stub.Stylize(request, timeout=self.timeout_s, metadata=self.metadata)

    def stylize_video(
        self,
        frames: Iterable[bytes | pb.RawImage],
        model: str,
        *,
        temporal: float | None = None,
        output_format: str = "raw",
        timeout_s: float | None = None,
        **options: Any,
    ) -> grpc.CallIterator[pb.VideoFrame]:
        """A StylizeVideo stream: one VideoFrame per frame, in order, as `frames` is read (lazily, on a gRPC
        thread). `temporal` 0..1 (None: the server's default, 0: off); the call can be cancelled
        (`.cancel()`). No deadline unless `timeout_s`: a video takes as long as it takes."""
        start = pb.VideoStart(options=stylize_request(model, output_format=output_format, **options))
        if temporal is not None:
            start.temporal = temporal

        def requests() -> Iterator[pb.VideoRequest]:
            yield pb.VideoRequest(start=start)
            for frame in frames:
                yield pb.VideoRequest(frame=image_message(frame))

        return self.stub.StylizeVideo(requests(), timeout=timeout_s, metadata=self.metadata)

    def submit_optimization(self, request: pb.OptimizationRequest) -> pb.Job:
        return self.stub.SubmitOptimization(request, timeout=self.timeout_s, metadata=self.metadata)

    def watch_job(self, job_id: str, timeout_s: float | None = None) -> grpc.CallIterator[pb.Job]:
        """The job's updates; the returned call can be cancelled (`.cancel()`)."""
        return self.stub.WatchJob(pb.JobRef(id=job_id), timeout=timeout_s, metadata=self.metadata)

    def get_job(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.JobRef(id=job_id), timeout=self.timeout_s, metadata=self.metadata)

    def cancel_job(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.JobRef(id=job_id), timeout=self.timeout_s, metadata=self.metadata)


def image_message(content: bytes | pb.RawImage) -> pb.Image:
    return pb.Image(raw=content) if isinstance(content, pb.RawImage) else pb.Image(data=content)


def stylize_request(
    model: str,
    *,
    styles: Mapping[str, float] | None = None,
    style_images: Sequence[bytes] = (),
    style_image_weights: Sequence[float] = (),
    strength: float | None = None,
    preserve_color: bool = False,
    max_side: int = 0,
    version: int = 0,
    output_format: str = "png",
    jpeg_quality: int = 0,
) -> pb.StylizeRequest:
    """The options of a Stylize call (or of a StylizeVideo stream), content not set."""
    request = pb.StylizeRequest(
        model=model,
        styles=[pb.StyleWeight(style=k, weight=v) for k, v in (styles or {}).items()],
        style_images=[pb.Image(data=data) for data in style_images],
        style_image_weights=list(style_image_weights),
        preserve_color=preserve_color,
        max_side=max_side,
        version=version,
        output_format=OUTPUT_FORMATS[output_format.lower()],
        jpeg_quality=jpeg_quality,
    )
    if strength is not None:
        request.strength = strength
    return request
