"""The real server over gRPC: ListModels, Stylize, health, reflection, and clear errors that leave it serving."""

from __future__ import annotations

import io
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from client import StylizeClient
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import RunningServer, encode, photo


def read(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_still_serving(client: StylizeClient) -> None:
    response = client.stylize(encode(photo(40, 30)), "tiny")
    assert read(response.image.data).size == (40, 30)


def test_list_models_reports_family_styles_versions_and_provider(client: StylizeClient) -> None:
    models = {m.name: m for m in client.list_models()}
    assert sorted(models) == ["adain", "tiny", "trio"]
    assert models["trio"].family == pb.MODEL_FAMILY_MULTI_STYLE and list(models["trio"].styles) == [
        "wave",
        "scream",
        "kiss",
    ]
    assert models["adain"].family == pb.MODEL_FAMILY_ARBITRARY and not models["adain"].styles
    model = models["tiny"]
    assert model.family == pb.MODEL_FAMILY_PER_STYLE
    assert list(model.styles) == ["test_style"]
    assert list(model.versions) == [1]
    assert model.provider == "CPUExecutionProvider"
    assert model.preset == "fast" and model.loss_weights == "random:0"
    # STYLIZE_FP16=auto measures fp16 variants on CUDA only.
    assert dict(model.precision) == {"model.onnx": "fp32"}
    assert dict(models["adain"].precision) == {"model.onnx": "fp32", "style_encoder.onnx": "fp32"}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_stylize_returns_an_image_of_the_input_size(client: StylizeClient, fmt: str) -> None:
    response = client.stylize(encode(photo(97, 61), fmt), "tiny")
    image = read(response.image.data)
    assert image.format == "PNG" and image.size == (97, 61)
    assert (response.width, response.height) == (97, 61)
    assert response.model == "tiny" and response.version == 1 and response.provider == "CPUExecutionProvider"
    timings = response.timings
    assert timings.inference_seconds > 0 and timings.total_seconds >= timings.inference_seconds


def test_jpeg_output_max_side_and_alpha(client: StylizeClient) -> None:
    response = client.stylize(encode(photo(200, 100)), "tiny", max_side=50, output_format="jpeg")
    image = read(response.image.data)
    assert image.format == "JPEG" and image.size == (50, 25)

    rgba = np.dstack([photo(), np.full((64, 96), 255, np.uint8)])
    rgba[:, :48, 3] = 0
    out = read(client.stylize(encode(rgba), "tiny").image.data)
    assert out.mode == "RGBA" and out.getpixel((0, 0))[3] == 0 and out.getpixel((95, 63))[3] == 255


def test_raw_pixels_in_and_out_match_png(client: StylizeClient) -> None:
    rgb = photo(97, 61)
    raw = pb.RawImage(width=97, height=61, rgb=rgb.tobytes())
    from_png = np.asarray(read(client.stylize(encode(rgb), "tiny").image.data))
    response = client.stylize(raw, "tiny", output_format="raw")
    assert response.image.WhichOneof("kind") == "raw" and (response.width, response.height) == (97, 61)
    out = response.image.raw
    assert (out.width, out.height) == (97, 61)
    assert np.array_equal(np.frombuffer(out.rgb, np.uint8).reshape(61, 97, 3), from_png)
    # Raw in, PNG out, and max_side on raw input.
    assert np.array_equal(np.asarray(read(client.stylize(raw, "tiny").image.data)), from_png)
    assert client.stylize(raw, "tiny", max_side=48, output_format="raw").image.raw.width == 48


def test_strength_zero_returns_the_content(client: StylizeClient) -> None:
    rgb = photo()
    out = np.asarray(read(client.stylize(encode(rgb), "tiny", strength=0.0).image.data))
    assert np.abs(out.astype(int) - rgb).max() <= 1


def test_preserve_color_keeps_the_content_chroma(client: StylizeClient) -> None:
    rgb = photo()
    plain = np.asarray(read(client.stylize(encode(rgb), "tiny").image.data), dtype=float)
    kept = np.asarray(read(client.stylize(encode(rgb), "tiny", preserve_color=True).image.data), dtype=float)
    # Channel differences (chroma) follow the content, not the stylised image.
    content_chroma = rgb[..., 0].astype(float) - rgb[..., 2]
    assert (
        np.abs((kept[..., 0] - kept[..., 2]) - content_chroma).mean()
        < np.abs((plain[..., 0] - plain[..., 2]) - content_chroma).mean()
    )


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"model": "no_such_model"}, grpc.StatusCode.NOT_FOUND, "loaded models are: adain, tiny, trio"),
        ({"model": "../../etc/passwd"}, grpc.StatusCode.NOT_FOUND, "no model named"),
        ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "model is empty"),
        ({"version": 7}, grpc.StatusCode.NOT_FOUND, "no version 7"),
        ({"content": b""}, grpc.StatusCode.INVALID_ARGUMENT, "content is empty"),
        ({"content": b"garbage"}, grpc.StatusCode.INVALID_ARGUMENT, "not a PNG, JPEG or WebP"),
        ({"strength": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "strength must be between 0 and 1"),
        ({"strength": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "strength"),
        ({"max_side": 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "max_side must be at most"),
        ({"jpeg_quality": 101}, grpc.StatusCode.INVALID_ARGUMENT, "jpeg_quality"),
        ({"content": encode(photo(8, 8))}, grpc.StatusCode.INVALID_ARGUMENT, "at least 16 pixels"),
    ],
)
def test_bad_requests_get_a_precise_status_and_the_server_keeps_serving(
    client: StylizeClient, kwargs: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    arguments: dict[str, object] = {"content": encode(photo()), "model": "tiny", **kwargs}
    content = arguments.pop("content")
    model = arguments.pop("model")
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(content, model, **arguments)  # type: ignore[arg-type]
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert_still_serving(client)


def test_jobs_without_a_job_service_are_unavailable(client: StylizeClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.get_job("nothing")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_and_reflection(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "stylize.v1.StyleTransfer"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in answer.list_services_response.service}
        assert {"stylize.v1.StyleTransfer", "grpc.health.v1.Health"} <= names


def test_metrics_count_requests_by_method_and_code(client: StylizeClient, server: RunningServer) -> None:
    client.stylize(encode(photo()), "tiny")
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    assert 'stylize_requests_total{code="OK",method="Stylize",protocol="grpc"}' in text
    assert 'stylize_model_provider{model="tiny",provider="CPUExecutionProvider"} 1.0' in text
    assert 'stylize_model_precision{graph="model.onnx",model="tiny",precision="fp32"} 1.0' in text
    assert 'stylize_stage_duration_seconds_count{model="tiny",stage="inference"}' in text


def test_a_request_the_family_cannot_take_is_refused_before_its_image_is_decoded(client: StylizeClient) -> None:
    style = encode(photo(32, 32, seed=5))
    for model, fields, message in (
        ("tiny", {"style_images": [style]}, "style images only go to arbitrary-style models"),
        ("trio", {"styles": {"monet": 1.0}}, "has no style 'monet'"),
        ("adain", {}, "send at least one style image"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            client.stylize(b"these bytes are no image", model, **fields)  # type: ignore[arg-type]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details(), "the family check came after decoding"
    assert_still_serving(client)


def test_the_style_encoder_has_its_own_timing(client: StylizeClient) -> None:
    fresh_style = encode(photo(48, 48, seed=11))  # not in the style cache yet
    arbitrary = client.stylize(encode(photo(40, 30)), "adain", style_images=[fresh_style]).timings
    assert arbitrary.style_seconds > 0 and arbitrary.inference_seconds > 0
    assert client.stylize(encode(photo(40, 30)), "tiny").timings.style_seconds == 0
