"""The `stylize` command line.

    stylize models                                    # what the server serves
    stylize health                                    # SERVING / NOT_SERVING (exit 0 only when SERVING)
    stylize apply -m starry_night photo.jpg           # -> stylized/photo.starry_night.png
    stylize apply -m starry_night photos/ -o out/ --strength 0.8 --max-side 1024
    stylize apply -m painters --style impression_sunrise=0.7 --style the_kiss=0.3 photo.jpg
    stylize apply -m adain --style-image painting.jpg photo.jpg
    stylize optimize photo.jpg --style-image painting.jpg -o result.png --max-side 512 --iterations 500
    stylize video clip.mp4 -m great_wave -o clip.great_wave.mp4 --max-side 512
    stylize optimize photo.jpg --style-image a.jpg --style-image b.jpg --style-image-weight 0.7 \
        --style-image-weight 0.3 --schedule 256:300,512:100 --preview-dir previews/ --preserve-color

`--target` (or STYLIZE_TARGET) picks the server, 127.0.0.1:50051 by default.
`optimize` runs a Gatys job on the server's workers with a progress line on
stderr; Ctrl-C cancels the job (exit 130). `video` streams a video's frames
through StylizeVideo (client/video.py) with a progress line; Ctrl-C leaves no
partial file (exit 130).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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
    response = client.stub.ListModels(pb.ListModelsRequest(), timeout=client.timeout_s, metadata=client.metadata)
    for failed in response.failed:
        print(f"{failed.name}: not served: {failed.reason}", file=sys.stderr)
    for model in response.models:
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


INITS = {
    "content": pb.INITIALIZATION_CONTENT,
    "noise": pb.INITIALIZATION_NOISE,
    "style": pb.INITIALIZATION_STYLE,
    "image": pb.INITIALIZATION_IMAGE,
}
OPTIMIZERS = {"lbfgs": pb.OPTIMIZER_LBFGS, "adam": pb.OPTIMIZER_ADAM}
POOLINGS = {"max": pb.POOLING_MAX, "avg": pb.POOLING_AVERAGE}
NETWORKS = {"vgg16": pb.LOSS_NETWORK_VGG16, "vgg19": pb.LOSS_NETWORK_VGG19}
PREVIEW_EVERY = 20  # with --preview-dir and no --preview-every


def parse_schedule(text: str) -> list[pb.Stage]:
    """'256:300,512:100' -> stages of (max_side, iterations)."""
    stages = []
    for item in filter(None, text.split(",")):
        side, sep, iterations = item.partition(":")
        try:
            stages.append(pb.Stage(max_side=int(side), iterations=int(iterations)))
        except ValueError:
            raise SystemExit(f"stylize: --schedule {text!r}: use SIDE:ITERATIONS,SIDE:ITERATIONS") from None
        if not sep:
            raise SystemExit(f"stylize: --schedule {text!r}: use SIDE:ITERATIONS,SIDE:ITERATIONS")
    return stages


def optimization_request(args: argparse.Namespace) -> pb.OptimizationRequest:
    request = pb.OptimizationRequest(
        content=pb.Image(data=Path(args.content).read_bytes()),
        style_images=[pb.Image(data=Path(p).read_bytes()) for p in args.style_image],
        style_weights=args.style_image_weight,
        max_side=args.max_side,
        iterations=args.iterations,
        content_layers=args.content_layer,
        style_layers=[pb.LayerWeight(layer=k, weight=v) for k, v in parse_style_weights(args.style_layer).items()],
        init=INITS[args.init],
        optimizer=OPTIMIZERS[args.optimizer],
        pooling=POOLINGS[args.pooling],
        loss_network=NETWORKS[args.loss_network] if args.loss_network else pb.LOSS_NETWORK_UNSPECIFIED,
        preserve_color=args.preserve_color,
        schedule=parse_schedule(args.schedule),
        preview_every=args.preview_every or (PREVIEW_EVERY if args.preview_dir else 0),
        time_budget_seconds=args.time_budget,
        output_format=pb.OUTPUT_FORMAT_JPEG if args.format == "jpeg" else pb.OUTPUT_FORMAT_PNG,
    )
    if args.init_image:
        request.init_image.data = Path(args.init_image).read_bytes()
    for name in ("content_weight", "style_weight", "tv_weight", "learning_rate", "style_scale", "seed"):
        if getattr(args, name) is not None:
            setattr(request, name, getattr(args, name))
    return request


def progress_line(job: pb.Job, started: float) -> str:
    width = 24
    done = int(width * job.iteration / job.iterations) if job.iterations else 0
    rate = job.iteration / max(time.monotonic() - started, 1e-9)
    state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    if job.state == pb.JOB_STATE_QUEUED:
        return f"queued ({job.queue_position} jobs ahead)"
    losses = job.losses
    return (
        f"[{'#' * done}{'.' * (width - done)}] {job.iteration}/{job.iterations} stage {job.stage} {state} "
        f"loss {losses.total:.4g} (content {losses.content:.3g}, style {losses.style:.3g}, tv {losses.tv:.3g}) "
        f"{rate:.2f} it/s"
    )


def cmd_optimize(client: StylizeClient, args: argparse.Namespace) -> int:
    content = Path(args.content)
    out = args.out or content.with_name(f"{content.stem}.gatys{'.jpg' if args.format == 'jpeg' else '.png'}")
    job = client.submit_optimization(optimization_request(args))
    print(f"job {job.id}", file=sys.stderr)
    started = time.monotonic()
    stream = client.watch_job(job.id)
    # A terminal gets one line redrawn; a log gets a line per tenth of the run.
    tty, shown = sys.stderr.isatty(), -1
    previews = True
    try:
        for job in stream:
            tenth = 10 * job.iteration // max(job.iterations, 1)
            if tty or tenth != shown or job.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                shown = tenth
                line = progress_line(job, started)
                print("\r\033[K" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            if job.preview.data and args.preview_dir and previews:
                try:
                    preview_dir = Path(args.preview_dir)
                    preview_dir.mkdir(parents=True, exist_ok=True)
                    (preview_dir / f"preview_{job.iteration:05d}.png").write_bytes(job.preview.data)
                except OSError as exc:  # a full disk must not stop, or orphan, the job
                    previews = False
                    print(f"\nstylize: cannot save previews ({exc}); the job goes on without them", file=sys.stderr)
    except KeyboardInterrupt:
        stream.cancel()  # type: ignore[no-untyped-call]
        job = client.cancel_job(job.id)
        print(f"\nstylize: cancelled job {job.id} at iteration {job.iteration}", file=sys.stderr)
        return 130
    if tty:
        print(file=sys.stderr)
    if job.state != pb.JOB_STATE_SUCCEEDED:
        state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
        print(f"stylize: job {job.id} {state}: {job.error}", file=sys.stderr)
        return 1
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(job.result.data)
    except OSError as exc:
        print(
            f"stylize: job {job.id} succeeded but {out} cannot be written ({exc}); GetJob returns the result "
            "until the server's retention time passes",
            file=sys.stderr,
        )
        return 1
    seconds = job.finished_at.ToNanoseconds() / 1e9 - job.started_at.ToNanoseconds() / 1e9
    print(f"{content} -> {out} ({job.iteration} iterations in {seconds:.1f} s on {job.worker})")
    return 0


class ProgressLine:
    """`[#####.....] 120/300 frames 14.2 fps` on stderr: redrawn on a terminal, a line per tenth in a log."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = -1
        self.done = self.total = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        tenth = 10 * done // total if total else done // 100
        if self.tty or tenth != self.shown:
            self.shown = tenth
            self.show()

    def show(self) -> None:
        fps = self.done / max(time.monotonic() - self.started, 1e-9)
        if self.total:
            width = 24
            bar = "#" * (width * min(self.done, self.total) // self.total)
            line = f"[{bar.ljust(width, '.')}] {self.done}/{self.total} frames {fps:.1f} fps"
        else:
            line = f"{self.done} frames {fps:.1f} fps"
        print("\r\033[K" + line if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        """The last state, if a log has not seen it yet, and the end of a terminal's line."""
        if not self.tty and self.done and self.done != self.total:
            self.total = self.done  # the container's count was an estimate
            self.show()
        if self.tty:
            print(file=sys.stderr)


def cmd_video(client: StylizeClient, args: argparse.Namespace) -> int:
    import av  # FFmpeg's libraries: loaded for this command only

    from client.video import stylize_video_file

    source = Path(args.input)
    if not source.is_file():
        raise SystemExit(f"stylize: {source} does not exist")
    out = args.out or source.with_name(f"{source.stem}.{args.model}{source.suffix}")
    progress = ProgressLine()
    try:
        summary = stylize_video_file(
            client,
            source,
            out,
            args.model,
            temporal=0.0 if args.no_temporal else args.temporal,
            progress=progress.update,
            styles=parse_style_weights(args.style),
            style_images=[Path(p).read_bytes() for p in args.style_image],
            style_image_weights=args.style_image_weight,
            strength=args.strength,
            preserve_color=args.preserve_color,
            max_side=args.max_side,
            version=args.version,
        )
    except KeyboardInterrupt:
        print(f"\nstylize: interrupted; {out} not written", file=sys.stderr)
        return 130
    except grpc.RpcError as exc:
        print(f"\nstylize: {source}: {exc.code().name}: {exc.details()}; {out} not written", file=sys.stderr)
        return 1
    except (av.FFmpegError, OSError, ValueError) as exc:  # unreadable input, a codec the container cannot hold
        print(f"\nstylize: {source}: {exc}; {out} not written", file=sys.stderr)
        return 1
    finally:
        progress.close()
    audio = ", audio copied" if summary.audio else ""
    print(
        f"{source} -> {out} ({summary.frames} frames at {summary.width}x{summary.height}{audio}, "
        f"{summary.frames / summary.seconds:.1f} fps)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylize", description="Stylize API client")
    parser.add_argument("--target", default=os.environ.get("STYLIZE_TARGET", DEFAULT_TARGET), help="host:port")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    parser.add_argument("--token", default=os.environ.get("STYLIZE_TOKEN"), help="bearer token [STYLIZE_TOKEN]")
    parser.add_argument("--tls-ca", type=Path, default=None, help="the server's CA certificate (PEM): use TLS")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="client private key (PEM), for mutual TLS")
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

    opt = sub.add_parser("optimize", help="a Gatys optimisation on the server's workers (slow, best quality)")
    opt.add_argument("content", help="the content image")
    opt.add_argument("--style-image", action="append", required=True, help="a style image, repeatable")
    opt.add_argument("--style-image-weight", action="append", type=float, default=[], help="one per --style-image")
    opt.add_argument("-o", "--out", type=Path, default=None, help="the result (default CONTENT.gatys.png)")
    opt.add_argument("--max-side", type=int, default=0, help="output size (0: the server's default, 512)")
    opt.add_argument("--iterations", type=int, default=0, help="0: the server's default")
    opt.add_argument("--schedule", default="", help="multi-resolution: SIDE:ITERATIONS,... (overrides both above)")
    opt.add_argument("--content-weight", type=float, default=None)
    opt.add_argument("--style-weight", type=float, default=None)
    opt.add_argument("--tv-weight", type=float, default=None)
    opt.add_argument("--content-layer", action="append", default=[], help="e.g. relu4_2, repeatable")
    opt.add_argument("--style-layer", action="append", default=[], help="NAME or NAME=WEIGHT, repeatable")
    opt.add_argument("--init", choices=sorted(INITS), default="content")
    opt.add_argument("--init-image", default="", help="the start for --init image")
    opt.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="lbfgs")
    opt.add_argument("--learning-rate", type=float, default=None, help="Adam only")
    opt.add_argument("--pooling", choices=sorted(POOLINGS), default="max")
    opt.add_argument(
        "--loss-network", choices=sorted(NETWORKS), default=None, help="default: the server's (VGG-16, keras-vgg16)"
    )
    opt.add_argument("--style-scale", type=float, default=None, help="style image size relative to the output")
    opt.add_argument("--preserve-color", action="store_true", help="luminance-only transfer: keep the colours")
    opt.add_argument("--seed", type=int, default=None)
    opt.add_argument(
        "--preview-every", type=int, default=0, help=f"iterations (default {PREVIEW_EVERY} with --preview-dir)"
    )
    opt.add_argument("--preview-dir", default="", help="save previews here")
    opt.add_argument("--time-budget", type=float, default=0.0, help="seconds (0: the server's limit)")
    opt.add_argument("--format", choices=("png", "jpeg"), default="png")
    opt.set_defaults(run=cmd_optimize)
    vid = sub.add_parser("video", help="stylize a video, steady from frame to frame")
    vid.add_argument("input", help="a video file (any container and codec FFmpeg reads)")
    vid.add_argument("-m", "--model", required=True)
    vid.add_argument("-o", "--out", type=Path, default=None, help="the result (default INPUT.MODEL.ext)")
    vid.add_argument("--style", action="append", default=[], help="multi-style blend: NAME=WEIGHT, repeatable")
    vid.add_argument("--style-image", action="append", default=[], help="arbitrary style: an image, repeatable")
    vid.add_argument("--style-image-weight", action="append", type=float, default=[], help="one per --style-image")
    vid.add_argument("--strength", type=float, default=None, help="0..1 (default 1)")
    vid.add_argument("--preserve-color", action="store_true", help="keep the video's colours")
    vid.add_argument("--max-side", type=int, default=0, help="shrink so the longer side fits (0: keep)")
    vid.add_argument("--version", type=int, default=0, help="model version (0: newest)")
    vid.add_argument("--temporal", type=float, default=None, help="temporal consistency 0..1 (the server's default)")
    vid.add_argument("--no-temporal", action="store_true", help="stylise every frame on its own (flickers)")
    vid.set_defaults(run=cmd_video)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    with StylizeClient(
        args.target,
        timeout_s=args.timeout,
        token=args.token,
        tls_ca=read(args.tls_ca),
        tls_cert=read(args.tls_cert),
        tls_key=read(args.tls_key),
    ) as client:
        try:
            return int(args.run(client, args))
        except grpc.RpcError as exc:
            print(f"stylize: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
