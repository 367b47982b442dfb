"""HTTP requests -> the API's request messages: query strings, multipart forms and proto3 JSON.

Only the HTTP shapes are parsed here (a number is a number, a name is known);
every rule about the values is server/validation.py's or server/jobs/convert.py's,
which check the message built here exactly as they check a gRPC one.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from server.errors import InvalidRequest
from stylize.v1 import stylize_pb2 as pb

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
FORMATS = {"png": pb.OUTPUT_FORMAT_PNG, "jpeg": pb.OUTPUT_FORMAT_JPEG}
STYLIZE_OPTIONS = ("strength", "preserve_color", "max_side", "style", "format", "quality", "version", "style_weight")
MAX_FILES = 10  # content, up to 8 styles, an init image
FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Options:
    """Named text values (a query string, a form's text fields), each read at most once as its type."""

    def __init__(self, items: Iterable[tuple[str, str]], known: Iterable[str]) -> None:
        self.items = list(items)
        unknown = sorted({name for name, _ in self.items} - set(known))
        if unknown:
            raise InvalidRequest(f"unknown option {', '.join(unknown)}; the options are: {', '.join(known)}")

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.items if key == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise InvalidRequest(f"{name} is given {len(values)} times; give it once")
        return values[0] if values else None


def number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, got {text!r}") from None


def whole(name: str, text: str) -> int:
    if not text.strip().isdigit():
        raise InvalidRequest(f"{name} must be a whole number of at least 0, got {text!r}")
    return int(text)


def flag(name: str, text: str) -> bool:
    if text.strip().lower() not in FLAGS:
        raise InvalidRequest(f"{name} must be true or false, got {text!r}")
    return FLAGS[text.strip().lower()]


def stylize_request(
    model: str, options: Options, content: bytes, style_images: list[bytes] | None = None
) -> pb.StylizeRequest:
    request = pb.StylizeRequest(model=model, content=pb.Image(data=content))
    if (text := options.one("strength")) is not None:
        request.strength = number("strength", text)
    if (text := options.one("preserve_color")) is not None:
        request.preserve_color = flag("preserve_color", text)
    for name in ("max_side", "version"):
        if (text := options.one(name)) is not None:
            setattr(request, name, min(whole(name, text), 2**32 - 1))
    if (text := options.one("quality")) is not None:
        request.jpeg_quality = min(whole("quality", text), 2**32 - 1)
    if (text := options.one("format")) is not None:
        if text.lower() not in FORMATS:
            raise InvalidRequest(f"format must be png or jpeg, got {text!r}")
        request.output_format = FORMATS[text.lower()]
    for text in options.all("style"):
        name, sep, weight = text.rpartition(":")
        if not sep or not name:
            raise InvalidRequest(f"style must be NAME:WEIGHT (e.g. style=wave:0.7), got {text!r}")
        request.styles.append(pb.StyleWeight(style=name, weight=number(f"the weight of style {name!r}", weight)))
    for data in style_images or ():
        request.style_images.append(pb.Image(data=data))
    request.style_image_weights.extend(number("style_weight", text) for text in options.all("style_weight"))
    return request


async def read_form(request: Request) -> tuple[list[tuple[str, str]], dict[str, list[bytes]]]:
    """A multipart form's text fields, and its files' bytes by field name."""
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=100)
    except (MultiPartException, HTTPException) as exc:
        raise InvalidRequest(f"the multipart form cannot be read: {getattr(exc, 'detail', exc)}") from None
    fields: list[tuple[str, str]] = []
    files: dict[str, list[bytes]] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(await value.read())
        else:
            fields.append((name, value))
    await form.close()
    return fields, files


def one_file(files: dict[str, list[bytes]], name: str, required: bool = True) -> bytes | None:
    found = files.get(name, [])
    if len(found) > 1:
        raise InvalidRequest(f"the form has {len(found)} `{name}` files; send one")
    if required and not found:
        raise InvalidRequest(f"the form has no `{name}` file: send the image as the form's `{name}` part")
    return found[0] if found else None


def unexpected_files(files: dict[str, list[bytes]], expected: Iterable[str]) -> None:
    extra = sorted(set(files) - set(expected))
    if extra:
        raise InvalidRequest(f"unexpected file field {', '.join(extra)}; the files are: {', '.join(expected)}")


def parse_json(text: str | bytes, message: Message, what: str) -> None:
    """Fill `message` from its proto3 JSON mapping (bytes as base64, lowerCamelCase or proto field names)."""
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise InvalidRequest(f"{what} is not a {message.DESCRIPTOR.name} in proto3 JSON: {exc}") from None


def to_json(message: Message) -> dict[str, object]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def optimization_request(fields: list[tuple[str, str]], files: dict[str, list[bytes]]) -> pb.OptimizationRequest:
    """POST /v1/jobs as a form: files `content`, `style` (repeated), `init_image`; `options` as proto3 JSON."""
    unexpected_files(files, ("content", "style", "init_image"))
    options = Options(fields, ("options",))
    request = pb.OptimizationRequest()
    if (text := options.one("options")) is not None:
        parse_json(text, request, "the `options` field")
        if request.HasField("content") or request.style_images or request.HasField("init_image"):
            raise InvalidRequest("send the images as files (content, style, init_image), not inside `options`")
    request.content.data = one_file(files, "content") or b""
    request.style_images.extend(pb.Image(data=data) for data in files.get("style", []))
    if (init := one_file(files, "init_image", required=False)) is not None:
        request.init_image.data = init
    return request
