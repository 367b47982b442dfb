"""The `stylize` command line.

    stylize models                                    # what the server serves
    stylize health                                    # SERVING / NOT_SERVING (exit 0 only when SERVING)
    stylize apply -m starry_night photo.jpg           # -> stylized/photo.starry_night.png
    stylize apply -m starry_night photos/ -o out/ --strength 0.8 --max-side 1024
    stylize apply -m impressionists --style starry_night=0.7 --style great_wave=0.3 photo.jpg
    stylize apply -m adain --style-image painting.jpg photo.jpg

`--target` (or STYLIZE_TARGET) picks the server, 127.0.0.1:50051 by default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from client.client import DEFAULT_TARGET, StylizeClient
from stylize.v1 import stylize_pb2 as pb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def collect_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; folders searched recursively for PNG, JPEG and WebP files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"stylize: {path} does not exist")
    if not found:
        raise SystemExit("stylize: no PNG, JPEG or WebP files in the inputs")
    return found


def output_path(source: Path, out: Path | None, model: str, fmt: str, single: bool) -> Path:
    suffix = ".jpg" if fmt == "jpeg" else ".png"
    if out is not None and single and out.suffix.lower() in IMAGE_SUFFIXES:
        return out
    return (out or Path("stylized")) / f"{source.stem}.{model}{suffix}"


def parse_style_weights(items: Sequence[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value) if sep else 1.0
        except ValueError:
            raise SystemExit(f"stylize: --style {item!r}: use NAME or NAME=WEIGHT") from None
    return weights


def cmd_models(client: StylizeClient, args: argparse.Namespace) -> int:
    for model in client.list_models():
        family = pb.ModelFamily.Name(model.family).removeprefix("MODEL_FAMILY_").lower()
        versions = ",".join(str(v) for v in model.versions)
        styles = ", ".join(model.styles) or "any style image"
        print(f"{model.name:24} {family:12} v{versions:8} {model.provider:24} {model.loss_weights:20} {styles}")
    return 0


def cmd_health(client: StylizeClient, args: argparse.Namespace) -> int:
    if args.wait:
        client.wait_until_serving(args.wait)
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_apply(client: StylizeClient, args: argparse.Namespace) -> int:
    inputs = collect_inputs(args.inputs)
    styles = parse_style_weights(args.style)
    style_images = [Path(p).read_bytes() for p in args.style_image]
    failures = 0
    for source in inputs:
        target = output_path(source, args.out, args.model, args.format, single=len(inputs) == 1)
        try:
            response = client.stylize(
                source.read_bytes(),
                args.model,
                styles=styles,
                style_images=style_images,
                style_image_weights=args.style_image_weight,
                strength=args.strength,
                preserve_color=args.preserve_color,
                max_side=args.max_side,
                version=args.version,
                output_format=args.format,
                jpeg_quality=args.quality,
            )
        except grpc.RpcError as exc:
            failures += 1
            print(f"{source}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(response.image.data)
        t = response.timings
        print(
            f"{source} -> {target} ({response.width}x{response.height}, {response.model} v{response.version}, "
            f"{t.total_seconds * 1e3:.0f} ms: inference {t.inference_seconds * 1e3:.0f} ms)"
        )
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylize", description="Stylize API client")
    parser.add_argument("--target", default=os.environ.get("STYLIZE_TARGET", DEFAULT_TARGET), help="host:port")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the served models").set_defaults(run=cmd_models)

    health = sub.add_parser("health", help="the server's health status")
    health.add_argument("--service", default="", help="a service name; empty: the whole server")
    health.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for SERVING")
    health.set_defaults(run=cmd_health)

    apply = sub.add_parser("apply", help="stylize files or folders of files")
    apply.add_argument("inputs", nargs="+", help="image files or folders")
    apply.add_argument("-m", "--model", required=True)
    apply.add_argument("-o", "--out", type=Path, default=None, help="output folder (or file, for one input)")
    apply.add_argument("--style", action="append", default=[], help="multi-style blend: NAME=WEIGHT, repeatable")
    apply.add_argument("--style-image", action="append", default=[], help="arbitrary style: an image, repeatable")
    apply.add_argument("--style-image-weight", action="append", type=float, default=[], help="one per --style-image")
    apply.add_argument("--strength", type=float, default=None, help="0..1 (default 1)")
    apply.add_argument("--preserve-color", action="store_true", help="keep the photo's colours")
    apply.add_argument("--max-side", type=int, default=0, help="shrink so the longer side fits (0: keep)")
    apply.add_argument("--version", type=int, default=0, help="model version (0: newest)")
    apply.add_argument("--format", choices=("png", "jpeg"), default="png")
    apply.add_argument("--quality", type=int, default=0, help="JPEG quality 1..100 (0: 90)")
    apply.set_defaults(run=cmd_apply)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with StylizeClient(args.target, timeout_s=args.timeout) as client:
        try:
            return int(args.run(client, args))
        except grpc.RpcError as exc:
            print(f"stylize: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
