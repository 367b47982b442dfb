"""GET /v1/models, POST /v1/models/{model}:stylize (the image in, the image out), POST /v1/stylize (proto3 JSON)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from server.errors import InvalidRequest
from server.http import forms
from server.http.calls import deadline_of, run_call, service_of, unless_client_leaves
from server.service import Call
from stylize.v1 import stylize_pb2 as pb

router = APIRouter(tags=["models"])

IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The photo (PNG, JPEG or WebP); or a form with a `content` file, `style` files (arbitrary "
        "style) and `style_weight` fields. A form's text fields may carry the query's options too.",
        "content": {
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in forms.IMAGE_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["content"],
                    "properties": {
                        "content": {"type": "string", "format": "binary"},
                        "style": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "style_weight": {"type": "array", "items": {"type": "number"}},
                    },
                }
            },
        },
    },
    "parameters": [
        {"name": "strength", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 1}},
        {"name": "preserve_color", "in": "query", "schema": {"type": "boolean"}},
        {"name": "max_side", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {
            "name": "style",
            "in": "query",
            "description": "NAME:WEIGHT, repeated: a multi-style model's blend",
            "schema": {"type": "array", "items": {"type": "string"}},
            "explode": True,
        },
        {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["png", "jpeg"]}},
        {"name": "quality", "in": "query", "description": "JPEG quality 1..100", "schema": {"type": "integer"}},
        {"name": "version", "in": "query", "description": "0: the newest", "schema": {"type": "integer"}},
    ],
    "responses": {"200": {"description": "The stylised image", "content": {"image/png": {}, "image/jpeg": {}}}},
}
MEDIA_TYPES = {pb.OUTPUT_FORMAT_JPEG: "image/jpeg"}  # everything else: PNG


def server_timing(timings: pb.Timings) -> str:
    stages = ("queue", "decode", "inference", "encode", "total")
    return ", ".join(f"{stage};dur={getattr(timings, stage + '_seconds') * 1e3:.1f}" for stage in stages)


@router.get("/v1/models", summary="The served models (ListModelsResponse in proto3 JSON)")
async def list_models(request: Request) -> Response:
    async def handle(call: Call) -> Response:
        return JSONResponse(forms.to_json(service_of(request).list_models()))

    return await run_call(request, "ListModels", handle)


@router.post("/v1/models/{model}:stylize", summary="Stylise the photo in the body", openapi_extra=IMAGE_BODY)
async def stylize_image(model: str, request: Request) -> Response:
    async def handle(call: Call) -> Response:
        kind = forms.media_type(request)
        query = list(request.query_params.multi_items())
        styles: list[bytes] = []
        if kind == "multipart/form-data":
            fields, files = await forms.read_form(request)
            forms.unexpected_files(files, ("content", "style"))
            content = forms.one_file(files, "content") or b""
            styles = files.get("style", [])
            options = forms.Options(query + fields, forms.STYLIZE_OPTIONS)
        elif kind in forms.IMAGE_TYPES:
            content = await request.body()
            options = forms.Options(query, forms.STYLIZE_OPTIONS)
        else:
            raise InvalidRequest(
                f"Content-Type {kind or 'none'} is not an image: send image/png, image/jpeg or image/webp, "
                "or multipart/form-data with a `content` file"
            )
        message = forms.stylize_request(model, options, content, styles)
        deadline = deadline_of(request)
        answer = await unless_client_leaves(request, service_of(request).stylize(message, call, deadline))
        return Response(
            answer.image.data,
            media_type=MEDIA_TYPES.get(message.output_format, "image/png"),
            headers={
                "server-timing": server_timing(answer.timings),
                "x-stylize-model": f"{answer.model}/{answer.version}",
                "x-stylize-provider": answer.provider,
            },
        )

    return await run_call(request, "Stylize", handle)


@router.post(
    "/v1/stylize",
    summary="A StylizeRequest in proto3 JSON (bytes as base64), answered by the StylizeResponse in proto3 JSON",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def stylize_json(request: Request) -> Response:
    async def handle(call: Call) -> Response:
        message = pb.StylizeRequest()
        forms.parse_json(await request.body(), message, "the body")
        deadline = deadline_of(request)
        answer = await unless_client_leaves(request, service_of(request).stylize(message, call, deadline))
        return JSONResponse(forms.to_json(answer), headers={"server-timing": server_timing(answer.timings)})

    return await run_call(request, "Stylize", handle)
